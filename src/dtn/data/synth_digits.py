"""synth-digits: procedural SVHN-like house-number crops, the default offline source domain.

Each picture is a centred label digit filling most of the height, with the neighbouring digits
of the same "house number" cut off at the left and right edges (sometimes none), drawn in one of
many fonts on a coloured, shaded, textured background, then rotated, sheared, scaled, blurred,
noised and sometimes JPEG-compressed. Diversity matters more than beauty: a classifier trained
only on these pictures should still be usable on real SVHN crops.

    images, labels = generate(1000, seed=0)      # uint8 (1000, 32, 32, 3), int64 (1000,)
    split = dtn.data.load("synth-digits", "train")

Determinism: the same (n, seed, size) gives the same bytes whatever `workers` is, because the
work is cut into fixed CHUNK-sized pieces, each drawing from its own stream
SeedSequence(seed, spawn_key=(chunk,)); and generate(n) is a prefix of generate(m > n), so a
small DTN_SYNTH_*_N split is the start of the full one. The pictures also depend on the fonts
this machine has (matplotlib's bundled TTFs plus `findSystemFonts()`) and on Pillow's JPEG
codec. By default only matplotlib's bundled TTFs (the same on every machine with the same
matplotlib) and the procedural stroke fonts are used, so the pictures do not change when a package
such as chromium installs more system fonts; DTN_SYNTH_SYSTEM_FONTS=1 adds the system's fonts. The
cache name holds a digest of the font names, so a different font set never reuses stale pictures.
Bump GENERATOR_VERSION whenever the pictures change.

Splits: "train" (seed 0) and "test" (seed 1), generated once and cached as .npy under
`cache_root()/synth-digits/`. Their sizes default to 100,000 and 26,032 (SVHN's test size) and
can be overridden with the environment variables DTN_SYNTH_TRAIN_N and DTN_SYNTH_TEST_N
(tests use small sizes this way).

Parallel generation uses spawned worker processes, which import the caller's main script: a
script that loads this dataset must keep its top-level code under `if __name__ == "__main__":`
(the `dtn` command does).

Per-process state: `_glyph_bank` and `font_paths` are functools caches (rendered glyph masks and
the font list), built once per process (each pool worker builds its own); nothing else is global.
"""
from __future__ import annotations

import functools
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from ..errors import DataError
from ..progress import quiet
from .base import DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy
from .parallel import chunk_rng, default_workers as _default_workers, run_chunks, size_from_env

NAME = "synth-digits"
#: Bump whenever the pictures for a given (n, seed, size) change; it is part of the cache name.
GENERATOR_VERSION = 3
#: Pictures per independently seeded chunk. Changing it changes the pictures (bump the version).
CHUNK = 256
SPLIT_SEEDS = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 100_000, "test": 26_032}
SIZE_ENV = {"train": "DTN_SYNTH_TRAIN_N", "test": "DTN_SYNTH_TEST_N"}
CLASS_NAMES = tuple(str(i) for i in range(10))

GLYPH_H = 64          # height of every cached glyph mask, pixels
_SUPERSAMPLE = 2      # glyph layers are drawn at 2x and box-downsampled: cheap anti-aliasing
_PARALLEL_MIN = 2 * CHUNK
_PROGRESS_MIN = 10_000


# ----------------------------------------------------------------------------------------------
# Fonts and glyph masks
# ----------------------------------------------------------------------------------------------

SYSTEM_FONTS_ENV = "DTN_SYNTH_SYSTEM_FONTS"


@functools.cache
def font_paths() -> tuple[str, ...]:
    """Candidate TTFs: matplotlib's bundled fonts, plus the system's when DTN_SYNTH_SYSTEM_FONTS=1,
    sorted for stability. System fonts are opt-in because they differ between machines."""
    import matplotlib
    from matplotlib import font_manager

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = {str(p) for p in bundled.glob("*.ttf")}
    if os.environ.get(SYSTEM_FONTS_ENV, "") not in ("", "0"):
        paths.update(font_manager.findSystemFonts())
    return tuple(sorted(paths, key=lambda p: (Path(p).name, p)))


def _ink_crop(mask: np.ndarray) -> np.ndarray | None:
    """Crop a glyph mask to its ink bounding box (None when there is no ink)."""
    rows, cols = np.nonzero(mask > 32)
    if len(rows) == 0:
        return None
    return mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _to_height(mask: np.ndarray, height: int = GLYPH_H) -> np.ndarray:
    """Resize an ink-cropped mask to a fixed height, keeping its aspect ratio."""
    h, w = mask.shape
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.LANCZOS))


def _render_font(path: str) -> tuple[str, list[np.ndarray]] | None:
    """Render digits 0-9 of one font as ink-cropped masks; None if it fails or lacks digits."""
    try:
        font = ImageFont.truetype(path, 96)
        name = " ".join(font.getname())
        crops = []
        for ch in "0123456789":
            left, top, right, bottom = font.getbbox(ch)
            canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
            ImageDraw.Draw(canvas).text((4 - left, 4 - top), ch, font=font, fill=255)
            crops.append(_ink_crop(np.asarray(canvas)))
    except Exception:
        return None
    if any(c is None for c in crops) or not _looks_like_digits(crops):
        return None
    return name, [_to_height(c) for c in crops]


def _looks_like_digits(crops: list[np.ndarray]) -> bool:
    """Reject symbol fonts, old-style figures and fonts drawing one box for every missing glyph."""
    heights = np.array([c.shape[0] for c in crops], float)
    if heights.max() > 1.2 * heights.min():
        return False  # old-style figures or symbols: digits of very different heights
    widths = np.array([c.shape[1] for c in crops], float)
    if np.any(widths > 1.3 * heights):
        return False  # wider than tall: not a digit
    small = [np.asarray(Image.fromarray(c).resize((12, 16), Image.BILINEAR), float) for c in crops]
    for i in range(10):
        for j in range(i + 1, 10):
            if np.abs(small[i] - small[j]).mean() < 8:
                return False  # two digits look the same: a placeholder box
    return True


# Digit skeletons for the procedural stroke font, in a box 0.6 wide and 1 tall (y down, PIL angles).
def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> list:
    t = np.radians(np.linspace(a0, a1, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _flip(strokes: list) -> list:
    return [[(0.6 - x, 1 - y) for x, y in s] for s in strokes]


def _stroke_skeletons() -> list[list[list[tuple[float, float]]]]:
    """Polylines for 0-9: a hand-painted, rounded-stroke look that none of the bundled TTFs has."""
    six = [_arc(0.33, 0.5, 0.26, 0.48, 300, 180) + _arc(0.3, 0.7, 0.27, 0.28, 180, 540)]
    return [
        [_arc(0.3, 0.5, 0.28, 0.48, 0, 360, 40)],
        [[(0.1, 0.2), (0.34, 0.02), (0.34, 0.98)]],
        [_arc(0.3, 0.27, 0.26, 0.25, 200, 390) + [(0.03, 0.98), (0.58, 0.98)]],
        [_arc(0.3, 0.26, 0.25, 0.24, 200, 450), _arc(0.3, 0.73, 0.28, 0.25, 270, 520)],
        [[(0.46, 0.98), (0.46, 0.02), (0.02, 0.7), (0.6, 0.7)]],
        [[(0.55, 0.02), (0.1, 0.02), (0.07, 0.47)] + _arc(0.3, 0.68, 0.27, 0.3, 220, 520)],
        six,
        [[(0.02, 0.02), (0.58, 0.02), (0.22, 0.98)]],
        [_arc(0.3, 0.26, 0.23, 0.24, 0, 360), _arc(0.3, 0.73, 0.28, 0.26, 0, 360)],
        _flip(six),
    ]


def _alternate_skeletons() -> list[list[list[tuple[float, float]]]]:
    """Typographic alternates found on real house numbers and signs: a plain-stem 1, a looped 2,
    a flat-topped 3, an open 4, a crossed 7, and 6 and 9 with straight stems."""
    base = _stroke_skeletons()
    nine = [_arc(0.3, 0.28, 0.26, 0.26, 0, 360, 32), [(0.56, 0.28), (0.56, 0.98)]]
    return [
        base[0],
        [[(0.3, 0.02), (0.3, 0.98)]],
        [_arc(0.3, 0.27, 0.26, 0.25, 200, 390) + _arc(0.22, 0.83, 0.13, 0.13, 150, -270, 24) + [(0.58, 0.96)]],
        [[(0.04, 0.02), (0.56, 0.02), (0.26, 0.4)] + _arc(0.3, 0.68, 0.28, 0.3, 270, 500)],
        [[(0.36, 0.02), (0.03, 0.66), (0.6, 0.66)], [(0.46, 0.36), (0.46, 0.98)]],
        base[5],
        _flip(nine),
        [[(0.02, 0.02), (0.58, 0.02), (0.22, 0.98)], [(0.14, 0.5), (0.52, 0.5)]],
        base[8],
        nine,
    ]


_SEGMENTS = {  # seven-segment display: segment -> line in the 0.6 x 1 box
    "a": ((0.06, 0.03), (0.54, 0.03)), "b": ((0.56, 0.06), (0.56, 0.47)),
    "c": ((0.56, 0.53), (0.56, 0.94)), "d": ((0.06, 0.97), (0.54, 0.97)),
    "e": ((0.04, 0.53), (0.04, 0.94)), "f": ((0.04, 0.06), (0.04, 0.47)),
    "g": ((0.06, 0.5), (0.54, 0.5)),
}
_DIGIT_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


def _draw_strokes(strokes: list, width: float, round_caps: bool) -> np.ndarray:
    """Draw polylines at 4x and downsample, so the procedural glyphs are anti-aliased."""
    scale = 4 * GLYPH_H
    pad = width * scale
    img = Image.new("L", (int(0.6 * scale + 2 * pad) + 1, int(scale + 2 * pad) + 1), 0)
    draw = ImageDraw.Draw(img)
    w = max(1, round(width * scale))
    for stroke in strokes:
        pts = [(pad + x * scale, pad + y * scale) for x, y in stroke]
        draw.line(pts, fill=255, width=w, joint="curve")
        if round_caps:
            for x, y in (pts[0], pts[-1]):
                draw.ellipse((x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)
    return _to_height(_ink_crop(np.asarray(img)))


def _procedural_fonts() -> list[tuple[str, list[np.ndarray]]]:
    """Stroke-font and seven-segment digits at a few weights: shapes no system font provides."""
    skeletons = _stroke_skeletons()
    fonts = [(f"stroke-{w}", [_draw_strokes(s, w, True) for s in skeletons]) for w in (0.07, 0.12, 0.18)]
    alternates = _alternate_skeletons()
    fonts += [(f"stroke-alt-{w}", [_draw_strokes(s, w, True) for s in alternates]) for w in (0.07, 0.12, 0.18)]
    segs = [[_SEGMENTS[c] for c in d] for d in _DIGIT_SEGMENTS]
    fonts += [(f"segment-{w}", [_draw_strokes(s, w, False) for s in segs]) for w in (0.09, 0.15)]
    return fonts


@functools.lru_cache(maxsize=2)
def _glyph_bank(paths: tuple[str, ...]) -> tuple[tuple[str, tuple[np.ndarray, ...]], ...]:
    """(font name, 10 uint8 masks of height GLYPH_H) for every usable font, deduplicated by name.

    Built once per process and cached: rendering is the slow part, composing a scene is cheap."""
    fonts: dict[str, list[np.ndarray]] = {}
    for path in paths:
        rendered = _render_font(path)
        if rendered is not None and rendered[0] not in fonts:
            fonts[rendered[0]] = rendered[1]
    for name, masks in _procedural_fonts():
        fonts[name] = masks
    return tuple((name, tuple(masks)) for name, masks in sorted(fonts.items()))


def font_names() -> list[str]:
    """Names of the fonts generate() draws from on this machine (procedural ones included)."""
    return [name for name, _ in _glyph_bank(font_paths())]


def fonts_digest() -> str:
    """8 hex digits naming the font set: part of the cache name, so another font set regenerates."""
    import hashlib
    return hashlib.md5("\n".join(font_names()).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------------
# Scene parameters: every random choice of a chunk, drawn up front as arrays
# ----------------------------------------------------------------------------------------------

@dataclass
class _Scene:
    labels: np.ndarray       # (B,) label digit
    font: np.ndarray         # (B,) index into the glyph bank
    neighbours: np.ndarray   # (B, 4) digits at positions -2, -1, +1, +2
    present: np.ndarray      # (B, 4) whether each neighbour is drawn
    gap: np.ndarray          # (B,) spacing between digits, in glyph heights
    height: np.ndarray       # (B,) digit height as a fraction of the picture
    aspect: np.ndarray       # (B,) horizontal stretch: condensed < 1 < extended
    angle: np.ndarray        # (B,) rotation, radians
    shear: np.ndarray        # (B,) italic slant
    shift: np.ndarray        # (B, 2) translation, fraction of the picture
    weight: np.ndarray       # (B,) emboldening threshold (lower = bolder), NaN = unchanged
    outline: np.ndarray      # (B,) outline width in canvas pixels, 0 = none
    shadow: np.ndarray       # (B, 2) drop-shadow offset in final pixels, (0, 0) = none


def _draw_scene(rng: np.random.Generator, n: int, n_fonts: int) -> _Scene:
    """Layout and geometry of n pictures."""
    shadow = rng.integers(-2, 3, (n, 2)) * (rng.random((n, 1)) < 0.12)
    return _Scene(
        labels=rng.integers(0, 10, n),
        font=rng.integers(0, n_fonts, n),
        neighbours=rng.integers(0, 10, (n, 4)),
        present=_neighbour_presence(rng, n),
        gap=rng.uniform(0.03, 0.4, n),
        height=np.clip(rng.normal(0.72, 0.1, n), 0.5, 0.95),
        aspect=np.exp(rng.uniform(np.log(0.7), np.log(1.35), n)),
        angle=np.radians(np.clip(rng.normal(0, 7, n), -20, 20)),
        shear=np.clip(rng.normal(0, 0.12, n), -0.35, 0.35),
        shift=np.clip(rng.normal(0, [0.05, 0.04], (n, 2)), -0.12, 0.12),
        weight=np.where(rng.random(n) < 0.35, rng.uniform(0.2, 0.45, n), np.nan),
        outline=np.where(rng.random(n) < 0.1, rng.choice([3, 5], n), 0),
        shadow=shadow,
    )


def _neighbour_presence(rng: np.random.Generator, n: int) -> np.ndarray:
    """Which neighbours exist: none (house numbers of one digit) to both sides, outer ones rarer."""
    inner = rng.random((n, 2)) < 0.72
    outer = inner & (rng.random((n, 2)) < 0.6)
    return np.stack([outer[:, 0], inner[:, 0], inner[:, 1], outer[:, 1]], axis=1)


# ----------------------------------------------------------------------------------------------
# Per-picture glyph layer: one strip of digits, one affine transform
# ----------------------------------------------------------------------------------------------

def _digit_strip(glyphs: tuple[np.ndarray, ...], scene: _Scene, i: int) -> tuple[np.ndarray, float]:
    """Lay the digits of picture i side by side; returns the strip and the label digit's centre x."""
    digits = [scene.neighbours[i, 0], scene.neighbours[i, 1], scene.labels[i],
              scene.neighbours[i, 2], scene.neighbours[i, 3]]
    keep = [scene.present[i, 0], scene.present[i, 1], True, scene.present[i, 2], scene.present[i, 3]]
    gap = int(scene.gap[i] * GLYPH_H)
    parts, centre, x = [], 0.0, 0
    for slot, (digit, kept) in enumerate(zip(digits, keep)):
        if not kept:
            continue
        g = glyphs[digit]
        if parts:
            parts.append(np.zeros((GLYPH_H, gap), np.uint8))
            x += gap
        if slot == 2:
            centre = x + g.shape[1] / 2
        parts.append(g)
        x += g.shape[1]
    return np.concatenate(parts, axis=1), centre


def _affine(scene: _Scene, i: int, centre_x: float, canvas: int) -> tuple[float, ...]:
    """PIL AFFINE coefficients mapping canvas pixels back to strip pixels.

    Forward: strip -> scale (sx, sy) -> italic shear -> rotation -> canvas centre + shift; its
    inverse is written out by hand (np.linalg.inv cost more than the whole transform)."""
    sy = float(scene.height[i]) * canvas / GLYPH_H
    sx = sy * float(scene.aspect[i])
    c, s, k = math.cos(scene.angle[i]), math.sin(scene.angle[i]), float(scene.shear[i])
    a, b = (c - k * s) / sx, (s + k * c) / sx
    d, e = -s / sy, c / sy
    qx, qy = canvas * (0.5 + float(scene.shift[i, 0])), canvas * (0.5 + float(scene.shift[i, 1]))
    return (a, b, centre_x - (a * qx + b * qy), d, e, GLYPH_H / 2 - (d * qx + e * qy))


def _glyph_layers(bank, scene: _Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digit, outline and shadow coverage (n, size, size, 1) in [0, 1].

    Drawn at _SUPERSAMPLE x the final size and box-reduced: the glyph edges are the only thing
    that needs anti-aliasing, so the rest of the scene is composed at the final size."""
    n, canvas = len(scene.labels), size * _SUPERSAMPLE
    layers = np.zeros((3, n, size, size), np.uint8)
    for i in range(n):
        strip, centre = _digit_strip(bank[scene.font[i]][1], scene, i)
        mask = Image.fromarray(strip).transform((canvas, canvas), Image.AFFINE,
                                                _affine(scene, i, centre, canvas), Image.BILINEAR)
        if not np.isnan(scene.weight[i]):
            mask = _embolden(mask, scene.weight[i], scene.height[i] * canvas)
        layers[0, i] = np.asarray(mask.reduce(_SUPERSAMPLE))
        if scene.outline[i]:
            outline = mask.filter(ImageFilter.MaxFilter(int(scene.outline[i])))
            layers[1, i] = np.asarray(outline.reduce(_SUPERSAMPLE))
        dx, dy = scene.shadow[i]
        if dx or dy:
            layers[2, i] = _shifted(layers[0, i], int(dx), int(dy))
    cover = layers[..., None].astype(np.float32) * (1 / 255)
    return cover[0], cover[1], cover[2]


def _embolden(mask: Image.Image, threshold: float, digit_px: float) -> Image.Image:
    """Make strokes bolder by blurring and re-thresholding below one half (lower = bolder).

    Only ever adds ink: thinning erased the hairlines of light fonts (a cmr10 4 became a 1)."""
    level = threshold * 255
    lut = np.clip((np.arange(256) - level) * (2.5 * 255 / level) + 128, 0, 255).astype(np.uint8)
    bold = mask.filter(ImageFilter.GaussianBlur(float(0.04 * digit_px))).point(lut.tolist())
    return ImageChops.lighter(mask, bold)


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The mask moved by (dx, dy) pixels, zero-filled (np.roll would wrap around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


# ----------------------------------------------------------------------------------------------
# Colours and backgrounds, vectorised over the chunk
# ----------------------------------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (..., 3)."""
    k = (np.array([5, 3, 1], np.float32) + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Colours from grey and muted to saturated, at every brightness; hues lean to the warm
    paints, bricks and brass of house fronts (a uniform hue wheel is mostly blue-magenta)."""
    hue = np.where(rng.random(n) < 0.4, rng.uniform(-0.03, 0.17, n) % 1, rng.random(n))
    sat = np.where(rng.random(n) < 0.6, rng.uniform(0, 0.25, n), rng.uniform(0.25, 0.9, n))
    return _hsv_to_rgb(hue, sat, rng.uniform(0.03, 1, n)).astype(np.float32)


def _colour_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground/background colours: usually clear contrast, sometimes poor (as in real photos)."""
    bg, fg = _random_colours(rng, n), _random_colours(rng, n)
    need = np.where(rng.random(n) < 0.9, 0.3, 0.18)
    for _ in range(20):  # rejection sampling: deterministic given the stream
        bad = np.abs((fg - bg) @ _LUMA) < need
        if not bad.any():
            break
        fg[bad] = _random_colours(rng, int(bad.sum()))
    still = np.abs((fg - bg) @ _LUMA) < need
    fg[still] = np.where((bg[still] @ _LUMA > 0.5)[:, None], 0.05, 0.95)
    return fg, bg


def _clutter_colours(rng: np.random.Generator, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Colours for walls and stripes that stay apart from the ink: where a stripe the colour of
    the digit crossed it, a 4 read as a 1 and a 7 vanished into its own stroke."""
    colours = _random_colours(rng, len(fg))
    close = np.abs((colours - fg) @ _LUMA) < 0.2
    away = np.where((bg @ _LUMA >= fg @ _LUMA)[:, None], 0.3, -0.3).astype(np.float32)
    colours[close] = np.clip(bg[close] + away[close], 0, 1)
    return colours


def _upsample_matrix(coarse: int, fine: int) -> np.ndarray:
    """Linear-interpolation matrix (fine, coarse): smooth fields from a few random values."""
    pos = np.linspace(0, coarse - 1, fine)
    lo = np.minimum(pos.astype(np.int64), coarse - 2)
    m = np.zeros((fine, coarse), np.float32)
    m[np.arange(fine), lo] = 1 - (pos - lo)
    m[np.arange(fine), lo + 1] = pos - lo
    return m


def _smooth_noise(rng: np.random.Generator, n: int, size: int, coarse: int, channels: int) -> np.ndarray:
    """(n, size, size, channels) noise that varies over about size/coarse pixels.

    Upsampled as a stack of tiny matrix products U @ G @ U.T, one per field: each is far below
    BLAS's threading threshold, so pool workers do not fight over cores (one big einsum/matmul
    was 20x slower on a busy 2-core machine)."""
    u = _upsample_matrix(coarse, size)
    grid = rng.standard_normal((n * channels, coarse, coarse), dtype=np.float32)
    return (u @ grid @ u.T).reshape(n, channels, size, size).transpose(0, 2, 3, 1)


def _projection(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size, 1) signed distance in pixels from the centre along a random direction."""
    t = np.arange(size, dtype=np.float32) - (size - 1) / 2
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None, None]
    return t[None, None, :, None] * np.cos(theta) + t[None, :, None, None] * np.sin(theta)


def _paint(img: np.ndarray, which: np.ndarray, colour: np.ndarray, cover: np.ndarray) -> None:
    """In place: blend `colour` over the pictures `which` with coverage `cover` (both indexed by which)."""
    idx = np.nonzero(which)[0]
    if len(idx):
        img[idx] += (colour[idx] - img[idx]) * cover[idx]


def _per_picture(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """One uniform value per picture, shaped (n, 1, 1, 1) to broadcast over (n, y, x, c)."""
    return rng.uniform(low, high, (n, 1, 1, 1)).astype(np.float32)


def _background(rng: np.random.Generator, fg: np.ndarray, bg: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size, 3) background: gradient, plaque edge, stripe, blotches and texture."""
    n = len(bg)
    img = bg[:, None, None, :] + _per_picture(rng, -0.7, 0.7, n) / size * _projection(rng, n, size)
    # A plaque edge: beyond a line near the border the wall has another colour (1-px soft edge).
    beyond = _projection(rng, n, size) - _per_picture(rng, 0.3, 0.5, n) * size
    wall = _clutter_colours(rng, fg, bg)[:, None, None, :]
    _paint(img, rng.random(n) < 0.3, wall, np.clip(beyond + 0.5, 0, 1))
    # A stripe (frame, brick joint, railing) anywhere, under the digits.
    dist = np.abs(_projection(rng, n, size) - _per_picture(rng, -0.45, 0.45, n) * size)
    half_width = _per_picture(rng, 0.3, 2.5, n) * size / 32
    stripe = _clutter_colours(rng, fg, bg)[:, None, None, :]
    _paint(img, rng.random(n) < 0.2, stripe, np.clip(half_width - dist + 0.5, 0, 1))
    # Blotches and fine texture.
    img += _per_picture(rng, 0, 0.12, n) * _smooth_noise(rng, n, size, 4, 3)
    texture = _per_picture(rng, 0, 0.06, n) * (rng.random((n, 1, 1, 1)) < 0.5)
    img += texture * _smooth_noise(rng, n, size, max(2, size // 3), 1)
    return img


def _compose(rng: np.random.Generator, layers, size: int) -> np.ndarray:
    """Paint shadow, outline and digits over the background; returns float (n, size, size, 3)."""
    digit, outline, shadow = layers
    n = len(digit)
    fg, bg = _colour_pairs(rng, n)
    img = _background(rng, fg, bg, size)
    shadow_col = np.where(rng.random((n, 1)) < 0.7, bg * 0.35, np.minimum(bg * 1.6 + 0.2, 1))
    _paint(img, shadow.any(axis=(1, 2, 3)), shadow_col[:, None, None, :], 0.8 * shadow)
    outline_col = np.where((fg @ _LUMA > 0.5)[:, None], 0.05, 0.95) * rng.uniform(0.6, 1, (n, 1))
    _paint(img, outline.any(axis=(1, 2, 3)), outline_col.astype(np.float32)[:, None, None, :], outline)
    ink = fg[:, None, None, :] + _per_picture(rng, -0.4, 0.4, n) / size * _projection(rng, n, size)
    img += (ink - img) * digit
    # Uneven lighting over the whole scene.
    img *= 1 + _per_picture(rng, 0, 0.3, n) * _smooth_noise(rng, n, size, 3, 1)
    return img


# ----------------------------------------------------------------------------------------------
# Camera: blur, noise, colour response, resolution, JPEG
# ----------------------------------------------------------------------------------------------

def _blur(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Gaussian blur of a random strength per picture (none for about half), separable, batched."""
    n = len(img)
    sigma = np.where(rng.random(n) < 0.5, 0.05, rng.uniform(0.3, 1.2, n))
    taps = np.arange(-3, 4)
    w = np.exp(-taps[None, :] ** 2 / (2 * sigma[:, None] ** 2))
    w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)[:, :, None, None, None]
    h = img.shape[1]
    padded = np.pad(img, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    rows = sum(w[:, k] * padded[:, k:k + h, :, :] for k in range(7))
    return sum(w[:, k] * rows[:, :, k:k + h, :] for k in range(7))


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Contrast, gamma, colour cast and sensor noise; returns uint8."""
    n = len(img)
    mean = img.mean(axis=(1, 2, 3), keepdims=True)
    img = mean + (img - mean) * _per_picture(rng, 0.7, 1.2, n)
    img *= rng.uniform(0.9, 1.1, (n, 1, 1, 3)).astype(np.float32)
    img = np.clip(img, 0, 1) ** np.exp(rng.normal(0, 0.2, (n, 1, 1, 1))).astype(np.float32)
    sigma = np.where(rng.random(n) < 0.3, 0, rng.uniform(0.005, 0.05, n)).astype(np.float32)
    img += sigma[:, None, None, None] * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _degrade(rng: np.random.Generator, images: np.ndarray) -> None:
    """In place: some pictures come from a smaller original, some went through JPEG."""
    n, size = len(images), images.shape[1]
    lowres = np.where(rng.random(n) < 0.2, rng.integers(max(8, size // 3), size, n), 0)
    quality = np.where(rng.random(n) < 0.4, rng.integers(15, 90, n), 0)
    for i in np.nonzero(lowres | quality)[0]:
        pic = Image.fromarray(images[i])
        if lowres[i]:
            pic = pic.resize((lowres[i], lowres[i]), Image.BILINEAR).resize((size, size), Image.BILINEAR)
        if quality[i]:
            buf = io.BytesIO()
            pic.save(buf, format="JPEG", quality=int(quality[i]))
            pic = Image.open(buf)
        images[i] = np.asarray(pic.convert("RGB"))


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def _render_chunk(job: tuple[int, int, int, int, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` pictures of one chunk, made from the chunk's own seed stream.

    A chunk is always drawn at full CHUNK length and then cut, so the pictures do not depend on
    where n ends: generate(n) is a prefix of generate(m) for m > n. Runs in a worker or in-process."""
    seed, chunk, n, size, paths = job
    rng = chunk_rng(seed, chunk)
    bank = _glyph_bank(paths)
    scene = _draw_scene(rng, CHUNK, len(bank))
    images = _camera(rng, _blur(rng, _compose(rng, _glyph_layers(bank, scene, size), size)))
    _degrade(rng, images)
    return images[:n], scene.labels[:n].astype(np.int64)


def generate(n: int, seed: int, size: int = 32, workers: int | None = None,
             progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n pictures (uint8 (n, size, size, 3)) and their labels (int64 (n,), 0-9).

    Same (n, seed, size) -> same bytes for any `workers` (None: all cores; large n only).
    `progress` None shows a tqdm bar on stderr for large n unless stderr is not a terminal
    or DTN_QUIET is set (dtn.progress.quiet)."""
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    paths = font_paths()
    jobs = [(seed, c, min(CHUNK, n - c * CHUNK), size, paths) for c in range(-(-n // CHUNK))]
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    workers = min(workers or _default_workers(), len(jobs))
    if progress is None:
        progress = n >= _PROGRESS_MIN and not quiet()
    with tqdm(total=n, unit="img", desc=f"{NAME} seed {seed}", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for c, (imgs, labs) in enumerate(_run_jobs(jobs, workers if n >= _PARALLEL_MIN else 1)):
            images[c * CHUNK:c * CHUNK + len(imgs)] = imgs
            labels[c * CHUNK:c * CHUNK + len(labs)] = labs
            bar.update(len(imgs))
    return images, labels


def _run_jobs(jobs: list, workers: int):
    """Chunk results in order, in this process or a spawn pool (parallel.run_chunks)."""
    yield from run_chunks(_render_chunk, jobs, workers)


# ----------------------------------------------------------------------------------------------
# Registry entry: cached splits
# ----------------------------------------------------------------------------------------------

def split_size(split: str) -> int:
    """Number of pictures in a split: $DTN_SYNTH_{TRAIN,TEST}_N, else the default."""
    return size_from_env(SIZE_ENV[split], DEFAULT_SIZES[split], "images")


def cache_paths(split: str) -> tuple[Path, Path]:
    """(images, labels) .npy paths of a split's cache at its current size."""
    n, seed = split_size(split), SPLIT_SEEDS[split]
    stem = cache_root() / NAME / f"{split}-v{GENERATOR_VERSION}-f{fonts_digest()}-n{n}-s{seed}"
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + "-labels.npy")


def _load(split: str, root: Path) -> Split:
    """Read the cached split, generating and caching it first when absent (root is unused)."""
    images_path, labels_path = cache_paths(split)
    n, seed = split_size(split), SPLIT_SEEDS[split]
    if not (images_path.is_file() and labels_path.is_file()):
        images, labels = generate(n, seed)
        atomic_save_npy(images_path, images)
        atomic_save_npy(labels_path, labels)
    images, labels = load_npy(images_path), load_npy(labels_path)
    if images.shape != (n, 32, 32, 3) or labels.shape != (n,):
        raise DataError(f"{images_path}: cache holds images {images.shape} and labels {labels.shape}, "
                        f"expected {n} of 32x32x3; delete it to rebuild")
    return Split(images, np.asarray(labels, np.int64), NAME, split, CLASS_NAMES,
                 extras={"seed": seed, "generator_version": GENERATOR_VERSION})


def _check(root: Path) -> list[FileCheck]:
    """The cache files of both splits at their current sizes (no checksums: they are generated)."""
    return [FileCheck(p, p.is_file(), None) for split in SPLIT_SEEDS for p in cache_paths(split)]


SOURCE = DatasetSource(
    name=NAME,
    description=(f"procedural SVHN-like house-number crops, 32x32 RGB, "
                 f"{DEFAULT_SIZES['train']:,} train / {DEFAULT_SIZES['test']:,} test (generated)"),
    splits=tuple(SPLIT_SEEDS),
    load=_load,
    check=_check,
    fetch=None,
    licence="generated by dtn; glyphs from DejaVu (Bitstream Vera licence), STIX (OFL), BaKoMa CM fonts",
    how_to_get=("generated and cached on first use, no download; sizes via "
                "DTN_SYNTH_TRAIN_N / DTN_SYNTH_TEST_N"),
    generated=True,
)
