"""deepfashion reader on a tiny tree the test writes: category mapping, splits, box crops, one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn import data
from dtn.data import deepfashion
from dtn.errors import DataError

CATEGORIES = [("Tee", 1), ("Jeans", 2), ("Skirt", 2), ("Dress", 3)]      # Skirt has no Fashion-MNIST class
# image, category label (1-based), split, box, colour inside the box
IMAGES = [
    ("img/Tee_A/img_01.jpg", 1, "train", (10, 20, 50, 60), (200, 30, 30)),
    ("img/Tee_A/img_02.jpg", 1, "test", (0, 0, 80, 100), (200, 30, 30)),
    ("img/Jeans_B/img_01.jpg", 2, "train", (30, 10, 70, 90), (30, 30, 200)),
    ("img/Jeans_B/img_02.jpg", 2, "val", (30, 10, 70, 90), (30, 30, 200)),
    ("img/Skirt_C/img_01.jpg", 3, "train", (5, 5, 40, 40), (30, 200, 30)),
    ("img/Dress_D/img_01.jpg", 4, "train", (20, 20, 60, 95), (220, 220, 30)),
]


def write_list(path: Path, header: str, rows: list[str], count: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([str(len(rows) if count is None else count), header, *rows]) + "\n")


def write_tree(root: Path) -> Path:
    top = root / "deepfashion"
    write_list(top / "Anno" / "list_category_cloth.txt", "category_name  category_type",
               [f"{name:<20s}{kind}" for name, kind in CATEGORIES])
    write_list(top / "Anno" / "list_category_img.txt", "image_name  category_label",
               [f"{img:<40s}{label}" for img, label, *_ in IMAGES])
    write_list(top / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2",
               [f"{img:<40s}{' '.join(map(str, box))}" for img, _, _, box, _ in IMAGES])
    write_list(top / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
               [f"{img:<40s}{split}" for img, _, split, *_ in IMAGES])
    for img, _, _, (x1, y1, x2, y2), colour in IMAGES:
        pic = np.full((100, 80, 3), 128, np.uint8)           # grey outside the box
        pic[y1:y2, x1:x2] = colour
        (top / img).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pic).save(top / img, quality=95)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh cache per test: decoded splits are cached by the lists' md5, not by the images."""
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "data")


def test_categories_map_to_fashion_mnist_and_unmapped_are_dropped(tree):
    train = data.load("deepfashion", "train", tree)
    assert train.class_names[1] == "Trouser" and len(train.class_names) == 10
    assert list(train.extras["category"]) == ["Dress", "Jeans", "Tee"]      # sorted by image name; no Skirt
    assert list(train.labels) == [3, 1, 0]
    assert train.extras["dropped"] == {"Skirt": 1}
    assert len(data.load("deepfashion", "val", tree)) == 1
    assert list(data.load("deepfashion", "test", tree).labels) == [0]


def test_images_are_box_crops_padded_on_white(tree):
    train = data.load("deepfashion", "train", tree)
    assert train.images.shape == (3, 64, 64, 3) and train.images.dtype == np.uint8
    jeans = train.images[1].astype(int)                         # a 40x80 box: portrait, white side bars
    assert (jeans[:, :8] >= 245).all() and (jeans[:, -8:] >= 245).all()
    assert np.abs(jeans[32, 32] - (30, 30, 200)).max() <= 12   # only the box, no grey from outside
    assert not ((np.abs(jeans - 128) < 10).all(axis=-1)).any()


def test_registered_and_never_fetched():
    src = data.get("deepfashion")
    assert src.fetch is None and "non-commercial" in src.licence
    assert set(src.splits) == {"train", "val", "test"}


def test_missing_list_file_names_it(tree):
    (tree / "deepfashion" / "Anno" / "list_bbox.txt").unlink()
    with pytest.raises(DataError, match=r"missing file .*list_bbox\.txt"):
        data.load("deepfashion", "train", tree)


def test_malformed_line_names_file_and_line(tree):
    path = tree / "deepfashion" / "Anno" / "list_category_img.txt"
    lines = path.read_text().splitlines()
    lines[4] = "img/Tee_A/img_01.jpg"                          # the category label is missing
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_category_img\.txt: line 5: expected 2 fields"):
        data.load("deepfashion", "train", tree)


def test_bad_values_name_file_and_line(tree):
    path = tree / "deepfashion" / "Anno" / "list_category_img.txt"
    lines = path.read_text().splitlines()
    lines[4] = "img/Jeans_B/img_01.jpg  9"                     # only 4 categories
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"list_category_img\.txt: line 5: category_label 9 is not in 1\.\.4"):
        data.load("deepfashion", "train", tree)
    bbox = tree / "deepfashion" / "Anno" / "list_bbox.txt"
    bbox.write_text(bbox.read_text().replace("10 20 50 60", "50 20 10 60"))
    with pytest.raises(DataError, match=r"list_bbox\.txt: line 3: box 50 20 10 60 is empty"):
        deepfashion.read_index(tree)


def test_count_mismatch_and_missing_partition_entry(tree):
    part = tree / "deepfashion" / "Eval" / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    write_list(part, lines[1], lines[3:])                      # drop the first image's entry
    with pytest.raises(DataError, match=r"list_eval_partition\.txt: no entry for img/Tee_A/img_01\.jpg "
                                        r"\(listed in list_category_img\.txt line 3\)"):
        data.load("deepfashion", "train", tree)
    write_list(part, lines[1], lines[2:], count=99)
    with pytest.raises(DataError, match=r"list_eval_partition\.txt: line 1 declares 99 entries but the file has 6"):
        data.load("deepfashion", "train", tree)


def test_missing_image_names_it(tree):
    (tree / "deepfashion" / "img" / "Dress_D" / "img_01.jpg").unlink()
    with pytest.raises(DataError, match=r"missing file .*Dress_D/img_01\.jpg"):
        data.load("deepfashion", "train", tree)
