"""SVHN .mat loading on small files written in the official layout."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dtn.data import svhn
from dtn.errors import DataError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_mat(root: Path, name: str = "test_32x32.mat", n: int = 12, **override) -> tuple[Path, np.ndarray, np.ndarray]:
    """An official-layout file: X (32, 32, 3, N) uint8, y (N, 1) uint8 with labels 1..10."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
    contents = {"X": x, "y": y, **override}
    path = root / "svhn" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {k: v for k, v in contents.items() if v is not None})
    return path, x, y


def test_load_layout_and_label_mapping(tmp_path):
    _, x, y = write_mat(tmp_path)
    split = svhn.svhn_source(verify=False).load("test", tmp_path)
    assert split.images.shape == (12, 32, 32, 3) and split.images.dtype == np.uint8
    np.testing.assert_array_equal(split.images[5], x[..., 5])
    assert split.labels.dtype == np.int64
    expected = y[:, 0].astype(np.int64) % 10
    np.testing.assert_array_equal(split.labels, expected)
    assert split.labels[9] == 0 and y[9, 0] == 10, "label 10 means the digit 0"
    assert split.class_names == tuple("0123456789")
    assert split.dataset == "svhn" and split.split == "test"


def test_second_load_comes_from_cache(tmp_path, cache, monkeypatch):
    write_mat(tmp_path)
    source = svhn.svhn_source(verify=False)
    first = source.load("test", tmp_path)
    assert len(list((cache / "npy" / "svhn").glob("test-*.npy"))) == 2
    monkeypatch.setattr(svhn, "read_svhn_mat", lambda p: pytest.fail("cache not used"))
    second = source.load("test", tmp_path)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_changed_file_misses_the_cache(tmp_path):
    source = svhn.svhn_source(verify=False)
    write_mat(tmp_path, n=12)
    assert len(source.load("test", tmp_path)) == 12
    write_mat(tmp_path, n=7)
    assert len(source.load("test", tmp_path)) == 7


def test_official_md5_mismatch_names_file_expected_and_actual(tmp_path):
    path, _, _ = write_mat(tmp_path)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        svhn.SOURCE.load("test", tmp_path)
    msg = str(err.value)
    assert str(path) in msg and svhn.MD5["test_32x32.mat"] in msg and actual in msg


def test_custom_md5_is_verified(tmp_path):
    path, _, _ = write_mat(tmp_path, name="train_32x32.mat")
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    assert len(svhn.svhn_source(md5s={"train_32x32.mat": actual}).load("train", tmp_path)) == 12


@pytest.mark.parametrize("override, pattern", [
    ({"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1), np.uint8)}, "X has shape"),
    ({"X": np.zeros((32, 32, 3, 4), np.float64), "y": np.ones((4, 1), np.uint8)}, "X has dtype float64"),
    ({"y": np.ones((5, 1), np.uint8)}, "y has shape"),
    ({"y": np.full((12, 1), 11, np.uint8)}, "labels range"),
    ({"y": None}, "missing variable"),
])
def test_bad_contents_name_the_file(tmp_path, override, pattern):
    path, _, _ = write_mat(tmp_path, **override)
    with pytest.raises(DataError, match=pattern) as err:
        svhn.svhn_source(verify=False).load("test", tmp_path)
    assert str(path) in str(err.value)


def test_corrupt_mat_names_the_file(tmp_path):
    path = tmp_path / "svhn" / "test_32x32.mat"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" + bytes(200))
    with pytest.raises(DataError, match="not a readable MATLAB") as err:
        svhn.svhn_source(verify=False).load("test", tmp_path)
    assert str(path) in str(err.value)


def test_truncated_mat_names_the_file(tmp_path):
    path, _, _ = write_mat(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        svhn.svhn_source(verify=False).load("test", tmp_path)
    assert str(path) in str(err.value)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"missing file .*extra_32x32\.mat.*dtn data fetch svhn"):
        svhn.SOURCE.load("extra", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match="no split 'valid'"):
        svhn.SOURCE.load("valid", tmp_path)


def test_check_reports_each_file(tmp_path):
    write_mat(tmp_path)
    checks = {c.path.name: c for c in svhn.SOURCE.check(tmp_path)}
    assert set(checks) == {"train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"}
    assert not checks["train_32x32.mat"].exists
    assert checks["test_32x32.mat"].exists and not checks["test_32x32.mat"].ok   # not the official bytes
    assert all(c.ok for c in svhn.svhn_source(verify=False).check(tmp_path) if c.exists)


def test_fetch_uses_official_urls_and_md5s(tmp_path, monkeypatch):
    import pooch

    calls = []
    monkeypatch.setattr(pooch, "retrieve", lambda **kw: calls.append(kw))
    svhn.SOURCE.fetch(tmp_path)
    assert [c["url"] for c in calls] == [f"http://ufldl.stanford.edu/housenumbers/{n}"
                                         for n in ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat")]
    assert calls[0]["known_hash"] == "md5:e26dedcc434d2e4c54c9b2d4a06d8373"
    assert calls[1]["known_hash"] == "md5:eb5a983be6a315427106f1b164d9cef3"
    assert calls[2]["known_hash"] == "md5:a93ce644f1a588dc4d68dda5feec44a7"
    assert all(Path(c["path"]) == tmp_path / "svhn" for c in calls)
