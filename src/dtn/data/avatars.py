"""avatars: parametric cartoon faces, the target domain of the face -> avatar experiment.

The paper drew its emoji with Bitmoji's engine, which is not reachable; DiceBear is its open
equivalent: `dicebear-core` renders a style definition from `dicebear-styles` and explicit options
to SVG, and `resvg-py` rasterises it, on a white background, 96x96 RGB by default.

Every avatar is drawn from an *option vector*: one int per category of `vocabulary(styles)` (which
style; for each component of that style which variant, 0 = none; for each colour of that style
which palette entry), -1 where a category belongs to another style. The vector is kept beside the
image, so a parameter estimator can learn image -> options, and `render_svg(options)` redraws the
avatar exactly (the same pixels: a transferred face can become a real, editable avatar).

    images, options = generate(1000, seed=0)        # uint8 (1000, 96, 96, 3), int16 (1000, K)
    svg = render_svg(options[0]); png = render_png(options[0])
    describe(options[0])                            # {"style": "adventurer", "adventurer.hair": "long03", ...}
    split = dtn.data.load("avatars", "train")      # extras: options, vocabulary, styles

Sampling follows each style's own distribution (component probabilities, variant weights, uniform
palette entries, `notEqualTo` exclusions, `contrastTo` picks), but with dtn's seeded numpy streams
instead of DiceBear's seed string: DiceBear gets every choice explicitly, plus one fixed seed for
anything left (a style's built-in component offsets), so an avatar is a pure function of its vector.

Determinism: as synth-digits (data/parallel.py): fixed CHUNK-sized pieces, each from its own stream
SeedSequence(seed, spawn_key=(chunk,)); the bytes do not depend on `workers`, and generate(n) is a
prefix of generate(m > n). Bump GENERATOR_VERSION whenever the pictures for a vector change.

Splits: "train" (seed 0, 100,000) and "test" (seed 1, 10,000), sizes overridable with
DTN_AVATARS_TRAIN_N / DTN_AVATARS_TEST_N, styles with DTN_AVATARS_STYLES (comma-separated). Cached
under `cache_root()/avatars/` as .npy (images, options) named by generator version, styles, a digest
of the style definitions and renderer versions, size, n and seed, with the vocabulary as JSON beside
them. Avatars have no class labels (-1).

Licences: only styles whose `meta.license` is on ALLOWED_LICENCES are used (CC0, CC BY 4.0, MIT,
"free for personal and commercial use"); CC BY styles need attribution, which `attribution(styles)`
returns for reports and model cards (the registry's licence field holds it too).

Per-process state: `_definition`, `_style` and `vocabulary` are functools caches; nothing else is global.
Needs `pip install "dtn[faces]"` (dicebear-core, dicebear-styles, resvg-py).
"""
from __future__ import annotations

import functools
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from ..progress import quiet
from .base import DatasetSource, FileCheck, Split, atomic_save_npy, cache_root, load_npy
from .parallel import chunk_rng, chunk_sizes, default_workers, run_chunks, size_from_env

NAME = "avatars"
#: Bump whenever the pictures (or options) for a given (styles, size, n, seed) change: part of the cache name.
GENERATOR_VERSION = 1
#: Avatars per independently seeded chunk; small because one avatar costs milliseconds to render.
CHUNK = 64
DEFAULT_STYLES = ("adventurer",)
DEFAULT_SIZE = 96
SPLIT_SEEDS = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 100_000, "test": 10_000}
SIZE_ENV = {"train": "DTN_AVATARS_TRAIN_N", "test": "DTN_AVATARS_TEST_N"}
STYLES_ENV = "DTN_AVATARS_STYLES"
#: The DiceBear seed string for whatever a vector does not choose (constant, so rendering is a pure function).
DICEBEAR_SEED = "dtn"
BACKGROUND = "#ffffff"
INSTALL_HINT = 'pip install "dtn[faces]"'
#: Licence names (case and a final full stop ignored) a style may carry -> whether credit is required.
ALLOWED_LICENCES = {
    "cc0 1.0": False,
    "cc by 4.0": True,
    "mit": True,
    "free for personal and commercial use": True,
}
_PARALLEL_MIN = 2 * CHUNK
_PROGRESS_MIN = 2_000


# ----------------------------------------------------------------------------------------------
# Packages, style definitions, licences
# ----------------------------------------------------------------------------------------------

def _require() -> None:
    """Fail with one line naming the extra when a package of the faces extra is missing."""
    for module, package in (("dicebear", "dicebear-core"), ("dicebear_styles", "dicebear-styles"),
                            ("resvg_py", "resvg-py")):
        try:
            __import__(module)
        except ModuleNotFoundError:
            raise DataError(f"the avatars dataset needs {package}, which is not installed: {INSTALL_HINT}") from None


def available_styles() -> list[str]:
    """Every style definition dicebear-styles ships (allowed or not)."""
    _require()
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("dicebear_styles").iterdir() if p.name.endswith(".json"))


@functools.cache
def _definition(style: str) -> dict:
    """The raw JSON definition of one style (read once per process)."""
    _require()
    from importlib import resources

    path = resources.files("dicebear_styles").joinpath(f"{style}.json")
    if not path.is_file():
        raise DataError(f"unknown avatar style {style!r}; styles: {', '.join(available_styles())}")
    return json.loads(path.read_text(encoding="utf-8"))


def definitions_digest(styles: Sequence[str]) -> str:
    """8 hex digits naming the style definitions and renderer versions: part of the cache name, so a
    new dicebear-styles / dicebear-core / resvg-py release never reuses pictures it would draw differently."""
    import hashlib
    from importlib.metadata import version

    h = hashlib.md5()
    for style in styles:
        h.update(json.dumps(_definition(style), sort_keys=True).encode())
    for package in ("dicebear-core", "resvg-py"):
        h.update(f"{package}={version(package)}".encode())
    return h.hexdigest()[:8]


@functools.cache
def _style(style: str):
    """The validated dicebear Style of one style (built once per process: validation is slow)."""
    from dicebear import Style

    return Style(_definition(style))


@dataclass(frozen=True)
class StyleLicence:
    """What a style's `meta.license` says, and the credit line it needs."""

    style: str
    licence: str          # e.g. "CC BY 4.0"
    url: str
    attribution: str      # the style's own credit text ("Remix of ... by ..., licensed under ...")
    allowed: bool
    needs_attribution: bool


def style_licence(style: str) -> StyleLicence:
    meta = _definition(style).get("meta", {})
    lic = meta.get("license", {})
    name = str(lic.get("name") or "").strip()
    key = name.rstrip(".").strip().casefold()
    creator = (meta.get("creator") or {}).get("name") or "unknown"
    text = lic.get("text") or f"{style} by {creator}, licensed under {name or 'an unstated licence'}"
    return StyleLicence(style, name, str(lic.get("url") or ""), text, key in ALLOWED_LICENCES,
                        ALLOWED_LICENCES.get(key, True))


def check_licences(styles: Sequence[str]) -> list[StyleLicence]:
    """The licences of `styles`, refusing any style whose licence is not on the allow-list."""
    if not styles:
        raise DataError("the avatars dataset needs at least one style")
    licences = [style_licence(s) for s in styles]
    for lic in licences:
        if not lic.allowed:
            raise DataError(f"avatar style {lic.style!r} is licensed {lic.licence or 'without a licence'!r}, "
                            f"which is not on the allow-list ({', '.join(sorted(ALLOWED_LICENCES))}); pick another style")
    return licences


def allowed_styles() -> list[str]:
    """Styles whose licence is on the allow-list."""
    return [s for s in available_styles() if style_licence(s).allowed]


def attribution(styles: Sequence[str] | None = None) -> str:
    """The credit line(s) that reports and model cards must carry for avatars drawn from `styles`."""
    credits = [lic.attribution + ("" if lic.needs_attribution else " (no attribution required)")
               for lic in check_licences(styles or current_styles())]
    return "Avatars drawn with DiceBear (MIT) from: " + "; ".join(credits)


# ----------------------------------------------------------------------------------------------
# Option vectors: vocabulary, sampling, encoding
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Category:
    """One entry of an option vector: which of `values` was drawn."""

    name: str                   # "style", "adventurer.hair", "adventurer.hairColor"
    style: str                  # "" for the style category
    kind: str                   # "style" | "component" | "color"
    key: str                    # the component or colour name in the style definition
    values: tuple[str, ...]     # component: ("none", *variants); colour: palette; style: style names


@dataclass(frozen=True)
class Vocabulary:
    """The categories of an option vector for one tuple of styles (saved as JSON beside the cache)."""

    styles: tuple[str, ...]
    categories: tuple[Category, ...]

    def index(self, name: str) -> int:
        for i, c in enumerate(self.categories):
            if c.name == name:
                return i
        raise DataError(f"no avatar option category {name!r}; categories: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def to_json(self) -> dict:
        return {"generator_version": GENERATOR_VERSION, "styles": list(self.styles),
                "categories": [{"name": c.name, "style": c.style, "kind": c.kind, "key": c.key,
                                "values": list(c.values)} for c in self.categories]}


def _palette(values: Sequence[str]) -> tuple[str, ...]:
    """A colour palette as unique lowercase #rrggbb, in definition order."""
    from dicebear.utils.color import Color

    return tuple(dict.fromkeys(Color.to_hex(v).lower() for v in values))


@functools.cache
def vocabulary(styles: tuple[str, ...] = DEFAULT_STYLES) -> Vocabulary:
    """Categories: the style, then per style its components (aliases are not options: they follow
    their source) and its colours (the background is always white, so it is not an option)."""
    check_licences(styles)
    cats = [Category("style", "", "style", "style", tuple(styles))]
    for style in styles:
        definition = _definition(style)
        for key, comp in definition.get("components", {}).items():
            if "extends" not in comp:
                cats.append(Category(f"{style}.{key}", style, "component", key, ("none", *comp.get("variants", {}))))
        for key, colour in definition.get("colors", {}).items():
            if key != "background":
                cats.append(Category(f"{style}.{key}Color", style, "color", key, _palette(colour["values"])))
    return Vocabulary(tuple(styles), tuple(cats))


def _draw_component(rng: np.random.Generator, comp: dict) -> int:
    """0 (hidden) with the style's probability, else 1 + a variant drawn by the style's weights."""
    if rng.random() * 100 >= comp.get("probability", 100):
        return 0
    weights = np.array([float(v.get("weight", 1)) for v in comp.get("variants", {}).values()])
    if len(weights) == 0:
        return 0
    p = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
    return 1 + int(rng.choice(len(weights), p=p))


def _draw_colours(rng: np.random.Generator, style: str, vocab: Vocabulary) -> dict[str, str]:
    """{colour key: #rrggbb} for one style: uniform palette entries, never equal to a `notEqualTo`
    colour, and the highest-contrast entry where the style asks `contrastTo` (as DiceBear does)."""
    from dicebear.utils.color import Color

    colours = _definition(style).get("colors", {})
    chosen: dict[str, str] = {"background": BACKGROUND}
    resolving: set[str] = set()   # a notEqualTo cycle (a != b, b != a) constrains only the later pick

    def pick(key: str) -> str:
        if key not in chosen:
            spec = colours[key]
            resolving.add(key)
            banned = {pick(ref) for ref in spec.get("notEqualTo", [])
                      if (ref in colours or ref == "background") and ref not in resolving}
            palette = [c for c in _palette(spec["values"]) if c not in banned] or list(_palette(spec["values"]))
            ref = spec.get("contrastTo")
            if (ref in colours or ref == "background") and ref not in resolving:
                chosen[key] = Color.sort_by_contrast(palette, pick(ref))[0].lower()
            else:
                chosen[key] = palette[int(rng.integers(len(palette)))]
        return chosen[key]

    for cat in vocab.categories:
        if cat.style == style and cat.kind == "color":
            pick(cat.key)
    return chosen


def draw_options(rng: np.random.Generator, n: int, vocab: Vocabulary) -> np.ndarray:
    """n option vectors (int16 (n, K)), drawn one avatar after another from `rng`."""
    out = np.full((n, len(vocab.categories)), -1, np.int16)
    for i in range(n):
        style = vocab.styles[int(rng.integers(len(vocab.styles)))]
        out[i, 0] = vocab.styles.index(style)
        components = _definition(style).get("components", {})
        for j, cat in enumerate(vocab.categories):
            if cat.style == style and cat.kind == "component":
                out[i, j] = _draw_component(rng, components[cat.key])
        colours = _draw_colours(rng, style, vocab)
        for j, cat in enumerate(vocab.categories):
            if cat.style == style and cat.kind == "color":
                out[i, j] = cat.values.index(colours[cat.key])
    return out


def describe(options: Sequence[int], vocab: Vocabulary | None = None) -> dict[str, str]:
    """{category: value name} of one option vector (categories of other styles left out)."""
    vocab = vocab or vocabulary(current_styles())
    row = _checked_row(options, vocab)
    return {c.name: c.values[v] for c, v in zip(vocab.categories, row) if v >= 0}


def encode(named: Mapping[str, str], vocab: Vocabulary | None = None) -> np.ndarray:
    """The option vector of {category: value name} (inverse of describe; every category of the style needed)."""
    vocab = vocab or vocabulary(current_styles())
    style = named.get("style", vocab.styles[0])
    row = np.full(len(vocab.categories), -1, np.int16)
    for j, cat in enumerate(vocab.categories):
        if cat.kind != "style" and cat.style != style:
            continue
        value = style if cat.kind == "style" else named.get(cat.name)
        if value not in cat.values:
            raise DataError(f"avatar option {cat.name}: {value!r} is not one of {', '.join(cat.values)}")
        row[j] = cat.values.index(value)
    return row


def _checked_row(options: Sequence[int], vocab: Vocabulary) -> np.ndarray:
    row = np.asarray(options, dtype=np.int64).reshape(-1)
    if len(row) != len(vocab.categories):
        raise DataError(f"an avatar option vector has {len(vocab.categories)} entries for styles "
                        f"{', '.join(vocab.styles)}, got {len(row)}")
    for cat, v in zip(vocab.categories, row):
        if not -1 <= v < len(cat.values):
            raise DataError(f"avatar option {cat.name} = {v} is out of range 0..{len(cat.values) - 1}")
    return row


# ----------------------------------------------------------------------------------------------
# Rendering: option vector -> DiceBear options -> SVG -> PNG -> pixels
# ----------------------------------------------------------------------------------------------

def dicebear_options(options: Sequence[int], vocab: Vocabulary | None = None) -> tuple[str, dict]:
    """(style, DiceBear options) that draw exactly this vector: every choice explicit, one fixed seed."""
    vocab = vocab or vocabulary(current_styles())
    row = _checked_row(options, vocab)
    style = vocab.styles[int(row[0])]
    opts: dict = {"seed": DICEBEAR_SEED, "backgroundColor": [BACKGROUND]}
    for cat, v in zip(vocab.categories, row):
        if cat.style != style:
            continue
        if v < 0:
            raise DataError(f"avatar option {cat.name} is unset (-1) for an avatar of style {style}")
        if cat.kind == "component":
            opts[f"{cat.key}Probability"] = 0 if v == 0 else 100
            if v > 0:
                opts[f"{cat.key}Variant"] = cat.values[v]
        else:
            opts[f"{cat.key}Color"] = [cat.values[v]]
    return style, opts


def render_svg(options: Sequence[int], vocab: Vocabulary | None = None) -> str:
    """The avatar of an option vector as SVG markup (editable, scalable)."""
    from dicebear import Avatar

    style, opts = dicebear_options(options, vocab)
    return Avatar(_style(style), opts).to_string()


def render_png(options: Sequence[int], size: int = DEFAULT_SIZE, vocab: Vocabulary | None = None) -> bytes:
    """The avatar of an option vector as PNG bytes, size x size, on white."""
    return svg_to_png(render_svg(options, vocab), size)


def svg_to_png(svg: str, size: int) -> bytes:
    import resvg_py

    return bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background=BACKGROUND))


def render_image(options: Sequence[int], size: int = DEFAULT_SIZE, vocab: Vocabulary | None = None) -> np.ndarray:
    """The avatar of an option vector as uint8 (size, size, 3): what generate() stores."""
    from PIL import Image

    with Image.open(io.BytesIO(render_png(options, size, vocab))) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------

def _render_chunk(job: tuple[int, int, int, int, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The first n avatars of one chunk, from the chunk's own stream (avatars are drawn one after
    another, so the first n do not depend on where n ends). Runs in a worker or in-process."""
    seed, chunk, n, size, styles = job
    vocab = vocabulary(styles)
    options = draw_options(chunk_rng(seed, chunk), n, vocab)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, row in enumerate(options):
        images[i] = render_image(row, size, vocab)
    return images, options


def generate(n: int, seed: int, size: int = DEFAULT_SIZE, styles: Sequence[str] = DEFAULT_STYLES,
             workers: int | None = None, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n avatars (uint8 (n, size, size, 3)) and their option vectors (int16 (n, K), see vocabulary()).

    Same (n, seed, size, styles) -> same bytes for any `workers` (None: all cores; large n only)."""
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    styles = tuple(styles)
    vocab = vocabulary(styles)
    jobs = [(seed, c, count, size, styles) for c, count in enumerate(chunk_sizes(n, CHUNK))]
    images = np.empty((n, size, size, 3), np.uint8)
    options = np.empty((n, len(vocab.categories)), np.int16)
    workers = min(workers or default_workers(), max(1, len(jobs)))
    if progress is None:
        progress = n >= _PROGRESS_MIN and not quiet()
    with tqdm(total=n, unit="avatar", desc=f"{NAME} seed {seed}", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        for c, (imgs, opts) in enumerate(run_chunks(_render_chunk, jobs, workers if n >= _PARALLEL_MIN else 1)):
            images[c * CHUNK:c * CHUNK + len(imgs)] = imgs
            options[c * CHUNK:c * CHUNK + len(opts)] = opts
            bar.update(len(imgs))
    return images, options


# ----------------------------------------------------------------------------------------------
# Registry entry: cached splits
# ----------------------------------------------------------------------------------------------

def current_styles() -> tuple[str, ...]:
    """$DTN_AVATARS_STYLES (comma-separated), else DEFAULT_STYLES."""
    raw = os.environ.get(STYLES_ENV, "").strip()
    if not raw:
        return DEFAULT_STYLES
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def env_overrides() -> dict[str, str]:
    """The DTN_AVATARS_* variables that are set (split sizes, styles): what a result must record beside
    its numbers, since they change the avatars it was measured on."""
    return {k: os.environ[k] for k in (*SIZE_ENV.values(), STYLES_ENV) if k in os.environ}


def split_size(split: str) -> int:
    """Avatars in a split: $DTN_AVATARS_{TRAIN,TEST}_N, else the default."""
    return size_from_env(SIZE_ENV[split], DEFAULT_SIZES[split], "avatars")


def cache_paths(split: str, size: int, styles: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """(images .npy, options .npy, vocabulary .json) of a split at its current size."""
    n, seed, folder = split_size(split), SPLIT_SEEDS[split], cache_root() / NAME
    stem = f"{split}-v{GENERATOR_VERSION}-{'+'.join(styles)}-d{definitions_digest(styles)}-{size}px-n{n}-s{seed}"
    vocab = folder / f"vocabulary-v{GENERATOR_VERSION}-{'+'.join(styles)}-d{definitions_digest(styles)}.json"
    return folder / f"{stem}.npy", folder / f"{stem}-options.npy", vocab


def _write_json(path: Path, data: dict) -> None:
    """Write JSON next to its final name and rename it, like atomic_save_npy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class _Avatars:
    def __init__(self, size: int, styles: tuple[str, ...] | None) -> None:
        self.size = size
        self.fixed_styles = styles

    def styles(self) -> tuple[str, ...]:
        return self.fixed_styles or current_styles()

    def load(self, split: str, root: Path | None = None) -> Split:
        """Read the cached split, generating and caching it first when absent (root is unused)."""
        if split not in SPLIT_SEEDS:
            raise DataError(f"{NAME} has no split {split!r}; splits: {', '.join(SPLIT_SEEDS)}")
        styles = self.styles()
        vocab = vocabulary(styles)
        images_path, options_path, vocab_path = cache_paths(split, self.size, styles)
        n, seed = split_size(split), SPLIT_SEEDS[split]
        if not (images_path.is_file() and options_path.is_file()):
            images, options = generate(n, seed, self.size, styles)
            atomic_save_npy(images_path, images)
            atomic_save_npy(options_path, options)
        if not vocab_path.is_file():
            _write_json(vocab_path, vocab.to_json())
        images, options = load_npy(images_path), load_npy(options_path)
        if images.shape != (n, self.size, self.size, 3) or options.shape != (n, len(vocab.categories)):
            raise DataError(f"{images_path}: cache holds images {images.shape} and options {options.shape}, "
                            f"expected {n} of {self.size}x{self.size}x3 and {len(vocab.categories)} options; "
                            "delete it to rebuild")
        return Split(images, np.full(n, -1, np.int64), NAME, split, (),
                     extras={"options": options, "vocabulary": vocab, "vocabulary_path": str(vocab_path),
                             "styles": styles, "seed": seed, "generator_version": GENERATOR_VERSION})

    def check(self, root: Path | None = None) -> list[FileCheck]:
        """The cache files of both splits at their current sizes (no checksums: they are generated)."""
        styles = self.styles()
        return [FileCheck(p, p.is_file(), None) for split in SPLIT_SEEDS
                for p in cache_paths(split, self.size, styles)[:2]]


def _licence_text(styles: tuple[str, ...] | None) -> str:
    """The registry's licence line: the styles' credits, or how to see them when the extra is missing."""
    try:
        return attribution(styles)
    except DataError as exc:
        return f"DiceBear styles under CC0 / CC BY 4.0 / free licences; cannot list them here ({exc})"


def avatars_source(size: int = DEFAULT_SIZE, styles: Sequence[str] | None = None) -> DatasetSource:
    """The avatars source at another size or with fixed styles (None: $DTN_AVATARS_STYLES or the default)."""
    impl = _Avatars(size, tuple(styles) if styles else None)
    return DatasetSource(
        name=NAME,
        description=(f"DiceBear cartoon avatars ({', '.join(impl.styles())}), {size}x{size} RGB on white, "
                     f"{DEFAULT_SIZES['train']:,} train / {DEFAULT_SIZES['test']:,} test, option vectors "
                     "kept (generated; no class labels)"),
        splits=tuple(SPLIT_SEEDS),
        load=impl.load,
        check=impl.check,
        fetch=None,
        licence=_licence_text(impl.fixed_styles),
        how_to_get=(f"generated and cached on first use, no download ({INSTALL_HINT}); sizes via "
                    f"DTN_AVATARS_TRAIN_N / DTN_AVATARS_TEST_N, styles via {STYLES_ENV}"),
        generated=True,
    )


SOURCE = avatars_source()
