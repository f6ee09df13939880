"""Any folder of images as a dataset.

    source = image_folder_source(Path("photos"), size=64)
    split = source.load("train", Path())        # the root argument is ignored: the folder is the path

Layouts (checked in this order):

* CycleGAN: sub-folders trainA / trainB / testA / testB -> exactly those present are the splits;
* train/ and test/ sub-folders -> splits "train" and "test";
* anything else -> "all", plus "train" / "test": a 90/10 split by a hash of each file's relative
  path, so a file never changes side when others are added.

Files are found recursively (png, jpg, jpeg, webp, bmp, any case; names starting with "." are
ignored) and read in sorted order of their relative paths. Labels are the first sub-folder below
the split folder (sorted names -> index, shared by the splits of one domain: the whole folder, or
one CycleGAN side A or B); files directly in the split folder get -1. Every image becomes RGB
(alpha composited on white) or L; if all images of the domain share one size they are kept as they are, otherwise (or when `size` is given) the
shorter side is resized to `size` and the centre cropped to size x size. Nothing is cached: the
folder may change between runs.
"""
from __future__ import annotations

import hashlib
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import DataError
from .base import DatasetSource, FileCheck, Split

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
#: Images declaring more pixels than this are refused (decompression-bomb guard), independently of
#: PIL's global Image.MAX_IMAGE_PIXELS, which we do not change.
MAX_PIXELS = 40_000_000
DEFAULT_SIZE = 64
#: The decoders Pillow may use: the formats of EXTENSIONS (JPEG includes camera MPO files), plus GIF
#: and TIFF that often hide behind them. Not every plugin Pillow has: EPS would run Ghostscript.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
CYCLEGAN_SPLITS = ("trainA", "trainB", "testA", "testB")
TEST_FRACTION = 0.1
WHITE = (255, 255, 255)


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason."""


# ----------------------------------------------------------------------------------------- helpers

def path_fraction(relpath: str) -> float:
    """A stable number in [0, 1) from a relative path (md5, not Python's salted hash())."""
    digest = hashlib.md5(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def open_image(path: Path, draft: int | None = None) -> Image.Image:
    """Open and fully decode one image file, turning every failure into BadImage(reason).

    `draft`: let JPEG decode at a reduced scale that still keeps both sides >= draft pixels.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block open(), a device never ends
            raise BadImage("not a regular file (a FIFO, device or folder)")
        if info.st_size == 0:
            raise BadImage("empty file (0 bytes)")
        fh = open(path, "rb")
    except OSError as exc:
        raise BadImage(f"cannot read ({exc.strerror or exc})") from None
    with fh:  # we own the file handle, so it is closed on every path
        return decode_image(fh, draft)


def decode_image(fh: BinaryIO, draft: int | None = None) -> Image.Image:
    """Fully decode the first frame of an open binary stream (a file, or io.BytesIO of an upload to
    `dtn serve`), so that files and uploads share one decompression-bomb guard and one error text."""
    try:
        img = Image.open(fh, formats=FORMATS)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise BadImage(f"declared size {w}x{h} exceeds the {MAX_PIXELS:,}-pixel limit "
                           "(possible decompression bomb)")
        if w == 0 or h == 0:
            raise BadImage(f"declared size {w}x{h} is empty")
        if draft and img.format == "JPEG":
            img.draft(None, (draft, draft))
        img.load()
        return img
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage(f"not an image file ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
        text = str(exc) or exc.__class__.__name__
        raise BadImage(f"cannot decode ({exc.__class__.__name__}: {text}); truncated or corrupt") from None


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if img.mode == "F":
        out = np.clip(arr, 0, 255)
    else:  # I;16*, I: 16-bit range
        out = np.clip(arr.astype(np.int64), 0, 65535) >> 8
    return Image.fromarray(out.astype(np.uint8), "L")


def open_listed_rgb(path: Path, listed_in: str, how_to_get: str, draft: int | None = None) -> Image.Image:
    """An image named by a dataset's list file, as RGB; a missing or bad file is a one-line DataError."""
    if not path.is_file():
        raise DataError(f"missing file {path} (listed in {listed_in}); {how_to_get}")
    try:
        return to_mode(open_image(path, draft=draft), "RGB")
    except BadImage as exc:
        raise DataError(f"{path}: {exc}") from None


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Grey, RGB, RGBA/LA/PA (composited on white), palette, 1-bit, 16-bit, CMYK, YCbCr -> `mode` (RGB or L)."""
    m = img.mode
    if m in ("I", "F") or m.startswith("I;16"):
        img = _sixteen_bit_to_l(img)
    elif m == "1":
        img = img.convert("L")
    elif m == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif m == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (keeping aspect), then crop the centre size x size."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        if nw * nh > MAX_PIXELS:  # a long strip (1 x 40M px): resize only what the crop keeps
            box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=box)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        img = img.crop((left, top, left + size, top + size))
    return img


def decode_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _list_images(folder: Path) -> list[str]:
    """Image files below `folder`, as sorted posix paths relative to it (hidden names skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unlistable):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(folder).as_posix())
    return sorted(found)


def _unlistable(exc: OSError) -> None:
    """os.walk would skip a folder it cannot list: a class silently missing is worse than an error."""
    raise DataError(f"{exc.filename}: cannot list this folder ({exc.strerror or exc})")


def _header_size(path: Path) -> tuple[int, int] | None:
    if not path.is_file():  # opening a FIFO would block; bad files are reported when decoded
        return None
    try:
        with Image.open(path, formats=FORMATS) as img:
            return img.size
    except Exception:  # noqa: BLE001 - bad files are reported when decoded
        return None


# ------------------------------------------------------------------------------------------ source

class _ImageFolder:
    def __init__(self, path: Path, size: int | None, mode: str, labels_from_subfolders: bool,
                 skip_bad: bool) -> None:
        if mode not in ("RGB", "L"):
            raise DataError(f"image folder {path}: mode must be 'RGB' or 'L', got {mode!r}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise DataError(f"image folder {path}: size must be a positive integer, got {size!r}")
        if not path.is_dir():
            raise DataError(f"image folder {path} does not exist or is not a directory")
        self.path = path
        self.size = size
        self.mode = mode
        self.labels_from_subfolders = labels_from_subfolders
        self.skip_bad = skip_bad
        present = [s for s in CYCLEGAN_SPLITS if (path / s).is_dir()]
        if present:
            self.layout = "cyclegan"
            self.splits: tuple[str, ...] = tuple(present)
        elif (path / "train").is_dir() and (path / "test").is_dir():
            self.layout = "train-test"
            self.splits = ("train", "test")
        else:
            self.layout = "flat"
            self.splits = ("all", "train", "test")

    @property
    def name(self) -> str:
        return f"folder:{self.path}"

    def _split_root(self, split: str) -> Path:
        return self.path if self.layout == "flat" else self.path / split

    def _files(self, split: str) -> list[str]:
        """Relative paths (to the split root) of the split's images, sorted."""
        files = _list_images(self._split_root(split))
        if self.layout == "flat" and split != "all":
            want_test = split == "test"
            files = [f for f in files if (path_fraction(f) < TEST_FRACTION) == want_test]
        return files

    def _domain_splits(self, split: str) -> list[str]:
        """The splits whose sub-folders share class indices with `split`."""
        if self.layout == "cyclegan":
            return [s for s in self.splits if s[-1] == split[-1]]
        if self.layout == "train-test":
            return ["train", "test"]
        return ["all"]

    def _class_names(self, split: str) -> tuple[str, ...]:
        if not self.labels_from_subfolders:
            return ()
        names = set()
        for s in self._domain_splits(split):
            names.update(f.split("/", 1)[0] for f in _list_images(self._split_root(s)) if "/" in f)
        return tuple(sorted(names))

    def _physical_splits(self) -> list[str]:
        """The splits that are folders of their own (flat: just "all", which holds train and test)."""
        return ["all"] if self.layout == "flat" else list(self.splits)

    def _target_size(self, split: str) -> tuple[int, int] | None:
        """(w, h) to keep when every image of the split's domain (all splits, or one CycleGAN side)
        has that size and no size was asked for; None means resize and crop."""
        if self.size is not None:
            return None
        paths = [self._split_root(s) / f for s in self._domain_splits(split) for f in _list_images(self._split_root(s))]
        with ThreadPoolExecutor(decode_workers()) as pool:
            sizes = {s for s in pool.map(_header_size, paths) if s is not None}
        return sizes.pop() if len(sizes) == 1 else None

    def _decode(self, path: Path, keep: tuple[int, int] | None) -> np.ndarray:
        img = open_image(path, draft=None if keep is not None else (self.size or DEFAULT_SIZE))
        try:
            img = to_mode(img, self.mode)
            if keep is not None and img.size != keep:
                raise BadImage(f"size {img.size[0]}x{img.size[1]} changed while reading (expected "
                               f"{keep[0]}x{keep[1]})")
            if keep is None:
                img = resize_crop(img, self.size or DEFAULT_SIZE)
            arr = np.asarray(img, dtype=np.uint8)
        except BadImage:
            raise
        except Exception as exc:  # noqa: BLE001
            raise BadImage(f"cannot convert ({exc.__class__.__name__}: {exc})") from None
        return arr[..., None] if arr.ndim == 2 else arr

    def _try_decode(self, args: tuple[Path, tuple[int, int] | None]) -> np.ndarray | str:
        try:
            return self._decode(*args)
        except BadImage as exc:
            return str(exc)

    def load(self, split: str, root: Path | None = None) -> Split:
        if split not in self.splits:
            raise DataError(f"image folder {self.path} has no split {split!r}; splits: {', '.join(self.splits)}")
        split_root = self._split_root(split)
        files = self._files(split)
        if not files:
            where = split_root if self.layout != "flat" or split == "all" else f"{split_root} ({split} split)"
            raise DataError(f"no images (png, jpg, jpeg, webp, bmp) in {where}")
        class_names = self._class_names(split)
        index = {c: i for i, c in enumerate(class_names)}
        prefix = "" if self.layout == "flat" else f"{split}/"
        with warnings.catch_warnings():  # header reads too: Pillow warns on 89M+ pixels before our check
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            keep = self._target_size(split)
            with ThreadPoolExecutor(decode_workers()) as pool:
                results = list(pool.map(self._try_decode, [(split_root / f, keep) for f in files]))
        images, labels, paths, skipped = [], [], [], []
        for rel, result in zip(files, results):
            if isinstance(result, str):
                if not self.skip_bad:
                    raise DataError(f"{split_root / rel}: {result}")
                skipped.append((prefix + rel, result))
                continue
            images.append(result)
            paths.append(prefix + rel)
            labels.append(index[rel.split("/", 1)[0]] if self.labels_from_subfolders and "/" in rel else -1)
        if not images:
            raise DataError(f"no readable images in {split_root} ({len(skipped)} bad files skipped)")
        return Split(np.stack(images), np.asarray(labels, dtype=np.int64), self.name, split, class_names,
                     {"paths": paths, "skipped": skipped, "root": str(self.path)})

    def check(self, root: Path | None = None) -> list[FileCheck]:
        return [FileCheck(self._split_root(s), self._split_root(s).is_dir(), None) for s in self._physical_splits()]


def image_folder_source(path: Path, size: int | None = None, mode: str = "RGB",
                        labels_from_subfolders: bool = True, skip_bad: bool = False) -> DatasetSource:
    """A DatasetSource over a folder of images (see the module docstring for layouts and rules)."""
    folder = _ImageFolder(Path(path).expanduser(), size, mode, labels_from_subfolders, skip_bad)
    return DatasetSource(
        name=folder.name,
        description=f"images under {folder.path} ({folder.layout} layout)",
        splits=folder.splits,
        load=folder.load,
        check=folder.check,
        fetch=None,
        licence="whatever licence the images themselves carry (unknown to dtn)",
        how_to_get="pass a folder of png/jpg/jpeg/webp/bmp images (optionally with class sub-folders, "
                   "train/ and test/, or trainA/trainB/testA/testB)",
    )
