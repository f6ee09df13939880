"""MNIST and Fashion-MNIST: IDX files, gzip.

The gz container's bytes depend on the compressor, so files are verified by the md5 of
their *decompressed* bytes; the publisher's gz md5s are kept for downloads.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import (DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy,
                   md5_bytes, md5_file, require_file, verify_md5)

_DTYPES = {0x08: np.uint8}


def parse_idx(data: bytes, path: Path | str) -> np.ndarray:
    """Decode the bytes of one IDX file (uint8 payload only, as MNIST uses)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _DTYPES:
        raise DataError(f"{path}: unsupported IDX data type 0x{dtype_code:02x} (expected 0x08, uint8)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python ints: a lying header cannot overflow into a match
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} values of shape {shape} "
                        f"but the file holds {len(data) - header}; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_gz(path: Path, raw_md5: str | None) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or not gzip") from None
    if raw_md5 is not None:
        verify_md5(path, raw_md5, md5_bytes(data))
    return parse_idx(data, path)


def check_idx_images(images: np.ndarray, path: Path) -> None:
    """An images file must hold (N, rows, cols) with rows, cols >= 1 (a labels file here is an error)."""
    if images.ndim != 3 or min(images.shape[1:]) < 1:
        raise DataError(f"{path}: images of shape {images.shape}, expected (N, rows, cols) with rows, cols >= 1")


@dataclass(frozen=True)
class IdxFile:
    name: str
    raw_md5: str       # md5 of the decompressed bytes: what we verify
    gz_md5: str        # the publisher's md5 of the .gz: what a download is checked against


@dataclass(frozen=True)
class IdxDataset:
    name: str
    urls: tuple[str, ...]
    files: dict[str, tuple[IdxFile, IdxFile]]  # split -> (images, labels)
    class_names: tuple[str, ...]

    def folder(self, root: Path) -> Path:
        return root / self.name

    def how_to_get(self, root: Path) -> str:
        return (f"put the official files in {self.folder(root)} (or pass --data-dir / set DTN_DATA_DIR), "
                f"or run `dtn data fetch {self.name}`")

    def load(self, split: str, root: Path) -> Split:
        images_file, labels_file = self.files[split]
        images_path = require_file(self.folder(root) / images_file.name, self.how_to_get(root))
        labels_path = require_file(self.folder(root) / labels_file.name, self.how_to_get(root))
        # Labels are tiny: always read and verify. Images are decoded and verified once, then cached
        # as .npy keyed by the md5 of the .gz bytes (cheap to hash), so a changed file misses the cache.
        labels = read_idx_gz(labels_path, labels_file.raw_md5)
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: labels of shape {labels.shape}, expected one dimension (N,)")
        cache = cache_root() / "npy" / self.name / f"{split}-{md5_file(images_path)[:16]}.npy"
        if cache.is_file():
            images = load_npy(cache)
        else:
            images = read_idx_gz(images_path, images_file.raw_md5)
            check_idx_images(images, images_path)
            images = images[..., None]
            atomic_save_npy(cache, images)
        if len(images) != len(labels):
            raise DataError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
        return Split(np.asarray(images), labels.astype(np.int64), self.name, split, self.class_names)

    def check(self, root: Path) -> list[FileCheck]:
        out = []
        for pair in self.files.values():
            for f in pair:
                path = self.folder(root) / f.name
                actual = md5_file(path, gunzip=True) if path.is_file() else None
                out.append(FileCheck(path, path.is_file(), f.raw_md5, actual))
        return out

    def fetch(self, root: Path) -> None:
        import pooch

        for pair in self.files.values():
            for f in pair:
                pooch.retrieve(url=self.urls[0] + f.name, known_hash=f"md5:{f.gz_md5}",
                               fname=f.name, path=self.folder(root), progressbar=True)

    def source(self, description: str, licence: str) -> DatasetSource:
        return DatasetSource(self.name, description, tuple(self.files), self.load, self.check,
                             self.fetch, licence, self.how_to_get(Path("<data-dir>")))


MNIST = IdxDataset(
    name="mnist",
    urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    files={
        "train": (IdxFile("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb",
                          "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                  IdxFile("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624",
                          "d53e105ee54ea40749a09fcbcd1e9432")),
        "test": (IdxFile("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea",
                         "9fb629c4189551a2d022fa330f9573f3"),
                 IdxFile("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637",
                         "ec29112dd5afa0611ce80d1b7f02629c")),
    },
    class_names=tuple(str(i) for i in range(10)),
)

FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    files={
        "train": (IdxFile("train-images-idx3-ubyte.gz", "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                          "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                  IdxFile("train-labels-idx1-ubyte.gz", "9018921c3c673c538a1fc5bad174d6f9",
                          "25c81989df183df01b3e8a0aad5dffbe")),
        "test": (IdxFile("t10k-images-idx3-ubyte.gz", "8181f5470baa50b63fa0f6fddb340f0a",
                         "bef4ecab320f06d8554ea6380940ec79"),
                 IdxFile("t10k-labels-idx1-ubyte.gz", "15d484375f8d13e6eb1aabb0c3f46965",
                         "bb300cfdad3c16e7a12a480ee83cd310")),
    },
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
)

SOURCES = (
    MNIST.source("MNIST handwritten digits, 28x28 grey, 60k train / 10k test", "CC BY-SA 3.0 (LeCun, Cortes)"),
    FASHION_MNIST.source("Fashion-MNIST, 28x28 grey clothing, 60k / 10k, 10 classes", "MIT (Zalando Research)"),
)
