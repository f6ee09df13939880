"""deepfashion: a reader for the DeepFashion Category-and-Attribute Prediction layout (never downloaded).

DeepFashion (Liu, Luo, Qiu, Wang, Tang, CVPR 2016) is what a public replication used as the clothing
source domain. It cannot be fetched here and its licence forbids redistribution, so dtn only reads a
copy the user has, laid out as the benchmark ships it:

    <root>/deepfashion/Anno/list_category_cloth.txt    50 categories: name, type (1 upper, 2 lower, 3 full)
    <root>/deepfashion/Anno/list_category_img.txt      image_name, category_label (1-based)
    <root>/deepfashion/Anno/list_bbox.txt              image_name, x_1 y_1 x_2 y_2 (pixels)
    <root>/deepfashion/Eval/list_eval_partition.txt    image_name, train | val | test
    <root>/deepfashion/img/...                         the images (image_name is relative to deepfashion/)

(The list files may also sit directly in deepfashion/.) Every list starts with its entry count and a
header line. Images are cropped to their box, padded to a square on white and resized to 64x64 RGB
(as `clothing`). Labels are Fashion-MNIST classes: categories with a Fashion-MNIST counterpart are
mapped (FMNIST_CLASS); the rest (shorts, skirts, capes...) are left out of the splits and counted in
extras["dropped"]. extras["category"] keeps each row's DeepFashion category name.

Decoded splits are cached as .npy keyed by the md5 of the four list files.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy, md5_file
from .clothing import pad_resize
from .idx import FASHION_MNIST
from .image_folder import decode_workers, open_listed_rgb

NAME = "deepfashion"
IMAGE_SIZE = 64
SPLITS = ("train", "val", "test")
CLASS_NAMES = FASHION_MNIST.class_names
LIST_FILES = {"cloth": "list_category_cloth.txt", "img": "list_category_img.txt", "bbox": "list_bbox.txt",
              "partition": "list_eval_partition.txt"}
LICENCE = ("DeepFashion (Liu, Luo, Qiu, Wang, Tang, CVPR 2016): non-commercial research use only, no "
           "redistribution; never ship its images or anything containing them")
HOW_TO_GET = ("DeepFashion cannot be downloaded by dtn: get the Category and Attribute Prediction Benchmark "
              "from its authors and point --data-dir / DTN_DATA_DIR at a folder containing deepfashion/ "
              "(Anno/list_category_cloth.txt, Anno/list_category_img.txt, Anno/list_bbox.txt, "
              "Eval/list_eval_partition.txt, img/)")

#: DeepFashion category -> Fashion-MNIST class, where one corresponds (0 T-shirt/top, 1 Trouser,
#: 2 Pullover, 3 Dress, 4 Coat, 6 Shirt). Shorts, skirts, rompers, capes, robes... have none.
FMNIST_CLASS = {
    "Tee": 0, "Tank": 0, "Top": 0, "Halter": 0, "Henley": 0, "Jersey": 0,
    "Capris": 1, "Chinos": 1, "Culottes": 1, "Gauchos": 1, "Jeans": 1, "Jeggings": 1, "Jodhpurs": 1,
    "Joggers": 1, "Leggings": 1, "Sweatpants": 1,
    "Sweater": 2, "Hoodie": 2, "Turtleneck": 2, "Cardigan": 2,
    "Dress": 3, "Sundress": 3, "Shirtdress": 3, "Nightdress": 3, "Caftan": 3, "Kaftan": 3,
    "Coat": 4, "Jacket": 4, "Parka": 4, "Peacoat": 4, "Anorak": 4, "Bomber": 4, "Blazer": 4,
    "Blouse": 6, "Button-Down": 6, "Flannel": 6,
}


def folder(root: Path) -> Path:
    return root / NAME


def list_path(root: Path, key: str) -> Path:
    """Where a list file is: Anno/ or Eval/ as the benchmark ships them, else directly in deepfashion/."""
    name = LIST_FILES[key]
    candidates = [folder(root) / sub / name for sub in ("Anno", "Eval")] + [folder(root) / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"missing file {candidates[0 if key != 'partition' else 1]}; {HOW_TO_GET}")


def read_list(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each entry of a DeepFashion list: a count line, a header, the entries."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path}: line 1 must be the number of entries, got {lines[0].strip()[:40] if lines else ''!r}")
    entries = []
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            raise DataError(f"{path}: line {number}: expected {fields} fields ({lines[1].strip()}), "
                            f"got {len(parts)}: {line.strip()[:80]!r}")
        entries.append((number, parts))
    if len(entries) != int(lines[0]):
        raise DataError(f"{path}: line 1 declares {int(lines[0])} entries but the file has {len(entries)}")
    return entries


def _int(path: Path, number: int, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}: line {number}: {what} {text!r} is not a whole number") from None


@dataclass(frozen=True)
class Row:
    image: str                  # relative to deepfashion/
    category: str
    label: int                  # Fashion-MNIST class
    split: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class DeepFashionIndex:
    rows: tuple[Row, ...]       # mapped categories only, sorted by image name
    dropped: dict[str, int]     # unmapped category -> images left out
    key: str                    # md5 of the four list files: the cache key


def read_categories(path: Path) -> list[str]:
    names = []
    for number, (name, kind) in read_list(path, 2):
        if kind not in ("1", "2", "3"):
            raise DataError(f"{path}: line {number}: category_type {kind!r} is not 1, 2 or 3")
        names.append(name)
    return names


def _partition(path: Path) -> dict[str, str]:
    out = {}
    for number, (image, status) in read_list(path, 2):
        if status not in SPLITS:
            raise DataError(f"{path}: line {number}: evaluation_status {status!r} is not train, val or test")
        out[image] = status
    return out


def _boxes(path: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for number, (image, *coords) in read_list(path, 5):
        x1, y1, x2, y2 = (_int(path, number, c, "coordinate") for c in coords)
        if x2 <= x1 or y2 <= y1 or min(x1, y1) < 0:
            raise DataError(f"{path}: line {number}: box {x1} {y1} {x2} {y2} is empty or negative")
        out[image] = (x1, y1, x2, y2)
    return out


def read_index(root: Path) -> DeepFashionIndex:
    """Join the four lists; every listed image must have a partition entry and a box."""
    paths = {key: list_path(root, key) for key in LIST_FILES}
    categories = read_categories(paths["cloth"])
    partition, boxes = _partition(paths["partition"]), _boxes(paths["bbox"])
    rows, dropped = [], {}
    for number, (image, label) in read_list(paths["img"], 2):
        index = _int(paths["img"], number, label, "category_label")
        if not 1 <= index <= len(categories):
            raise DataError(f"{paths['img']}: line {number}: category_label {index} is not in 1..{len(categories)} "
                            f"({paths['cloth'].name} lists {len(categories)})")
        category = categories[index - 1]
        if category not in FMNIST_CLASS:
            dropped[category] = dropped.get(category, 0) + 1
            continue
        for table, key in ((partition, "partition"), (boxes, "bbox")):
            if image not in table:
                raise DataError(f"{paths[key]}: no entry for {image} (listed in {paths['img'].name} line {number})")
        rows.append(Row(image, category, FMNIST_CLASS[category], partition[image], boxes[image]))
    digest = "".join(md5_file(paths[k]) for k in sorted(paths))
    return DeepFashionIndex(tuple(sorted(rows, key=lambda r: r.image)), dropped, digest)


def _decode(args: tuple[Path, tuple[int, int, int, int]]) -> np.ndarray:
    """Crop to the box (clamped to the picture), pad to a square on white, resize."""
    path, (x1, y1, x2, y2) = args
    img = open_listed_rgb(path, LIST_FILES["img"], HOW_TO_GET)
    w, h = img.size
    box = (min(x1, w - 1), min(y1, h - 1), min(max(x2, x1 + 1), w), min(max(y2, y1 + 1), h))
    return np.asarray(pad_resize(img.crop(box), IMAGE_SIZE), dtype=np.uint8)


def _load(split: str, root: Path) -> Split:
    if split not in SPLITS:
        raise DataError(f"{NAME} has no split {split!r}; splits: {', '.join(SPLITS)}")
    idx = read_index(root)
    rows = [r for r in idx.rows if r.split == split]
    if not rows:
        raise DataError(f"{list_path(root, 'partition')}: the {split} split has no image of a mapped category")
    cache = cache_root() / "npy" / NAME / f"{split}-{hashlib.md5(idx.key.encode()).hexdigest()[:16]}-{IMAGE_SIZE}.npy"
    images = load_npy(cache) if cache.is_file() else None
    if images is None or images.shape != (len(rows), IMAGE_SIZE, IMAGE_SIZE, 3):
        with ThreadPoolExecutor(decode_workers()) as pool:
            images = np.stack(list(pool.map(_decode, [(folder(root) / r.image, r.box) for r in rows])))
        atomic_save_npy(cache, images)
    return Split(np.asarray(images), np.array([r.label for r in rows], dtype=np.int64), NAME, split, CLASS_NAMES,
                 {"paths": [r.image for r in rows], "category": np.array([r.category for r in rows], dtype=str),
                  "dropped": dict(idx.dropped)})


def _check(root: Path) -> list[FileCheck]:
    out = []
    for key, name in LIST_FILES.items():
        try:
            path = list_path(root, key)
        except DataError:
            path = folder(root) / ("Eval" if key == "partition" else "Anno") / name
        out.append(FileCheck(path, path.is_file(), None))
    return out + [FileCheck(folder(root) / "img", (folder(root) / "img").is_dir(), None)]


SOURCE = DatasetSource(
    name=NAME,
    description="DeepFashion Category-and-Attribute photos, box crops at 64x64 RGB, Fashion-MNIST labels (bring your own copy)",
    splits=SPLITS,
    load=_load,
    check=_check,
    fetch=None,
    licence=LICENCE,
    how_to_get=HOW_TO_GET,
)
