"""celeba-sample: 20,000 aligned CelebA faces (4,000 identities x 5), 96x96 RGB JPEG.

Layout: `<root>/celeba-sample/identities.csv` (columns file,identity; file relative to the folder,
e.g. images/10000_028381.jpg) and the images/ folder. Splits are by identity, never by image:
identities are sorted (numerically) and a seeded permutation holds out a fixed 1,000 of them for
"test" (at most half when there are fewer identities); "train" has the rest, "all" has both.
Labels index class_names, the sorted identity ids of the whole sample.

Decoded images are cached as one .npy (train rows then test rows, so both splits are memory-map
slices) keyed by the md5 of identities.csv.

CelebA is for non-commercial research only: never ship it (or anything holding its images) in a
package or model bundle.
"""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy, md5_file
from .image_folder import decode_workers, open_listed_rgb

NAME = "celeba-sample"
IMAGE_SIZE = 96
TEST_IDENTITIES = 1000
SEED = 2017
LICENCE = ("CelebA (Liu, Luo, Wang, Tang, ICCV 2015): non-commercial research purposes only. "
           "Do not ship these images, or anything derived that contains them, in packages or model bundles.")
HOW_TO_GET = ("CelebA cannot be downloaded automatically: point --data-dir / DTN_DATA_DIR at a folder "
              "containing celeba-sample/ (identities.csv with columns file,identity, and images/ of "
              "96x96 RGB face crops)")


def folder(root: Path) -> Path:
    return root / NAME


@dataclass(frozen=True)
class CelebaIndex:
    """The sample's table in load order: train rows (sorted by identity, file), then test rows."""

    files: tuple[str, ...]
    labels: np.ndarray            # int64 index into class_names, per row
    class_names: tuple[str, ...]  # every identity id, sorted numerically
    n_train: int                  # rows [0, n_train) are train, the rest test
    test_identities: frozenset[str]
    csv_md5: str


def _identity_key(identity: str) -> tuple[int, int | str]:
    return (0, int(identity)) if identity.isdigit() else (1, identity)


def read_index(root: Path, test_identities: int = TEST_IDENTITIES, seed: int = SEED) -> CelebaIndex:
    csv_path = folder(root) / "identities.csv"
    if not csv_path.is_file():
        raise DataError(f"missing file {csv_path}; {HOW_TO_GET}")
    rows: list[tuple[str, str]] = []
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "identity"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: expected columns file,identity, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                file, identity = (row.get("file") or "").strip(), (row.get("identity") or "").strip()
                if not file or not identity:
                    raise DataError(f"{csv_path}: line {line} lacks a file or an identity")
                rows.append((file, identity))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: unreadable ({exc})") from None
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    class_names = tuple(sorted({i for _, i in rows}, key=_identity_key))
    if len(class_names) < 2:
        raise DataError(f"{csv_path}: {len(class_names)} identity; an identity split needs at least 2")
    n_test = min(test_identities, len(class_names) // 2)
    perm = np.random.default_rng(seed).permutation(len(class_names))
    held_out = frozenset(class_names[i] for i in perm[:n_test])
    index = {c: i for i, c in enumerate(class_names)}
    ordered = sorted(rows, key=lambda r: (r[1] in held_out, index[r[1]], r[0]))
    n_train = sum(1 for _, i in rows if i not in held_out)
    return CelebaIndex(tuple(f for f, _ in ordered), np.array([index[i] for _, i in ordered], dtype=np.int64),
                       class_names, n_train, held_out, md5_file(csv_path))


def _decode(path: Path) -> np.ndarray:
    img = open_listed_rgb(path, "identities.csv", HOW_TO_GET)
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{path}: image is {img.size[0]}x{img.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.asarray(img, dtype=np.uint8)


class _Celeba:
    def __init__(self, test_identities: int, seed: int) -> None:
        self.test_identities = test_identities
        self.seed = seed

    def load(self, split: str, root: Path) -> Split:
        if split not in ("train", "test", "all"):
            raise DataError(f"{NAME} has no split {split!r}; splits: train, test, all")
        idx = read_index(root, self.test_identities, self.seed)
        n_test_ids = len(idx.test_identities)
        cache = (cache_root() / "npy" / NAME /
                 f"all-{idx.csv_md5[:16]}-t{n_test_ids}-s{self.seed}.npy")
        images = load_npy(cache) if cache.is_file() else None
        if images is None or images.shape != (len(idx.files), IMAGE_SIZE, IMAGE_SIZE, 3):
            with ThreadPoolExecutor(decode_workers()) as pool:
                images = np.stack(list(pool.map(_decode, [folder(root) / f for f in idx.files])))
            atomic_save_npy(cache, images)
        rows = {"train": slice(0, idx.n_train), "test": slice(idx.n_train, None), "all": slice(None)}[split]
        return Split(np.asarray(images[rows]), idx.labels[rows].copy(), NAME, split, idx.class_names,
                     {"paths": list(idx.files[rows]), "test_identities": sorted(idx.test_identities,
                                                                               key=_identity_key)})

    def check(self, root: Path) -> list[FileCheck]:
        csv_path, images = folder(root) / "identities.csv", folder(root) / "images"
        return [FileCheck(csv_path, csv_path.is_file(), None), FileCheck(images, images.is_dir(), None)]


def celeba_source(test_identities: int = TEST_IDENTITIES, seed: int = SEED) -> DatasetSource:
    """The celeba-sample source; tests on tiny trees can hold out fewer identities."""
    impl = _Celeba(test_identities, seed)
    return DatasetSource(
        name=NAME,
        description="CelebA sample: 96x96 RGB aligned faces, 4,000 identities x 5 images, split by identity",
        splits=("train", "test", "all"),
        load=impl.load,
        check=impl.check,
        fetch=None,
        licence=LICENCE,
        how_to_get=HOW_TO_GET,
    )


SOURCE = celeba_source()
