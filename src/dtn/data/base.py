"""What every dataset module shares: the Split container, where files live, checksums, errors.

Data flows one way: a loader returns uint8 images (N, H, W, C) and int64 labels;
everything float happens later, on the device, in the batcher.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError

DATA_DIR_ENV = "DTN_DATA_DIR"
CACHE_DIR_ENV = "DTN_CACHE_DIR"


@dataclass
class Split:
    """One split of one dataset: uint8 images (N, H, W, C) and int64 labels (N,), -1 when unlabeled."""

    images: np.ndarray
    labels: np.ndarray
    dataset: str
    split: str
    class_names: tuple[str, ...] = ()
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"{self.dataset}/{self.split}: images must be uint8 (N,H,W,C), "
                            f"got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{self.dataset}/{self.split}: {len(self.images)} images but "
                            f"labels of shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class FileCheck:
    """The state of one expected file, for `dtn data info`."""

    path: Path
    exists: bool
    expected_md5: str | None
    actual_md5: str | None = None

    @property
    def ok(self) -> bool:
        return self.exists and (self.expected_md5 is None or self.actual_md5 == self.expected_md5)

    def describe(self) -> str:
        if not self.exists:
            return f"missing  {self.path}"
        if self.expected_md5 is None:
            return f"present  {self.path}"
        state = "ok      " if self.ok else "MISMATCH"
        return f"{state} {self.path} md5={self.actual_md5}"


@dataclass(frozen=True)
class DatasetSource:
    """A registry entry. `load(split, root)` returns a Split; `check(root)` verifies files;
    `fetch(root)` downloads the official files (None where they cannot be fetched)."""

    name: str
    description: str
    splits: tuple[str, ...]
    load: Callable[[str, Path], Split]
    check: Callable[[Path], list[FileCheck]]
    fetch: Callable[[Path], None] | None = None
    licence: str = ""
    how_to_get: str = ""
    #: True when the dataset is made by code (no files under the data dir).
    generated: bool = False


def data_root(flag: str | os.PathLike | None = None) -> Path:
    """Where dataset folders live: the --data-dir flag, then $DTN_DATA_DIR, then the user cache dir."""
    if flag:
        return Path(flag).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return cache_root() / "datasets"


def cache_root() -> Path:
    """Where dtn writes derived files (generated datasets, .npy caches, classifiers)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("dtn"))


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_file(path: Path, gunzip: bool = False) -> str:
    """md5 of a file's bytes, or of its decompressed bytes when gunzip is True."""
    h = hashlib.md5()
    opener = gzip.open if gunzip else open
    try:
        with opener(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}: {exc}); "
                        "the file is truncated or not gzip data") from None
    return h.hexdigest()


def require_file(path: Path, how_to_get: str) -> Path:
    if not path.is_file():
        raise DataError(f"missing file {path}; {how_to_get}")
    return path


def verify_md5(path: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise DataError(f"checksum mismatch for {path}: expected md5 {expected}, got {actual}")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy next to its final name and rename it, so a crash never leaves half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is for every user of the machine
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable cache file ({exc}); delete it to rebuild") from None


def class_histogram(labels: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}
