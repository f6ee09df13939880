"""celeba-sample on a tiny tree: identity split, labels, cache, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn.data import celeba
from dtn.errors import DataError

IDENTITIES = ["7", "12", "100", "3", "55", "9"]   # sorted numerically: 3 7 9 12 55 100


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_tree(root: Path, per_identity: int = 3, size: int = 96) -> Path:
    folder = root / "celeba-sample"
    (folder / "images").mkdir(parents=True)
    lines = ["file,identity"]
    for k, ident in enumerate(IDENTITIES):
        for j in range(per_identity):
            name = f"images/{ident}_{j:06d}.jpg"
            Image.new("RGB", (size, size), (int(ident) % 256, 40 * j, 0)).save(folder / name, quality=95)
            lines.append(f"{name},{ident}")
    (folder / "identities.csv").write_text("\n".join(lines) + "\n")
    return root


def small_source():
    return celeba.celeba_source(test_identities=2)


def test_identity_split_is_disjoint_and_complete(tmp_path):
    root = write_tree(tmp_path)
    source = small_source()
    train, test, everything = (source.load(s, root) for s in ("train", "test", "all"))
    train_ids = {train.class_names[i] for i in train.labels}
    test_ids = {test.class_names[i] for i in test.labels}
    assert not train_ids & test_ids, "no identity on both sides"
    assert len(test_ids) == 2 and len(train_ids) == 4
    assert set(test.extras["test_identities"]) == test_ids
    assert len(train) + len(test) == len(everything) == 18
    assert sorted(train.extras["paths"] + test.extras["paths"]) == sorted(everything.extras["paths"])


def test_labels_index_sorted_identity_ids(tmp_path):
    root = write_tree(tmp_path)
    split = small_source().load("all", root)
    assert split.class_names == ("3", "7", "9", "12", "55", "100")
    for path, label in zip(split.extras["paths"], split.labels):
        assert Path(path).name.split("_")[0] == split.class_names[label]
    assert split.labels.dtype == np.int64
    assert split.images.shape == (18, 96, 96, 3) and split.images.dtype == np.uint8
    first = split.extras["paths"].index("images/55_000002.jpg")
    assert np.abs(split.images[first, 0, 0].astype(int) - (55, 80, 0)).max() <= 6


def test_split_is_deterministic_and_seeded(tmp_path):
    root = write_tree(tmp_path)
    a = celeba.read_index(root, test_identities=2)
    b = celeba.read_index(root, test_identities=2)
    assert a.test_identities == b.test_identities and a.files == b.files
    other = {celeba.read_index(root, 2, seed=s).test_identities for s in range(10)}
    assert len(other) > 1, "the seed picks which identities are held out"


def test_hold_out_is_capped_at_half(tmp_path):
    root = write_tree(tmp_path)
    assert len(celeba.read_index(root).test_identities) == 3   # default 1000 > 6 identities


def test_cache_is_used_and_keyed_by_csv(tmp_path, cache, monkeypatch):
    root = write_tree(tmp_path)
    first = small_source().load("train", root)
    assert len(list((cache / "npy" / "celeba-sample").glob("*.npy"))) == 1
    monkeypatch.setattr(celeba, "_decode", lambda p: pytest.fail("cache not used"))
    np.testing.assert_array_equal(small_source().load("train", root).images, first.images)


def test_missing_csv_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        celeba.SOURCE.load("train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "celeba-sample" / "identities.csv") in msg
    assert "DTN_DATA_DIR" in msg and "--data-dir" in msg and "cannot be downloaded" in msg


def test_missing_image_names_it(tmp_path):
    root = write_tree(tmp_path)
    (root / "celeba-sample" / "images" / "9_000001.jpg").unlink()
    with pytest.raises(DataError, match="missing file .*9_000001.jpg"):
        small_source().load("all", root)


def test_wrong_image_size_names_the_file(tmp_path):
    root = write_tree(tmp_path, size=64)
    with pytest.raises(DataError, match=r"images/\w+_\d+\.jpg: image is 64x64, expected 96x96"):
        small_source().load("all", root)


def test_bad_csv_header(tmp_path):
    folder = tmp_path / "celeba-sample"
    folder.mkdir()
    (folder / "identities.csv").write_text("name,person\na.jpg,1\n")
    with pytest.raises(DataError, match="expected columns file,identity"):
        celeba.SOURCE.load("train", tmp_path)


def test_source_metadata():
    assert celeba.SOURCE.name == "celeba-sample" and celeba.SOURCE.fetch is None
    assert "non-commercial" in celeba.SOURCE.licence and "bundle" in celeba.SOURCE.licence
    assert set(celeba.SOURCE.splits) == {"train", "test", "all"}
