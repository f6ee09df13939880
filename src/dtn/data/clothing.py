"""clothing: 4,393 real photos of clothing items with Fashion-MNIST class labels.

Layout: `<root>/clothing/labels.csv` (columns path,original_label,kids,sender_id,fmnist_class,
fmnist_name; path relative to the folder) and one sub-folder of JPEGs per original label.
Labels are the Fashion-MNIST class (0..9; the photos cover 0,1,2,3,4,6,7). Images keep their
aspect: padded to a square on white, then resized to 64x64 RGB. Splits: "train"/"test" 85/15 by a
hash of the path (a row never changes side), plus "all"; rows are in sorted path order.

Decoded images are cached as .npy keyed by the md5 of labels.csv.
"""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy, md5_file
from .idx import FASHION_MNIST
from .image_folder import WHITE, decode_workers, open_listed_rgb, path_fraction

NAME = "clothing"
IMAGE_SIZE = 64
TEST_FRACTION = 0.15
CLASS_NAMES = FASHION_MNIST.class_names
COLUMNS = ("path", "original_label", "kids", "sender_id", "fmnist_class", "fmnist_name")
LICENCE = ("CC0 1.0: 'Clothing dataset' by Alexey Grigorev with Tagias.com and contributors "
           "(github.com/alexeygrigorev/clothing-dataset); any use, please credit it")
HOW_TO_GET = ("it cannot be downloaded automatically: point --data-dir / DTN_DATA_DIR at a folder containing "
              "clothing/ (labels.csv with columns path,original_label,kids,sender_id,fmnist_class,fmnist_name "
              "and the image sub-folders), built from github.com/alexeygrigorev/clothing-dataset")


def folder(root: Path) -> Path:
    return root / NAME


@dataclass(frozen=True)
class ClothingIndex:
    """labels.csv in sorted path order."""

    paths: tuple[str, ...]
    labels: np.ndarray           # int64 Fashion-MNIST class
    original_label: np.ndarray   # str
    kids: np.ndarray             # bool
    test: np.ndarray             # bool: row belongs to the test split
    csv_md5: str


def read_index(root: Path) -> ClothingIndex:
    csv_path = folder(root) / "labels.csv"
    if not csv_path.is_file():
        raise DataError(f"missing file {csv_path}; {HOW_TO_GET}")
    rows = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("path", "original_label", "fmnist_class") if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                path, cls = (row.get("path") or "").strip(), (row.get("fmnist_class") or "").strip()
                if not path:
                    raise DataError(f"{csv_path}: line {line} has no path")
                if not cls.isdigit() or not 0 <= int(cls) < len(CLASS_NAMES):
                    raise DataError(f"{csv_path}: line {line}: fmnist_class {cls!r} is not a class index 0..9")
                kids = (row.get("kids") or "").strip().lower() in ("true", "1", "yes")
                rows.append((path, int(cls), (row.get("original_label") or "").strip(), kids))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: unreadable ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    rows.sort()
    paths = tuple(r[0] for r in rows)
    return ClothingIndex(paths, np.array([r[1] for r in rows], dtype=np.int64),
                         np.array([r[2] for r in rows], dtype=str), np.array([r[3] for r in rows], dtype=bool),
                         np.array([path_fraction(p) < TEST_FRACTION for p in paths], dtype=bool),
                         md5_file(csv_path))


def pad_resize(img: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Pad to a square on white (image centred), then resize to size x size."""
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new(img.mode, (side, side), WHITE if img.mode == "RGB" else 255)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def _decode(path: Path) -> np.ndarray:
    img = open_listed_rgb(path, "labels.csv", HOW_TO_GET, draft=IMAGE_SIZE)
    return np.asarray(pad_resize(img), dtype=np.uint8)


def _load(split: str, root: Path) -> Split:
    if split not in ("train", "test", "all"):
        raise DataError(f"{NAME} has no split {split!r}; splits: train, test, all")
    idx = read_index(root)
    cache = cache_root() / "npy" / NAME / f"all-{idx.csv_md5[:16]}-{IMAGE_SIZE}.npy"
    images = load_npy(cache) if cache.is_file() else None
    if images is None or images.shape != (len(idx.paths), IMAGE_SIZE, IMAGE_SIZE, 3):
        with ThreadPoolExecutor(decode_workers()) as pool:
            images = np.stack(list(pool.map(_decode, [folder(root) / p for p in idx.paths])))
        atomic_save_npy(cache, images)
    rows = {"train": ~idx.test, "test": idx.test, "all": np.ones(len(idx.paths), dtype=bool)}[split]
    picked = np.flatnonzero(rows)
    if len(picked) == 0:
        raise DataError(f"{folder(root) / 'labels.csv'}: the {split} split is empty")
    imgs = np.asarray(images) if split == "all" else np.asarray(images[picked])
    return Split(imgs, idx.labels[picked], NAME, split, CLASS_NAMES,
                 {"paths": [idx.paths[i] for i in picked], "original_label": idx.original_label[picked],
                  "kids": idx.kids[picked]})


def _check(root: Path) -> list[FileCheck]:
    csv_path = folder(root) / "labels.csv"
    return [FileCheck(csv_path, csv_path.is_file(), None)]


SOURCE = DatasetSource(
    name=NAME,
    description="real clothing photos (Grigorev clothing-dataset), 64x64 RGB, Fashion-MNIST labels, 4,393 images",
    splits=("train", "test", "all"),
    load=_load,
    check=_check,
    fetch=None,
    licence=LICENCE,
    how_to_get=HOW_TO_GET,
)
