"""SVHN (Street View House Numbers), cropped digits: the official train/test/extra `.mat` files.

Each file holds X (32, 32, 3, N) uint8 and y (N, 1) with labels 1..10, where 10 means the digit 0.
Files are verified by md5 before use; decoded arrays are cached as .npy keyed by that md5. A file
that was not verified is decoded in a throwaway process (see read_svhn_mat_isolated).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import (DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy, md5_file,
                   require_file, verify_md5)

NAME = "svhn"
URL = "http://ufldl.stanford.edu/housenumbers/"
FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
#: The official md5s published with the files.
MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}
CLASS_NAMES = tuple(str(i) for i in range(10))
LICENCE = ("non-commercial use only (Netzer et al., 'Reading Digits in Natural Images with Unsupervised "
           "Feature Learning', NIPS 2011 workshop); cite the paper")


def folder(root: Path) -> Path:
    return root / NAME


def how_to_get(root: Path) -> str:
    return (f"put the official train_32x32.mat / test_32x32.mat / extra_32x32.mat from {URL} in "
            f"{folder(root)} (or pass --data-dir / set DTN_DATA_DIR), or run `dtn data fetch svhn`")


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode one official .mat file into (N, 32, 32, 3) uint8 images and (N,) int64 labels 0..9."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a corrupt file
        raise DataError(f"{path}: not a readable MATLAB .mat file ({exc.__class__.__name__}: {exc})") from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataError(f"{path}: missing variable(s) {', '.join(missing)} (an SVHN .mat holds X and y)")
    x, y = mat["X"], mat["y"]
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {getattr(x, 'shape', None)}, expected (32, 32, 3, N)")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: X has dtype {x.dtype}, expected uint8")
    n = x.shape[3]
    if not isinstance(y, np.ndarray) or y.shape not in ((n, 1), (n,)):
        raise DataError(f"{path}: y has shape {getattr(y, 'shape', None)}, expected ({n}, 1) to match X")
    if y.dtype.kind not in "uif":
        raise DataError(f"{path}: y has dtype {y.dtype}, expected integer labels")
    labels = y.reshape(n)
    if y.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise DataError(f"{path}: y holds non-integer labels")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{path}: labels range {labels.min()}..{labels.max()}, expected 1..10 (10 = digit 0)")
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


def read_svhn_mat_isolated(path: Path, images_npy: Path, labels_npy: Path, timeout: float = 600) -> None:
    """read_svhn_mat in a throwaway Python process that writes the two .npy caches. scipy's MATLAB
    reader can crash its process on a damaged file (scipy 1.17: SIGSEGV on one byte of an element
    tag), which no except clause catches, and an out-of-bounds read need not crash at all: a file whose
    md5 was not checked against a known one is never parsed in the caller's process."""
    code = "import sys; from dtn.data.svhn import _decode_to_npy; _decode_to_npy(*sys.argv[1:])"
    src = str(Path(__file__).resolve().parents[2])  # dtn importable even when not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))}
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(images_npy), str(labels_npy)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise DataError(f"{path}: decoding took over {timeout:.0f} s; the file is corrupt or far too large") from None
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode < 0:
        why = signal.strsignal(-proc.returncode) or f"signal {-proc.returncode}"
        raise DataError(f"{path}: the file crashes the MATLAB reader ({why}); it is corrupt")
    if proc.returncode == 3:
        raise DataError(last)
    if proc.returncode != 0:
        raise DataError(f"{path}: cannot decode ({last})")


def _decode_to_npy(path: str, images_npy: str, labels_npy: str) -> None:
    """The throwaway process's half of read_svhn_mat_isolated: the caches, or the DataError and exit 3."""
    try:
        images, labels = read_svhn_mat(Path(path))
    except DataError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(3) from None
    atomic_save_npy(Path(images_npy), images)
    atomic_save_npy(Path(labels_npy), labels)


class _Svhn:
    def __init__(self, verify: bool, md5s: dict[str, str]) -> None:
        self.verify = verify
        self.md5s = dict(md5s)

    def load(self, split: str, root: Path) -> Split:
        if split not in FILES:
            raise DataError(f"svhn has no split {split!r}; splits: {', '.join(FILES)}")
        name = FILES[split]
        path = require_file(folder(root) / name, how_to_get(root))
        actual = md5_file(path)
        if self.verify:
            verify_md5(path, self.md5s[name], actual)
        cache = cache_root() / "npy" / NAME
        images_npy = cache / f"{split}-{actual[:16]}-images.npy"
        labels_npy = cache / f"{split}-{actual[:16]}-labels.npy"
        if images_npy.is_file() and labels_npy.is_file():
            images, labels = load_npy(images_npy), load_npy(labels_npy, mmap=False)
        elif self.verify:
            images, labels = read_svhn_mat(path)
            atomic_save_npy(images_npy, images)
            atomic_save_npy(labels_npy, labels)
        else:
            read_svhn_mat_isolated(path, images_npy, labels_npy)
            images, labels = load_npy(images_npy), load_npy(labels_npy, mmap=False)
        return Split(np.asarray(images), np.asarray(labels, dtype=np.int64), NAME, split, CLASS_NAMES,
                     {"file": str(path)})

    def check(self, root: Path) -> list[FileCheck]:
        out = []
        for name in FILES.values():
            path = folder(root) / name
            exists = path.is_file()
            out.append(FileCheck(path, exists, self.md5s[name] if self.verify else None,
                                 md5_file(path) if exists else None))
        return out

    def fetch(self, root: Path) -> None:
        import pooch

        for name in FILES.values():
            pooch.retrieve(url=URL + name, known_hash=f"md5:{self.md5s[name]}", fname=name,
                           path=folder(root), progressbar=True)


def svhn_source(verify: bool = True, md5s: dict[str, str] | None = None) -> DatasetSource:
    """The SVHN source. `verify=False` skips the md5 check (for small files that tests write);
    `md5s` replaces the official checksums (file name -> md5)."""
    impl = _Svhn(verify, MD5 if md5s is None else {**MD5, **md5s})
    return DatasetSource(
        name=NAME,
        description="SVHN cropped house-number digits, 32x32 RGB, 73,257 train / 26,032 test / 531,131 extra",
        splits=tuple(FILES),
        load=impl.load,
        check=impl.check,
        fetch=impl.fetch,
        licence=LICENCE,
        how_to_get=how_to_get(Path("<data-dir>")),
    )


SOURCE = svhn_source()
