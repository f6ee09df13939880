"""IDX (MNIST-format) loading: checksums, magic numbers, truncation, cache, and a corrupted real file."""
from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from dtn.data import idx
from dtn.data.idx import IdxDataset, IdxFile, parse_idx
from dtn.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_gz(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(data)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny(tmp_path):
    """A 5-image 4x3 IDX data set written to tmp_path/data/tiny, and the IdxDataset that reads it."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    img_raw, lbl_raw = idx_bytes(images), idx_bytes(labels)
    root = tmp_path / "data"
    write_gz(root / "tiny" / "img.gz", img_raw)
    write_gz(root / "tiny" / "lbl.gz", lbl_raw)
    ds = IdxDataset("tiny", ("http://example.invalid/",),
                    {"train": (IdxFile("img.gz", md5(img_raw), "0" * 32), IdxFile("lbl.gz", md5(lbl_raw), "0" * 32))},
                    tuple(str(i) for i in range(10)))
    return ds, root, images, labels


def test_load_shapes_dtypes_and_values(tiny, cache):
    ds, root, images, labels = tiny
    split = ds.load("train", root)
    assert split.images.shape == (5, 4, 3, 1) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.images[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
    assert list((cache / "npy" / "tiny").glob("train-*.npy")), "decoded images are cached"


def test_second_load_uses_cache(tiny, cache, monkeypatch):
    ds, root, images, _ = tiny
    ds.load("train", root)
    calls = []
    real = idx.read_idx_gz
    monkeypatch.setattr(idx, "read_idx_gz", lambda p, m: calls.append(p.name) or real(p, m))
    again = ds.load("train", root)
    assert calls == ["lbl.gz"], "only the (tiny) labels are re-read; images come from the .npy cache"
    np.testing.assert_array_equal(again.images[..., 0], images)


def test_checksum_mismatch_names_file_and_both_md5s(tiny, cache):
    ds, root, images, labels = tiny
    bad_raw = idx_bytes(np.array([3, 1, 4, 1, 6], dtype=np.uint8))
    write_gz(root / "tiny" / "lbl.gz", bad_raw)
    with pytest.raises(DataError) as err:
        ds.load("train", root)
    msg = str(err.value)
    assert str(root / "tiny" / "lbl.gz") in msg
    assert ds.files["train"][1].raw_md5 in msg and md5(bad_raw) in msg
    assert "\n" not in msg


def test_check_reports_ok_and_mismatch(tiny):
    ds, root, _, _ = tiny
    assert all(c.ok for c in ds.check(root))
    write_gz(root / "tiny" / "img.gz", b"other bytes")
    states = {c.path.name: c.ok for c in ds.check(root)}
    assert states == {"img.gz": False, "lbl.gz": True}
    (root / "tiny" / "img.gz").unlink()
    missing = [c for c in ds.check(root) if c.path.name == "img.gz"][0]
    assert not missing.exists and "missing" in missing.describe()


def test_wrong_magic_is_refused(tmp_path, cache):
    bad = b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc"
    write_gz(tmp_path / "d" / "bad" / "lbl.gz", bad)
    good_img = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    write_gz(tmp_path / "d" / "bad" / "img.gz", good_img)
    ds = IdxDataset("bad", ("http://example.invalid/",),
                    {"train": (IdxFile("img.gz", md5(good_img), ""), IdxFile("lbl.gz", md5(bad), ""))}, ())
    with pytest.raises(DataError, match="not an IDX file") as err:
        ds.load("train", tmp_path / "d")
    assert str(tmp_path / "d" / "bad" / "lbl.gz") in str(err.value)


@pytest.mark.parametrize("data, pattern", [
    (b"", "not an IDX file"),
    (bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"\0\0\0\0", "unsupported IDX data type"),
    (bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big"), "truncated IDX header"),
    (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"12345", "promises 10 values"),
])
def test_parse_idx_errors_name_the_file(data, pattern):
    with pytest.raises(DataError, match=pattern) as err:
        parse_idx(data, "some/file.gz")
    assert "some/file.gz" in str(err.value)


def test_truncated_gz_names_the_file(tiny, cache):
    ds, root, _, _ = tiny
    path = root / "tiny" / "img.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError) as err:
        ds.load("train", root)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_missing_file_says_how_to_get_it(tiny, cache):
    ds, root, _, _ = tiny
    (root / "tiny" / "lbl.gz").unlink()
    with pytest.raises(DataError, match="missing file .*lbl.gz.*DTN_DATA_DIR"):
        ds.load("train", root)


def test_image_and_label_count_mismatch(tmp_path, cache):
    img_raw, lbl_raw = idx_bytes(np.zeros((3, 2, 2), np.uint8)), idx_bytes(np.zeros(4, np.uint8))
    write_gz(tmp_path / "d" / "m" / "img.gz", img_raw)
    write_gz(tmp_path / "d" / "m" / "lbl.gz", lbl_raw)
    ds = IdxDataset("m", ("",), {"train": (IdxFile("img.gz", md5(img_raw), ""), IdxFile("lbl.gz", md5(lbl_raw), ""))}, ())
    with pytest.raises(DataError, match="3 images but .*4 labels"):
        ds.load("train", tmp_path / "d")


# --------------------------------------------------------------------------- the real MNIST, one byte off

@pytest.fixture
def mnist_copy(real_data_dir, tmp_path):
    src = real_data_dir / "mnist"
    if not (src / "t10k-labels-idx1-ubyte.gz").is_file() or not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{src} lacks the t10k files")
    dst = tmp_path / "data" / "mnist"
    dst.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(src / name, dst / name)
    return tmp_path / "data"


def test_real_mnist_copy_loads(mnist_copy, cache):
    split = idx.MNIST.load("test", mnist_copy)
    assert split.images.shape == (10000, 28, 28, 1) and split.labels.max() == 9


def test_real_mnist_one_corrupted_label_byte_is_refused(mnist_copy, cache):
    path = mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] = (raw[100] + 1) % 10          # one label changed; a valid gzip around it
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as err:
        idx.MNIST.load("test", mnist_copy)
    msg = str(err.value)
    assert str(path) in msg and "checksum mismatch" in msg
    assert "27ae3e4e09519cfbb04c329615203637" in msg and md5(bytes(raw)) in msg


def test_real_mnist_one_corrupted_gz_byte_is_refused(mnist_copy, cache):
    path = mnist_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF            # inside the deflate stream: bad data or a CRC failure
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        idx.MNIST.load("test", mnist_copy)
    assert str(path) in str(err.value)
