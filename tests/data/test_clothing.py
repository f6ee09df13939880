"""clothing on a tiny tree: Fashion-MNIST labels, pad-and-resize, hash split, cache, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn.data import clothing
from dtn.data.image_folder import path_fraction
from dtn.errors import DataError

HEADER = "path,original_label,kids,sender_id,fmnist_class,fmnist_name"
FOLDERS = {"t-shirt": ("T-Shirt", 0, "T-shirt/top"), "pants": ("Pants", 1, "Trouser"),
           "shoes": ("Shoes", 7, "Sneaker")}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_tree(root: Path, per_folder: int = 8) -> Path:
    folder = root / "clothing"
    lines = [HEADER]
    for name, (original, cls, fname) in FOLDERS.items():
        for i in range(per_folder):
            rel = f"{name}/{name}-{i:02d}.jpg"
            (folder / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (96, 128), (0, 0, 120 + cls)).save(folder / rel, quality=95)
            lines.append(f"{rel},{original},{i == 0},{i},{cls},{fname}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_labels_and_class_names(tmp_path):
    root = write_tree(tmp_path)
    split = clothing.SOURCE.load("all", root)
    assert split.class_names[0] == "T-shirt/top" and split.class_names[7] == "Sneaker"
    assert len(split.class_names) == 10
    assert len(split) == 24 and split.labels.dtype == np.int64
    for path, label, original in zip(split.extras["paths"], split.labels, split.extras["original_label"]):
        assert FOLDERS[path.split("/")[0]][1] == label
        assert FOLDERS[path.split("/")[0]][0] == original
    assert split.extras["paths"] == sorted(split.extras["paths"])
    assert split.extras["original_label"].dtype.kind == "U"
    assert split.extras["kids"].sum() == 3


def test_images_are_padded_on_white_and_resized(tmp_path):
    root = write_tree(tmp_path)
    split = clothing.SOURCE.load("all", root)
    assert split.images.shape == (24, 64, 64, 3) and split.images.dtype == np.uint8
    img = split.images[0].astype(int)
    assert (img[:, :4] >= 250).all() and (img[:, -4:] >= 250).all(), "96x128 portrait -> white side bars"
    assert np.abs(img[32, 32] - (0, 0, 120)).max() <= 6


def test_hash_split_is_disjoint_and_deterministic(tmp_path):
    root = write_tree(tmp_path)
    train, test = clothing.SOURCE.load("train", root), clothing.SOURCE.load("test", root)
    assert set(train.extras["paths"]).isdisjoint(test.extras["paths"])
    assert len(train) + len(test) == 24
    for p in test.extras["paths"]:
        assert path_fraction(p) < 0.15
    assert np.array_equal(clothing.SOURCE.load("test", root).labels, test.labels)


def test_cache_keyed_by_labels_csv(tmp_path, cache, monkeypatch):
    root = write_tree(tmp_path)
    clothing.SOURCE.load("all", root)
    assert len(list((cache / "npy" / "clothing").glob("*.npy"))) == 1
    monkeypatch.setattr(clothing, "_decode", lambda p: pytest.fail("cache not used"))
    clothing.SOURCE.load("train", root)
    csv = root / "clothing" / "labels.csv"
    csv.write_text(csv.read_text().replace("Pants,", "Trousers,"))
    with pytest.raises(pytest.fail.Exception):
        clothing.SOURCE.load("train", root)        # a changed labels.csv misses the cache


def test_missing_csv_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        clothing.SOURCE.load("all", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "clothing" / "labels.csv") in msg and "DTN_DATA_DIR" in msg


def test_missing_or_corrupt_image_names_it(tmp_path):
    root = write_tree(tmp_path)
    victim = root / "clothing" / "pants" / "pants-03.jpg"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match="pants-03.jpg"):
        clothing.SOURCE.load("all", root)
    victim.unlink()
    with pytest.raises(DataError, match="missing file .*pants-03.jpg"):
        clothing.SOURCE.load("all", root)


@pytest.mark.parametrize("row, pattern", [
    ("x.jpg,X,False,1,12,Nope", "fmnist_class '12'"),
    ("x.jpg,X,False,1,,Nope", "fmnist_class ''"),
    (",X,False,1,1,Trouser", "has no path"),
])
def test_bad_rows_name_the_csv_and_line(tmp_path, row, pattern):
    folder = tmp_path / "clothing"
    folder.mkdir()
    (folder / "labels.csv").write_text(f"{HEADER}\n{row}\n")
    with pytest.raises(DataError, match=f"labels.csv: line 2.*{pattern}|{pattern}"):
        clothing.SOURCE.load("all", tmp_path)


def test_source_metadata():
    assert clothing.SOURCE.name == "clothing" and clothing.SOURCE.fetch is None
    assert "CC0" in clothing.SOURCE.licence and "Grigorev" in clothing.SOURCE.licence
