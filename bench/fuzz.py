"""Feed dtn's loaders and commands malformed files: every case must end in one `dtn: error: ...` line
naming the file and the problem, be skipped and counted under `--skip-bad`, or be accepted as a
valid input; never a traceback.

    python bench/fuzz.py [--seed 0] [--scale 1] [--out bench/results/fuzz.json]

Targets (in-process through `dtn.cli.main(argv)`, plus a few `python -m dtn.cli` subprocesses):
  folder   `dtn data info FOLDER` and `... --skip-bad`: zero-byte, truncated and bit-flipped
           PNG/JPEG/WebP/BMP, huge declared dimensions and real decompression bombs, every image
           mode (16-bit, CMYK, LAB, palette, alpha), animated GIF/PNG/WebP, non-images with image
           names, empty folders, special files, unreadable files and folders
  idx      the MNIST loader (IdxDataset.load, checksums matching the fuzzed bytes so parsing runs)
           and `dtn data info mnist --data-dir` (wrong magic, dtypes, shapes, truncation, gzip)
  mat      the SVHN loader (unverified) and `dtn data info svhn --data-dir` (wrong keys, shapes,
           dtypes, cells/structs/sparse, truncation, HDF5 v7.3)
  npz      `dtn transfer --input X.npz` (wrong keys, dtypes, shapes, pickled object arrays, plain
           pickles and .npy, truncated/bit-flipped zips, zip bombs, huge declared shapes)

Outcomes: "error" (one `dtn: error:` line naming the file), "skipped" (--skip-bad lists it),
"accepted" (loaded as valid), "vague-error" (one line that does not name the file) and "crash"
(anything else: a traceback, several lines, another exit code, or a pickle that ran code).
Cases come from a numpy RNG seeded by --seed: the same seed gives the same cases and numbers.
An unverified .mat is decoded in a throwaway process (scipy's reader segfaults on some damaged
files); `native_reader_crashes_contained` counts the cases where that child crashed. Unreadable
files are simulated (open/scandir raise PermissionError) when running as root, where chmod 000
does not stop reads. Writes bench/results/fuzz.json.
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import platform
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.json"
OUTCOMES = ("error", "skipped", "accepted", "vague-error", "crash")


@dataclass
class Case:
    """One malformed input: files to write under a fresh case folder, the one an error must name."""

    kind: str
    target: str                          # folder | idx | idx-cli | mat | mat-cli | npz | cli
    files: dict[str, bytes]              # relative path -> bytes
    bad: str                             # relative path the error must name
    deny: tuple[str, ...] = ()           # relative paths that cannot be opened
    dirs: tuple[str, ...] = ()           # extra (empty) folders to create
    special: str = ""                    # "fifo", "dangling", "loop", "dir-named-png": made by make_special
    base: bool = True                    # folder target: add the valid base images
    note: str = ""


@dataclass
class Context:
    """What case builders share: the seeded RNG and the folder where a hostile pickle would write."""

    rng: np.random.Generator
    work: Path
    scale: float = 1.0

    def n(self, count: int) -> int:
        return max(1, round(count * self.scale))

    @property
    def marker(self) -> Path:
        return self.work / "PICKLE-RAN-CODE"


# ============================================================================ valid files as bytes

def image_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise_image(rng: np.random.Generator, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Image.Image:
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_dims(data: bytes, w: int, h: int) -> bytes:
    """Rewrite a PNG's IHDR width/height and fix its CRC, so only the size lies."""
    ihdr = data[16:29]
    new = struct.pack(">II", w, h) + ihdr[8:]
    return data[:8] + png_chunk(b"IHDR", new) + data[33:]


def jpeg_with_dims(data: bytes, w: int, h: int) -> bytes:
    at = data.index(b"\xff\xc0")
    return data[:at + 5] + struct.pack(">HH", h, w) + data[at + 9:]


def bmp_with_dims(data: bytes, w: int, h: int) -> bytes:
    return data[:18] + struct.pack("<ii", w, h) + data[26:]


def gif_with_dims(data: bytes, w: int, h: int) -> bytes:
    return data[:6] + struct.pack("<HH", w, h) + data[10:]


def deflated_zeros(n: int, raw: bool = False) -> bytes:
    """n zero bytes, deflated, never held uncompressed. raw (no zlib wrapper, for zip members): one
    16 MB block is compressed once and its bytes repeated (a full flush makes each copy stand alone),
    so 2 GB take milliseconds; zlib-wrapped (PNG), the stream is compressed for real, for its checksum."""
    block = 2**24
    if raw:
        seg = zlib.compressobj(9, zlib.DEFLATED, -15)
        whole = seg.compress(bytes(block)) + seg.flush(zlib.Z_FULL_FLUSH)
        tail = zlib.compressobj(9, zlib.DEFLATED, -15)
        return whole * (n // block) + tail.compress(bytes(n % block)) + tail.flush()
    comp, parts = zlib.compressobj(9), []
    for start in range(0, n, block):
        parts.append(comp.compress(bytes(min(block, n - start))))
    return b"".join(parts) + comp.flush()


def zeros_png(w: int, h: int) -> bytes:
    """A real decompression bomb: w x h grey zeros in a few KB. Each row is a filter byte (0) and w
    zeros, so the whole IDAT stream is h * (w + 1) zero bytes."""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        png_chunk(b"IDAT", deflated_zeros(h * (w + 1))) + png_chunk(b"IEND", b"")


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(1, len(data)))]


def bitflip(data: bytes, rng: np.random.Generator, start: int = 0, end: int | None = None) -> bytes:
    """Flip 1 to 32 random bits in data[start:end] (so a header can be spared or aimed at)."""
    out = bytearray(data)
    for _ in range(int(rng.choice([1, 1, 2, 4, 8, 32]))):
        pos = int(rng.integers(start, min(end or len(out), len(out))))
        out[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def idx_bytes(arr: np.ndarray, dtype_code: int = 0x08, magic: bytes = b"\x00\x00") -> bytes:
    return magic + bytes([dtype_code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def mat_bytes(variables: dict) -> bytes:
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    return buf.getvalue()


def npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy_header(shape: tuple, descr: str = "|u1") -> bytes:
    """An .npy header that declares `shape` (the data after it may be missing: the header lies)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


class Evil:
    """Unpickling this writes a marker file: proof that a loader ran code from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran code"))


# ============================================================================ folder cases

EXTS = (".png", ".jpg", ".webp", ".bmp")
FORMAT_OF = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def folder_case(kind: str, name: str, data: bytes, note: str = "", **kw) -> Case:
    return Case(kind, "folder", {f"train/{name}": data}, f"train/{name}", note=note, **kw)


def zero_byte_cases(ctx: Context) -> Iterator[Case]:
    for ext in EXTS + (".jpeg", ".PNG"):
        yield folder_case("zero-byte", f"empty{ext}", b"")


def truncated_cases(ctx: Context) -> Iterator[Case]:
    for ext, count in ((".png", 60), (".jpg", 60), (".webp", 20), (".bmp", 20)):
        good = image_bytes(noise_image(ctx.rng), FORMAT_OF[ext])
        for i in range(ctx.n(count)):
            yield folder_case(f"truncated-{ext[1:]}", f"t{i}{ext}", truncate(good, ctx.rng))


def bitflip_cases(ctx: Context) -> Iterator[Case]:
    for ext, count in ((".png", 90), (".jpg", 90), (".webp", 20), (".bmp", 20)):
        good = image_bytes(noise_image(ctx.rng), FORMAT_OF[ext])
        for i in range(ctx.n(count)):
            yield folder_case(f"bitflip-{ext[1:]}", f"f{i}{ext}", bitflip(good, ctx.rng))


def huge_dims(ctx: Context) -> tuple[int, int]:
    """Declared sizes past the pixel limit: square giants, 1-pixel strips, and 32-bit wrap-arounds."""
    pick = int(ctx.rng.integers(0, 4))
    if pick == 0:
        side = int(ctx.rng.integers(7000, 65500))
        return side, side
    if pick == 1:
        return 1, int(ctx.rng.integers(40_000_001, 2**31 - 1))
    if pick == 2:
        return int(ctx.rng.integers(2**16, 2**31 - 1)), int(ctx.rng.integers(2**16, 2**31 - 1))
    return 2**31 - 1, 2**31 - 1


def bomb_cases(ctx: Context) -> Iterator[Case]:
    png = image_bytes(noise_image(ctx.rng), "PNG")
    jpg = image_bytes(noise_image(ctx.rng), "JPEG")
    bmp = image_bytes(noise_image(ctx.rng), "BMP")
    gif = image_bytes(noise_image(ctx.rng, mode="P"), "GIF")
    for i in range(ctx.n(25)):
        yield folder_case("bomb-declared-png", f"b{i}.png", png_with_dims(png, *huge_dims(ctx)))
    for i in range(ctx.n(15)):
        side = int(ctx.rng.integers(7000, 65535))
        yield folder_case("bomb-declared-jpg", f"b{i}.jpg", jpeg_with_dims(jpg, side, int(ctx.rng.integers(7000, 65535))))
    for i in range(ctx.n(10)):
        w, h = huge_dims(ctx)
        yield folder_case("bomb-declared-bmp", f"b{i}.bmp", bmp_with_dims(bmp, min(w, 2**31 - 1), min(h, 2**31 - 1)))
    for i in range(ctx.n(5)):
        yield folder_case("bomb-declared-gif", f"b{i}.png", gif_with_dims(gif, 65535, int(ctx.rng.integers(1000, 65535))))
    yield folder_case("bomb-real", "zeros-8000.png", zeros_png(8000, 8000), "64 Mpx of zeros in a few KB")
    yield folder_case("bomb-real", "zeros-strip.png", zeros_png(40_000_000, 1), "a 40 Mpx 1-pixel strip")
    yield folder_case("bomb-real", "zeros-tall.png", zeros_png(1, 39_000_000), "39 Mpx, under the limit, 1 px wide")


def mode_images(ctx: Context) -> Iterator[tuple[str, Image.Image, str]]:
    """(label, image, format) for every mode Pillow can write somewhere, 16-bit and CMYK included."""
    rgb = noise_image(ctx.rng)
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa"):
        for fmt in ("PNG", "TIFF", "JPEG", "WEBP", "BMP", "GIF"):
            try:
                img = rgb.convert(mode) if mode not in ("I;16", "PA", "La", "RGBa") else _odd_mode(rgb, mode)
                image_bytes(img, fmt)
            except (OSError, ValueError, KeyError):
                continue  # Pillow cannot write this mode in this format
            yield f"{mode}-{fmt}", img, fmt
    big_endian = Image.frombytes("I;16B", (16, 16), (np.arange(256, dtype=">u2") * 257).tobytes())
    for fmt in ("PNG", "TIFF"):
        with contextlib.suppress(OSError, ValueError, KeyError):  # not writable in this Pillow: no case
            image_bytes(big_endian, fmt)
            yield f"I;16B-{fmt}", big_endian, fmt


def _odd_mode(rgb: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257), "I;16")
    if mode == "PA":
        return rgb.convert("RGBA").convert("PA")
    return rgb.convert("RGBA" if mode == "RGBa" else "LA").convert(mode)


def mode_cases(ctx: Context) -> Iterator[Case]:
    for label, img, fmt in mode_images(ctx):
        ext = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}.get(fmt, ".png")
        yield folder_case("modes", f"{label.replace(';', '_')}{ext}", image_bytes(img, fmt), f"{label} named {ext}")


def animated_cases(ctx: Context) -> Iterator[Case]:
    frames = [noise_image(ctx.rng) for _ in range(3)]
    for fmt, ext in (("GIF", ".png"), ("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".jpg")):
        data = image_bytes(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
        yield folder_case("animated", f"anim-{fmt.lower()}{ext}", data, f"3-frame {fmt} named {ext}")
        yield folder_case("animated", f"anim-trunc-{fmt.lower()}{ext}", data[: len(data) * 2 // 3])


NON_IMAGES = {
    "text": b"hello, I am not a picture\n",
    "html": b"<!doctype html><html><body>404</body></html>",
    "json": b'{"images": [1, 2, 3]}',
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "elf": b"\x7fELF\x02\x01\x01" + bytes(57),
    "zip": zip_bytes({"a.txt": b"x"}),
    "gzip": gz(b"not an image"),
    "python": b"import os\nos.system('echo pwned')\n",
    "png-signature-only": b"\x89PNG\r\n\x1a\n",
    "jpeg-soi-only": b"\xff\xd8\xff",
    "bmp-magic-only": b"BM",
    "gif-magic-only": b"GIF89a",
    "riff-webp-only": b"RIFF\x00\x00\x00\x00WEBP",
    "nul-bytes": bytes(1000),
}


def non_image_cases(ctx: Context) -> Iterator[Case]:
    for i, (label, data) in enumerate(NON_IMAGES.items()):
        ext = EXTS[i % len(EXTS)]
        yield folder_case("non-image", f"{label}{ext}", data, f"{label} named {ext}")
    for i in range(ctx.n(20)):
        size = int(ctx.rng.choice([1, 7, 100, 4096, 100_000]))
        yield folder_case("non-image", f"random{i}{EXTS[i % 4]}", ctx.rng.bytes(size), f"{size} random bytes")
    tiff = image_bytes(noise_image(ctx.rng), "TIFF")
    ico = image_bytes(noise_image(ctx.rng), "ICO")
    tga = image_bytes(noise_image(ctx.rng), "TGA")
    for label, data in (("tiff", tiff), ("ico", ico), ("tga", tga)):
        yield folder_case("other-format", f"{label}-inside.png", data, f"a valid {label.upper()} named .png")


def empty_folder_cases(ctx: Context) -> Iterator[Case]:
    """Folders with nothing to load: the error names the folder."""
    layouts = {
        "no-files": ({}, ("train", "test")),
        "only-hidden": ({"train/.a.png": image_bytes(noise_image(ctx.rng), "PNG")}, ("test",)),
        "only-other-extensions": ({"train/a.txt": b"x", "train/b.gif": b"GIF89a", "test/c.tif": b"II*"}, ()),
        "empty-class-folders": ({}, ("train/0", "train/1", "test/0")),
        "empty-test-split": ({"train/0/a.png": image_bytes(noise_image(ctx.rng), "PNG")}, ("test",)),
        "empty-cyclegan-side": ({"trainA/a.png": image_bytes(noise_image(ctx.rng), "PNG")}, ("trainB",)),
        "hidden-folder-only": ({"train/.cache/a.png": image_bytes(noise_image(ctx.rng), "PNG")}, ("test",)),
        "flat-empty": ({}, ("sub",)),
    }
    for label, (files, dirs) in layouts.items():
        yield Case("empty-folder", "folder", files, "", dirs=dirs, base=False, note=label)


def special_file_cases(ctx: Context) -> Iterator[Case]:
    for special in ("fifo", "dangling", "loop", "dir-named-png", "dev-zero", "dev-urandom"):
        yield Case("special-file", "folder", {}, f"train/{special}.png", special=special, note=special)


def unreadable_cases(ctx: Context) -> Iterator[Case]:
    png = image_bytes(noise_image(ctx.rng), "PNG")
    for i, ext in enumerate((".png", ".jpg", ".bmp", ".webp")):
        data = image_bytes(noise_image(ctx.rng), FORMAT_OF[ext])
        yield Case("unreadable-file", "folder", {f"train/locked{i}{ext}": data}, f"train/locked{i}{ext}",
                   deny=(f"train/locked{i}{ext}",))
    yield Case("unreadable-folder", "folder", {"train/secret/a.png": png}, "train/secret", deny=("train/secret",))
    yield Case("unreadable-folder", "folder", {"test/deep/er/a.png": png}, "test/deep/er", deny=("test/deep/er",))


FOLDER_BUILDERS = (zero_byte_cases, truncated_cases, bitflip_cases, bomb_cases, mode_cases, animated_cases,
                   non_image_cases, empty_folder_cases, special_file_cases, unreadable_cases)


# ============================================================================ IDX cases

def idx_pair(ctx: Context, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return ctx.rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), ctx.rng.integers(0, 10, n, dtype=np.uint8)


def idx_case(kind: str, images: bytes, labels: bytes, bad: str = "images", target: str = "idx", note: str = "") -> Case:
    files = {"train-images-idx3-ubyte.gz": images, "train-labels-idx1-ubyte.gz": labels}
    name = "train-images-idx3-ubyte.gz" if bad == "images" else "train-labels-idx1-ubyte.gz"
    return Case(kind, target, files, name, note=note)


def idx_cases(ctx: Context) -> Iterator[Case]:
    images, labels = idx_pair(ctx)
    good_i, good_l = idx_bytes(images), idx_bytes(labels)
    for i in range(ctx.n(20)):
        magic = bytes(ctx.rng.integers(0, 256, 2, dtype=np.uint8))
        if magic == b"\x00\x00":
            magic = b"\x00\x01"
        yield idx_case("idx-magic", gz(idx_bytes(images, magic=magic)), gz(good_l), note=f"magic {magic.hex()}")
    for code in (0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF):
        yield idx_case("idx-dtype", gz(idx_bytes(images, dtype_code=code)), gz(good_l), note=f"type 0x{code:02x}")
        yield idx_case("idx-dtype", gz(good_i), gz(idx_bytes(labels, dtype_code=code)), "labels", note=f"labels type 0x{code:02x}")
    yield from idx_shape_cases(ctx, images, labels)
    for i in range(ctx.n(20)):
        yield idx_case("idx-truncated", gz(truncate(good_i, ctx.rng)), gz(good_l))
        yield idx_case("idx-truncated", gz(good_i), gz(truncate(good_l, ctx.rng)), "labels")
    for i in range(ctx.n(25)):
        yield idx_case("idx-bitflip-header", gz(bitflip(good_i[:16], ctx.rng) + good_i[16:]), gz(good_l))
    for i in range(ctx.n(15)):
        dims = [int(d) for d in ctx.rng.integers(2**20, 2**32, 3)]
        yield idx_case("idx-huge-dims", gz(b"\x00\x00\x08\x03" + struct.pack(">III", *dims) + images.tobytes()),
                       gz(good_l), note=f"declares {dims}")
    for i in range(ctx.n(10)):
        yield idx_case("idx-not-gzip", good_i if i % 2 else ctx.rng.bytes(200), gz(good_l), note="raw IDX, no gzip")
        yield idx_case("idx-gzip-broken", truncate(gz(good_i), ctx.rng), gz(good_l), note="truncated gzip stream")
        yield idx_case("idx-gzip-broken", bitflip(gz(good_i), ctx.rng, start=10), gz(good_l), note="bit-flipped gzip")
    yield idx_case("idx-empty", b"", gz(good_l), note="0 bytes")
    yield idx_case("idx-empty", gz(b""), gz(good_l), note="gzip of nothing")


def idx_shape_cases(ctx: Context, images: np.ndarray, labels: np.ndarray) -> Iterator[Case]:
    good_l = gz(idx_bytes(labels))
    for shape in ((5,), (5, 784), (5, 28, 28, 1), (5, 28, 28, 1, 1), (0, 28, 28), (5, 0, 28), (4, 28, 28), (6, 28, 28)):
        arr = np.zeros(shape, np.uint8)
        yield idx_case("idx-shape", gz(idx_bytes(arr)), good_l, note=f"images {shape}")
    for shape in ((5, 1), (5, 28, 28), (4,), ()):
        arr = np.zeros(shape, np.uint8)
        yield idx_case("idx-shape", gz(idx_bytes(images)), gz(idx_bytes(arr)), "labels", note=f"labels {shape}")
    yield idx_case("idx-shape", gz(b"\x00\x00\x08\x00"), good_l, note="0 dimensions")
    yield idx_case("idx-shape", gz(b"\x00\x00\x08\xff" + bytes(16)), good_l, note="255 dimensions, header cut")
    yield idx_case("idx-shape", gz(idx_bytes(labels)), gz(idx_bytes(images)), "labels", note="images and labels swapped")


def idx_cli_cases(ctx: Context) -> Iterator[Case]:
    """The same damage through `dtn data info mnist --data-dir`: the checksum check answers first."""
    for i, case in enumerate(idx_cases(ctx)):
        if i % 6 == 0:
            yield Case(case.kind + "-cli", "idx-cli", case.files, case.bad, note=case.note)


# ============================================================================ .mat cases

def svhn_vars(ctx: Context, n: int = 4) -> dict:
    return {"X": ctx.rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
            "y": ctx.rng.integers(1, 11, (n, 1)).astype(np.uint8)}


def mat_case(kind: str, data: bytes, note: str = "", target: str = "mat") -> Case:
    return Case(kind, target, {"test_32x32.mat": data}, "test_32x32.mat", note=note)


def mat_cases(ctx: Context) -> Iterator[Case]:
    import scipy.sparse

    good = svhn_vars(ctx)
    for keys in ({"x": good["X"], "y": good["y"]}, {"X": good["X"]}, {"y": good["y"]}, {}, {"images": good["X"]},
                 {"X": good["X"], "Y": good["y"]}):
        yield mat_case("mat-keys", mat_bytes(keys), f"keys {sorted(keys)}")
    bad_x = [np.zeros((32, 32, 3), np.uint8), np.zeros((28, 28, 1, 4), np.uint8), np.zeros((4, 32, 32, 3), np.uint8),
             np.zeros((32, 32, 4, 4), np.uint8), np.zeros((32, 32, 3, 0), np.uint8), np.zeros((1,), np.uint8),
             np.zeros((32, 32, 3, 4, 1, 2), np.uint8)]
    for x in bad_x:
        yield mat_case("mat-shapes", mat_bytes({"X": x, "y": good["y"]}), f"X {x.shape}")
    for y in (np.zeros((3, 1)), np.zeros((4, 2)), np.zeros((1, 4)), np.zeros((0, 0)), np.zeros((2, 2, 2))):
        yield mat_case("mat-shapes", mat_bytes({"X": good["X"], "y": y}), f"y {y.shape}")
    for dtype in (np.float32, np.float64, np.int16, np.uint16, np.complex64, np.bool_):
        yield mat_case("mat-dtypes", mat_bytes({"X": good["X"].astype(dtype), "y": good["y"]}), f"X {np.dtype(dtype)}")
    for y in (good["y"] + 0.5, np.full((4, 1), 11), np.full((4, 1), -1), np.full((4, 1), np.nan), good["y"].astype(np.complex64)):
        yield mat_case("mat-labels", mat_bytes({"X": good["X"], "y": y}), f"y {y.dtype} {y.ravel()[:2]}")
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = good["X"], "text"
    for label, x in (("cell", cell), ("struct", {"a": good["X"]}), ("sparse", scipy.sparse.csr_matrix(np.eye(4))),
                     ("string", "not pixels"), ("scalar", 3.0)):
        yield mat_case("mat-dtypes", mat_bytes({"X": x, "y": good["y"]}), f"X is a {label}")
    data = mat_bytes(good)
    for i in range(ctx.n(25)):
        yield mat_case("mat-truncated", truncate(data, ctx.rng))
    for i in range(ctx.n(30)):
        yield mat_case("mat-bitflip", bitflip(data, ctx.rng, start=int(ctx.rng.choice([0, 116, 128]))))
    tag = data.index(b"\x01\x00\x01\x00X\x00\x00\x00") + 8  # the tag of X's data: type (u16, u16), size
    for i in range(ctx.n(30)):  # a wrong data type there makes scipy 1.17's reader segfault
        bad = bytearray(data)
        bad[tag + int(ctx.rng.integers(0, 4))] = int(ctx.rng.integers(1, 256))
        yield mat_case("mat-bad-tag", bytes(bad), "X's data tag overwritten")
    for i in range(ctx.n(8)):
        yield mat_case("mat-not-mat", ctx.rng.bytes(int(ctx.rng.integers(1, 3000))), "random bytes")
    yield mat_case("mat-not-mat", b"", "0 bytes")
    yield mat_case("mat-v73", b"MATLAB 7.3 MAT-file".ljust(116, b" ") + bytes(12) + b"\x89HDF\r\n\x1a\n" + bytes(64),
                   "an HDF5 (v7.3) header")
    yield mat_case("mat-not-mat", NON_IMAGES["html"], "an HTML error page saved as .mat")


def mat_cli_cases(ctx: Context) -> Iterator[Case]:
    for i, case in enumerate(mat_cases(ctx)):
        if i % 6 == 0:
            yield Case(case.kind + "-cli", "mat-cli", case.files, case.bad, note=case.note)


# ============================================================================ .npz cases (dtn transfer)

def npz_case(kind: str, data: bytes, note: str = "") -> Case:
    return Case(kind, "npz", {"in.npz": data}, "in.npz", note=note)


def npz_cases(ctx: Context) -> Iterator[Case]:
    good = ctx.rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    yield npz_case("npz-valid", npz_bytes(images=good), "valid (N,H,W,3)")
    yield npz_case("npz-valid", npz_bytes(True, images=good[..., 0]), "valid (N,H,W), compressed")
    yield npz_case("npz-valid", npz_bytes(images=good[:0]), "valid, zero images")
    for keys in ({"pictures": good}, {"Images": good}, {"images.npy": good}, {}, {"x": good, "y": good[:1]}):
        yield npz_case("npz-keys", npz_bytes(**keys), f"keys {sorted(keys)}")
    for dtype in (np.float32, np.float64, np.int8, np.int64, np.uint16, ">u2", np.bool_, np.complex64, "U3", "S3",
                  "datetime64[s]", "V3", [("a", np.uint8), ("b", np.uint8)]):
        arr = good.astype(dtype) if not (isinstance(dtype, str) and dtype[0] in "UVS") else np.zeros(good.shape, dtype)
        yield npz_case("npz-dtypes", npz_bytes(images=arr), f"dtype {np.dtype(dtype)}")
    for shape in ((), (5,), (5, 6), (2, 8, 8, 2), (2, 8, 8, 4), (2, 8, 8, 5), (1, 2, 8, 8, 3), (2, 0, 8), (2, 8, 0, 3),
                  (0,), (1, 1, 1), (2, 1, 1, 1)):
        yield npz_case("npz-shapes", npz_bytes(images=np.zeros(shape, np.uint8)), f"shape {shape}")
    yield from npz_pickle_cases(ctx, good)
    yield from npz_damaged_cases(ctx, npz_bytes(images=good), npz_bytes(True, images=good))
    yield from npz_bomb_cases(ctx)


def npz_pickle_cases(ctx: Context, good: np.ndarray) -> Iterator[Case]:
    evil = np.array([Evil(ctx.marker)], dtype=object)
    yield npz_case("npz-object", npz_bytes(images=evil), "object array whose pickle writes a file")
    yield npz_case("npz-object", npz_bytes(images=np.array([good, good[:1]], dtype=object)), "ragged object array")
    yield npz_case("npz-object", npz_bytes(images=np.array([{"a": 1}], dtype=object)), "object array of dicts")
    yield npz_case("npz-object", npz_bytes(images=good, extra=evil), "a hostile extra array next to valid images")
    yield npz_case("npz-pickle-file", pickle.dumps({"images": Evil(ctx.marker)}), "a pickle named .npz")
    yield npz_case("npz-pickle-file", pickle.dumps(good), "a pickled ndarray named .npz")
    for arr in (good, np.zeros((2, 8, 8), np.uint8), evil):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=True)
        yield npz_case("npz-npy", buf.getvalue(), f"a plain .npy {arr.dtype} {arr.shape}")


def npz_damaged_cases(ctx: Context, plain: bytes, compressed: bytes) -> Iterator[Case]:
    for data, label in ((plain, "stored"), (compressed, "deflated")):
        for i in range(ctx.n(20)):
            yield npz_case(f"npz-truncated-{label}", truncate(data, ctx.rng))
        for i in range(ctx.n(40)):
            yield npz_case(f"npz-bitflip-{label}", bitflip(data, ctx.rng))
    for i in range(ctx.n(12)):
        yield npz_case("npz-not-zip", ctx.rng.bytes(int(ctx.rng.integers(1, 5000))), "random bytes")
    for label in ("text", "html", "json", "zip", "gzip", "nul-bytes"):
        yield npz_case("npz-not-zip", NON_IMAGES[label], label)
    yield npz_case("npz-not-zip", b"", "0 bytes")
    yield npz_case("npz-members", zip_bytes({"images": b"raw bytes, not .npy"}), "member 'images' without .npy")
    yield npz_case("npz-members", zip_bytes({"images.npy": b"not npy"}), "images.npy that is not .npy")
    yield npz_case("npz-members", zip_bytes({"images.npy": npy_header((2, 4, 4))}), "header, no data")
    yield npz_case("npz-members", zip_bytes({"images.npy": b"\x93NUMPY\x09\x00" + bytes(20)}), "npy format 9.0")
    yield npz_case("npz-members", zip_bytes({"images.npy": npy_header((2, 4, 4), "|O")}), "object dtype header")
    yield npz_case("npz-members", zip_bytes({"images.npy": npy_header((2, 4, 4), "<f8")}), "float header")
    yield npz_case("npz-members", zip_bytes({"images.npy": npy_header((-2, 4, 4))}), "negative dimension")
    yield npz_case("npz-members", zip_bytes({"images.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}"}),
                   "header with code")
    yield npz_case("npz-members", zip_bytes({"images.npy": b"x"}, zipfile.ZIP_BZIP2), "bzip2 member")
    yield npz_case("npz-members", zip_bytes({"images.npy": b"x"}, zipfile.ZIP_LZMA), "lzma member")
    yield npz_case("npz-members", zip_bytes({}), "an empty zip")


def npz_bomb_cases(ctx: Context) -> Iterator[Case]:
    """Declared shapes far beyond memory (the header lies, or the zeros really are there, deflated)."""
    for i in range(ctx.n(10)):
        shape = tuple(int(d) for d in ctx.rng.integers(10_000, 10_000_000, 3))
        yield npz_case("npz-bomb-declared", zip_bytes({"images.npy": npy_header(shape) + bytes(100)}), f"declares {shape}")
    yield npz_case("npz-bomb-declared", zip_bytes({"images.npy": npy_header((2**62, 2**62))}), "declares 2**124 bytes")
    header, n = npy_header((1, 48_000, 48_000)), 48_000 * 48_000
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(header) + comp.flush(zlib.Z_SYNC_FLUSH) + deflated_zeros(n, raw=True)
    yield npz_case("npz-bomb-real", _raw_deflate_zip("images.npy", body, len(header) + n), "2.3 GB of zeros")
    yield npz_case("npz-bomb-real", npz_bytes(True, images=np.zeros((1, 8000, 8000), np.uint8)), "one 64 Mpx image")


def _raw_deflate_zip(name: str, deflated_with_header: bytes, size: int) -> bytes:
    """A zip with one deflated member whose compressed bytes we made ourselves (too big to build in memory
    uncompressed). CRC is left 0: a reader that got that far would fail on it anyway."""
    fname = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, 0, len(deflated_with_header), size & 0xFFFFFFFF,
                        len(fname), 0) + fname
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0, 0, len(deflated_with_header),
                          size & 0xFFFFFFFF, len(fname), 0, 0, 0, 0, 0, 0) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(deflated_with_header), 0)
    return local + deflated_with_header + central + end


def cli_cases(ctx: Context) -> Iterator[Case]:
    """Arguments that are not datasets at all."""
    for bad, note in (("nope", "a path that does not exist"), ("a-file.png", "an image file, not a folder"),
                      ("missing", "folder:PATH to nothing")):
        yield Case("cli-args", "cli", {"a-file.png": image_bytes(noise_image(ctx.rng), "PNG")}, bad, note=note)


BUILDERS: dict[str, Callable[[Context], Iterator[Case]]] = {
    **{b.__name__: b for b in FOLDER_BUILDERS},
    "idx": idx_cases, "idx-cli": idx_cli_cases, "mat": mat_cases, "mat-cli": mat_cli_cases, "npz": npz_cases,
    "cli": cli_cases,
}


def build_cases(seed: int, work: Path, scale: float = 1.0, per_kind: int | None = None) -> list[Case]:
    """Every case, in a fixed order; one RNG per builder, so scaling one kind leaves the others alike.
    per_kind: keep only the first N cases of each kind (the quick test's selection)."""
    cases, seen = [], Counter()
    for i, (name, builder) in enumerate(BUILDERS.items()):
        ctx = Context(np.random.default_rng([seed, i]), work, scale)
        for case in builder(ctx):
            seen[case.kind] += 1
            if per_kind is None or seen[case.kind] <= per_kind:
                cases.append(case)
    return cases


# ============================================================================ running a case

@dataclass
class Result:
    kind: str
    target: str
    mode: str
    outcome: str
    message: str
    seconds: float
    note: str = ""
    detail: str = ""


def write_case(case: Case, root: Path, base: dict[str, bytes]) -> None:
    for rel in case.dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    files = {**(base if case.target == "folder" and case.base else {}), **case.files}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if case.special:
        make_special(root / case.bad, case.special)


def make_special(path: Path, special: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if special == "fifo":
        os.mkfifo(path)
    elif special == "dangling":
        path.symlink_to(path.parent / "nowhere.png")
    elif special == "loop":
        path.symlink_to(path)
    elif special == "dir-named-png":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero" if special == "dev-zero" else "/dev/urandom")


@contextlib.contextmanager
def unreadable(paths: list[Path]) -> Iterator[str]:
    """Make `paths` unreadable: chmod 000 where that works, else (root) make open/scandir refuse them."""
    if not paths:
        yield "none"
        return
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0)
        try:
            yield "chmod 000"
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    denied = {os.path.abspath(p) for p in paths}
    real_open, real_io_open, real_scandir = builtins.open, io.open, os.scandir

    def check(target) -> None:
        if isinstance(target, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(target)) in denied:
            raise PermissionError(13, "Permission denied", os.fsdecode(target))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def fake_scandir(path="."):
        check(path)
        return real_scandir(path)

    builtins.open, io.open, os.scandir = fake_open, fake_open, fake_scandir
    try:
        yield "simulated (root: chmod 000 does not stop reads)"
    finally:
        builtins.open, io.open, os.scandir = real_open, real_io_open, real_scandir


def call_cli(argv: list[str]) -> tuple[int | None, str, str, str]:
    """main(argv) in this process: (exit code, stdout, stderr, traceback text if it raised)."""
    from dtn.cli import main

    out, err = io.StringIO(), io.StringIO()
    # Warnings are recorded under the interpreter's default filters, as a user's `dtn` would show them.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
        try:
            rc = main(argv)
        except BaseException:  # noqa: BLE001 - a crash is what we count, with its traceback
            return None, out.getvalue(), err.getvalue(), traceback.format_exc(limit=-3)
    extra = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return rc, out.getvalue(), extra + err.getvalue(), ""


def call_loader(fn: Callable[[], object]) -> tuple[int | None, str, str, str]:
    """A loader function called the way the CLI would: DtnError -> one `dtn: error:` line, exit 2."""
    from dtn.errors import DtnError

    try:
        with warnings.catch_warnings(record=True) as caught:
            fn()
    except DtnError as exc:
        return 2, "", f"dtn: error: {exc}\n", ""
    except BaseException:  # noqa: BLE001
        return None, "", "", traceback.format_exc(limit=-3)
    return 0, "", "".join(f"{w.category.__name__}: {w.message}\n" for w in caught), ""


def classify(rc, out: str, err: str, tb: str, names: list[str], skip_bad: bool) -> tuple[str, str]:
    """(outcome, message) for one run."""
    if tb:
        return "crash", tb.strip().splitlines()[-1]
    lines = err.strip().splitlines()
    if rc == 2 and len(lines) == 1 and lines[0].startswith("dtn: error: "):
        named = any(n and n in lines[0] for n in names)
        return ("error" if named else "vague-error"), lines[0]
    if rc == 0 and not lines:
        if skip_bad and any(f"skipped {n}" in out for n in names if n):
            return "skipped", next(l.strip() for l in out.splitlines() if "skipped" in l)
        return "accepted", ""
    return "crash", f"exit {rc}, stderr: {err.strip()[-300:]}"


class Runner:
    """Runs cases in fresh folders under `work`; owns the tiny trained run that `dtn transfer` needs
    (made on first use unless `run_dir` is given)."""

    def __init__(self, work: Path, seed: int, run_dir: Path | None = None) -> None:
        self.work = work
        self.counter = 0
        rng = np.random.default_rng([seed, 999])
        self.base = {"train/a.png": image_bytes(noise_image(rng), "PNG"),
                     "train/b.png": image_bytes(noise_image(rng), "PNG"),
                     "test/c.png": image_bytes(noise_image(rng), "PNG")}
        self.run_dir = run_dir

    def fresh(self) -> Path:
        self.counter += 1
        path = self.work / "cases" / f"{self.counter:05d}"
        path.mkdir(parents=True)
        return path

    def run(self, case: Case) -> list[Result]:
        root = self.fresh()
        write_case(case, root, self.base)
        if case.target == "folder":
            return [self._one(case, root, "strict"), self._one(case, root, "skip-bad")]
        return [self._one(case, root, "")]

    def _one(self, case: Case, root: Path, mode: str) -> Result:
        names = [Path(case.bad).name, case.bad] if case.bad else [str(root)]
        if case.target.endswith("-cli"):  # a checksum check may name the pair's other file first
            names += list(case.files)
        t0 = time.perf_counter()
        with unreadable([root / p for p in case.deny]):
            rc, out, err, tb = self._call(case, root, mode)
        if case.target == "npz" and (self.work / "PICKLE-RAN-CODE").exists():
            tb = "SECURITY: unpickling ran code (marker file written)"
        outcome, message = classify(rc, out, err, tb, names, mode == "skip-bad")
        return Result(case.kind, case.target, mode, outcome, message, time.perf_counter() - t0, case.note,
                      tb.strip()[-1500:] if outcome == "crash" else "")

    def _call(self, case: Case, root: Path, mode: str):
        if case.target == "folder":
            return call_cli(["--quiet", "data", "info", str(root)] + (["--skip-bad"] if mode == "skip-bad" else []))
        if case.target == "cli":
            arg = f"folder:{root / case.bad}" if case.bad == "missing" else str(root / case.bad)
            return call_cli(["--quiet", "data", "info", arg])
        if case.target == "idx":
            (root / "fuzz-idx").mkdir()
            for name in case.files:
                os.replace(root / name, root / "fuzz-idx" / name)
            return call_loader(lambda: fuzz_idx_dataset(case.files).load("train", root))
        if case.target == "idx-cli":
            (root / "mnist").mkdir()
            for name in case.files:
                os.replace(root / name, root / "mnist" / name)
            return call_cli(["--quiet", "data", "info", "mnist", "--data-dir", str(root)])
        if case.target == "mat":
            from dtn.data.svhn import svhn_source
            (root / "svhn").mkdir()
            os.replace(root / case.bad, root / "svhn" / case.bad)
            return call_loader(lambda: svhn_source(verify=False).load("test", root))
        if case.target == "mat-cli":
            (root / "svhn").mkdir()
            os.replace(root / case.bad, root / "svhn" / case.bad)
            return call_cli(["--quiet", "data", "info", "svhn", "--data-dir", str(root)])
        if case.target == "npz":
            return call_cli(["--quiet", "transfer", "--run", str(self.trained_run()), "--input", str(root / case.bad),
                             "--output", str(root / "out.npz"), "--device", "cpu"])
        raise ValueError(f"unknown target {case.target}")

    def trained_run(self) -> Path:
        """A 2-step `tiny` run on small generated folders, made once (about 10 s)."""
        if self.run_dir is None:
            self.run_dir = make_tiny_run(self.work / "tiny-run")
        return self.run_dir


def fuzz_idx_dataset(files: dict[str, bytes]):
    """An IdxDataset over the case's two files whose checksums match them, so the parser itself is fuzzed."""
    from dtn.data.idx import IdxDataset, IdxFile

    def raw_md5(data: bytes) -> str:
        try:
            return hashlib.md5(gzip.decompress(data)).hexdigest()
        except (OSError, EOFError, zlib.error):
            return "0" * 32

    pair = tuple(IdxFile(name, raw_md5(files[name]), "") for name in ("train-images-idx3-ubyte.gz",
                                                                       "train-labels-idx1-ubyte.gz"))
    return IdxDataset("fuzz-idx", (), {"train": pair}, tuple(str(i) for i in range(10)))


def digit_folder(root: Path, channels: int, size: int, seed: int) -> Path:
    """train/ and test/ with 3 images per class 0..9 (noise plus a bar at a class-dependent row)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k in range(10):
            (root / split / str(k)).mkdir(parents=True)
            for i in range(3):
                img = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
                img[2 * k + 4: 2 * k + 7] = 230
                Image.fromarray(img[..., 0] if channels == 1 else img).save(root / split / str(k) / f"{i}.png")
    return root


def make_tiny_run(path: Path) -> Path:
    """A 2-step `tiny` run on generated folders: what `dtn transfer` applies to the valid inputs."""
    from dtn.cli import main

    src, tgt = digit_folder(path / "src", 3, 32, 0), digit_folder(path / "tgt", 1, 28, 1)
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--quiet", "train", "tiny", "--runs-dir", str(path / "runs"), "--name", "t", "--set",
                   f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}", "--set", "train.steps=2",
                   "--set", "train.eval_every=0"])
    if rc != 0:
        raise RuntimeError(f"could not train the tiny run in {path}")
    return path / "runs" / "t"


# ============================================================================ subprocess spot checks

SUBPROCESS_KINDS = ("truncated-png", "bomb-declared-png", "npz-object", "idx-dtype", "modes")


def subprocess_checks(cases: list[Case], runner: Runner) -> list[dict]:
    """A few cases through a real `python -m dtn.cli`: the exit code and stderr a user sees."""
    picked = [next(c for c in cases if c.kind == k) for k in SUBPROCESS_KINDS if any(c.kind == k for c in cases)]
    out = []
    for case in picked:
        root = runner.fresh()
        write_case(case, root, runner.base)
        argv = _subprocess_argv(case, root, runner)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dtn.cli", "--quiet", *argv], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "DTN_QUIET": "1"})
        names = [Path(case.bad).name]
        outcome, message = classify(proc.returncode, proc.stdout, proc.stderr, "", names, False)
        out.append({"kind": case.kind, "argv": ["dtn", *argv[:2], "..."], "returncode": proc.returncode,
                    "outcome": outcome, "stderr": proc.stderr.strip()[-400:], "seconds": round(time.perf_counter() - t0, 2)})
    return out


def _subprocess_argv(case: Case, root: Path, runner: Runner) -> list[str]:
    if case.target == "folder":
        return ["data", "info", str(root)]
    if case.target == "npz":
        return ["transfer", "--run", str(runner.trained_run()), "--input", str(root / case.bad), "--output",
                str(root / "out.npz")]
    (root / "mnist").mkdir()
    for name in case.files:
        os.replace(root / name, root / "mnist" / name)
    return ["data", "info", "mnist", "--data-dir", str(root)]


# ============================================================================ the report

def summarize(results: list[Result], cases: list[Case], seconds: float, seed: int, scale: float,
              subprocess_results: list[dict]) -> dict:
    by_kind: dict[str, dict] = defaultdict(lambda: {"cases": 0, "runs": 0, "outcomes": Counter()})
    for case in cases:
        by_kind[case.kind]["cases"] += 1
    for r in results:
        by_kind[r.kind]["runs"] += 1
        by_kind[r.kind]["outcomes"][r.outcome if not r.mode else f"{r.outcome} ({r.mode})"] += 1
    totals = Counter(r.outcome for r in results)
    failures = [r for r in results if r.outcome in ("crash", "vague-error")]
    return {
        "command": f"python bench/fuzz.py --seed {seed}" + (f" --scale {scale}" if scale != 1 else ""),
        "seed": seed, "scale": scale, "cases": len(cases), "runs": len(results), "seconds": round(seconds, 1),
        "totals": {k: totals.get(k, 0) for k in OUTCOMES},
        "by_mode": {m or "-": {k: v for k, v in Counter(r.outcome for r in results if r.mode == m).items()}
                    for m in sorted({r.mode for r in results})},
        "by_kind": {k: {"cases": v["cases"], "runs": v["runs"], "outcomes": dict(v["outcomes"])}
                    for k, v in sorted(by_kind.items())},
        "native_reader_crashes_contained": sum("crashes the MATLAB reader" in r.message for r in results),
        "crashes": [vars(r) for r in failures if r.outcome == "crash"],
        "vague_errors": [vars(r) for r in failures if r.outcome == "vague-error"],
        "example_errors": _examples(results),
        "slowest": [{"kind": r.kind, "note": r.note, "mode": r.mode, "seconds": round(r.seconds, 2)}
                    for r in sorted(results, key=lambda r: -r.seconds)[:5]],
        "subprocess": subprocess_results,
        "unreadable_files": ("simulated: open()/os.scandir raise PermissionError for them (running as root, "
                             "where chmod 000 does not stop reads)") if os.geteuid() == 0 else "chmod 000",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def _examples(results: list[Result]) -> dict[str, str]:
    """One error line per kind, to show what a user reads."""
    out = {}
    for r in results:
        if r.outcome == "error" and r.kind not in out:
            out[r.kind] = r.message[:300]
    return out


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the run and put the old values back (the caller's cache stays clean)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_fuzz(seed: int = 0, scale: float = 1.0, work: Path | None = None, subprocesses: bool = True,
             per_kind: int | None = None, run_dir: Path | None = None) -> dict:
    """Build and run every case (derived files go to a cache under `work`); return the summary."""
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dtn-fuzz-")))
        stack.enter_context(_env(DTN_CACHE_DIR=str(work / "cache"), DTN_QUIET="1"))
        t0 = time.perf_counter()
        cases = build_cases(seed, work, scale, per_kind)
        runner = Runner(work, seed, run_dir)
        results = [r for case in cases for r in runner.run(case)]
        sub = subprocess_checks(cases, runner) if subprocesses else []
        return summarize(results, cases, time.perf_counter() - t0, seed, scale, sub)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of random cases per kind")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-subprocess", action="store_true", help="skip the few real-process checks")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    summary = run_fuzz(args.seed, args.scale, subprocesses=not args.no_subprocess)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    t = summary["totals"]
    print(f"{summary['cases']} cases, {summary['runs']} runs in {summary['seconds']} s: "
          + ", ".join(f"{k} {t[k]}" for k in OUTCOMES) + f" -> {args.out}")
    for c in summary["crashes"][:20]:
        print(f"CRASH {c['kind']} ({c['note']}): {c['message']}")
    for c in summary["vague_errors"][:20]:
        print(f"VAGUE {c['kind']} ({c['note']}): {c['message']}")


if __name__ == "__main__":
    main()
