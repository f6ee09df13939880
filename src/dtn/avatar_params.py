"""Editable avatars: estimate the DiceBear option vector of an avatar-like image, and draw it for real.

The paper turned its generated emoji into Bitmoji engine parameters so that a transferred face became
an avatar a user could edit. dtn does the same with its avatar domain (data/avatars.py), where every
training avatar keeps the option vector it was drawn from:

    estimator = get_estimator(image_size=64)                # trained once per machine, then cached
    options = estimate_options(estimator, images)           # uint8 (N,H,W,3) -> int16 (N, K)
    svgs, pixels = render_options(options, 96, estimator.vocab)   # editable SVG text + uint8 RGB
    rendered = rendered_avatars(model, faces)               # G(x) -> options -> avatar at the run's size

The estimator is a small CNN with one classification head per category of the avatar Vocabulary (the
style, each component's variant or "none", each colour's palette entry), trained with cross-entropy on
the cached `avatars` train split resized to the run's image size, and scored on the test split
(per-category accuracy, exact-match rate). G(x) is blurrier, less aligned and slightly off-colour
compared with a rendered avatar, so training images get small shifts and scalings, blur, colour
jitter and noise: the estimator must read *which* hair or mouth, not the renderer's exact pixels.

Categories of another style are -1 in an option vector: they are ignored by the loss, and an estimate
fills only the categories of the style it predicts (the rest -1), so every estimate renders.

Weights: safetensors under `cache_root()/avatar_params/`, named by ESTIMATOR_VERSION, styles, the
style-definition digest, the avatar split's size and count, the image size and a hash of the
training settings, with the settings, the category sizes and the test scores in the file's metadata.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import avatars
from .data.base import cache_root
from .data.parallel import chunk_sizes, default_workers, run_chunks
from .domain import Domain, resize_uint8
from .errors import ConfigError, DataError, RunError
from .losses import category_loss
from .nets import final_size, num_blocks, to_float
from .pretrain import train_classifier
from .progress import duration
from .weights import load_tensors, save_tensors

if TYPE_CHECKING:
    from .apply import DTN

#: Bump when what the estimator learns changes (net, augmentation, loop): part of the cache name.
ESTIMATOR_VERSION = 1
#: Renders per parallel job; a pool only pays off from a few jobs on (each worker imports torch).
RENDER_CHUNK = 64
_PARALLEL_MIN = 4 * RENDER_CHUNK


@dataclass(frozen=True)
class EstimatorConfig:
    """How the estimator is trained. Changing any field trains (and caches) a new one."""

    width: int = 32          # channels of the first block; doubles per stride-2 block, capped at 256
    steps: int = 4000        # optimiser steps (4000 x 128 = about 5 passes over 100k avatars)
    batch: int = 128
    lr: float = 2e-3         # AdamW peak; 5 % warm-up then cosine decay (pretrain.train_classifier)
    seed: int = 0
    augment: bool = True     # shifts, blur, colour jitter, noise (see augment_avatars)

    def digest(self) -> str:
        return hashlib.md5(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


DEFAULT_ESTIMATOR = EstimatorConfig()


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

class ParamEstimator(nn.Module):
    """image (N, 3, S, S) in [-1, 1] -> one logit vector per category of `vocab`.

    Stride-2 conv blocks (each followed by a stride-1 conv while the maps are 8 px or larger) down to
    about 4x4, a 256-d hidden layer, then one linear head per category; the heads are slices of one
    Linear, which is the same maths as K separate layers in one matrix product."""

    def __init__(self, vocab: avatars.Vocabulary, image_size: int = 64, width: int = 32) -> None:
        super().__init__()
        self.vocab, self.image_size = vocab, image_size
        self.sizes = [len(c.values) for c in vocab.categories]
        layers: list[nn.Module] = []
        c_in, side = 3, image_size
        for i in range(num_blocks(image_size)):
            c_out, side = min(width * 2 ** i, 256), side // 2
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if side >= 8:
                layers += [nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c_in * final_size(image_size) ** 2, 256), nn.ReLU(inplace=True),
                                    nn.Dropout(0.2))
        self.heads = nn.Linear(256, sum(self.sizes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.heads(self.hidden(self.features(x))).split(self.sizes, dim=1))


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def augment_avatars(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What separates G(x) from a rendered avatar, a little of each: shifts up to 6 % and scalings of
    +-6 % (border-padded: the background is white), blur (a 3x3 box mixed in by a random amount, or a
    2x down-and-up sampling, p .3), brightness +-0.08, contrast and per-channel gain +-5 %, and pixel
    noise. Colours move far less than the gap between palette entries, so colour categories stay readable."""
    n, dev = x.shape[0], x.device
    r = torch.rand(n, 10, generator=generator).to(dev)
    scale = 1 + (r[:, 0] - 0.5) * 0.12
    shift = (r[:, 1:3] - 0.5) * 0.12
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([1 / scale, zero, shift[:, 0]], 1),
                         torch.stack([zero, 1 / scale, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    box = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    x = x + _per_image(r[:, 3]) * (box - x)
    down_up = F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)
    x = torch.where(_per_image(r[:, 4] < 0.3), down_up, x)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=generator).to(dev) - 0.5) * 0.1
    contrast = 1 + (_per_image(r[:, 5]) - 0.5) * 0.1
    x = x * gain * contrast + _per_image(r[:, 6] - 0.5) * 0.16
    noise = torch.randn(x.shape, generator=generator).to(dev) * _per_image(r[:, 7]) * 0.04
    return (x + noise).clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# Training and scoring
# ----------------------------------------------------------------------------------------------

def to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy -> uint8 (N, 3, size, size), resized as the run's domains are (antialiased)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"the avatar estimator reads uint8 RGB images (N,H,W,3), got {images.dtype} {images.shape}")
    return resize_uint8(images, size, 3)


def train_estimator(images: np.ndarray, options: np.ndarray, vocab: avatars.Vocabulary, image_size: int,
                    cfg: EstimatorConfig | None = None, device: str | torch.device = "cpu",
                    desc: str = "avatar estimator", say: Callable[[str], None] | None = None) -> ParamEstimator:
    """Fit a ParamEstimator on uint8 avatars (N, H, W, 3) and their option vectors (N, K); eval mode.
    The loop is every dtn classifier's (pretrain.train_classifier), with the option vectors as labels;
    `say` hears, a few steps in, how long the rest will take on this device."""
    cfg = cfg or DEFAULT_ESTIMATOR
    options = np.asarray(options)
    if options.shape != (len(images), len(vocab.categories)):
        raise DataError(f"{len(images)} avatars need option vectors of shape ({len(images)}, "
                        f"{len(vocab.categories)}), got {options.shape}")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    domain = Domain(to_tensor(images, image_size).to(device), torch.from_numpy(options.astype(np.int64)).to(device),
                    avatars.NAME, "train")
    model = ParamEstimator(vocab, image_size, cfg.width).to(device)
    augment = augment_avatars if cfg.augment else (lambda x, generator: x)
    train_classifier(model, None, domain, cfg.steps, cfg.batch, cfg.lr, augment, cfg.seed, desc,
                     loss_fn=lambda x, labels: category_loss(model(x), labels), say=say)
    return model.eval()


@torch.inference_mode()
def estimate_options(estimator: ParamEstimator, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """uint8 images (N, H, W, 3), resized to the estimator's size -> int16 option vectors (N, K): the
    most likely style, then the most likely value of each of that style's categories (others -1)."""
    device = next(estimator.parameters()).device
    cats = estimator.vocab.categories
    style_of = np.array([estimator.vocab.styles.index(c.style) if c.style else -1 for c in cats])
    out = np.empty((len(images), len(cats)), np.int16)
    for start in range(0, len(images), batch):
        x = to_float(to_tensor(images[start:start + batch], estimator.image_size).to(device))
        best = np.stack([lg.argmax(1).cpu().numpy() for lg in estimator(x)], 1)
        own = (style_of[None, :] == best[:, :1]) | (style_of[None, :] == -1)
        out[start:start + len(x)] = np.where(own, best, -1)
    return out


def score_estimator(estimator: ParamEstimator, images: np.ndarray, options: np.ndarray) -> dict:
    """Per-category accuracy (over the avatars a category applies to), their mean, and the exact-match
    rate (every entry of the vector right: the re-rendered avatar is the same avatar)."""
    truth = np.asarray(options)
    guess = estimate_options(estimator, images)
    per_category, majority, choices = {}, {}, []
    for j, cat in enumerate(estimator.vocab.categories):
        applies = truth[:, j] >= 0
        if applies.any():
            per_category[cat.name] = float((guess[applies, j] == truth[applies, j]).mean())
            majority[cat.name] = float(np.bincount(truth[applies, j]).max() / applies.sum())
            if len(cat.values) > 1:
                choices.append(per_category[cat.name])
    return {"n": int(len(truth)), "exact_match": float((guess == truth).all(1).mean()),
            # over the categories with a choice (several are a single fixed colour: always right)
            "mean_category_accuracy": float(np.mean(choices)) if choices else 1.0,
            "per_category": per_category,
            # always guessing the commonest value: the floor a category's accuracy must beat
            "majority_baseline": majority}


# ----------------------------------------------------------------------------------------------
# Cached estimators
# ----------------------------------------------------------------------------------------------

def estimator_path(image_size: int, styles: tuple[str, ...], cfg: EstimatorConfig | None = None) -> Path:
    """Where the estimator for these avatars (styles, definitions, split size and count) at this image
    size and with these settings is cached: one file per machine and combination."""
    cfg = cfg or DEFAULT_ESTIMATOR
    n = avatars.split_size("train")
    name = (f"estimator-v{ESTIMATOR_VERSION}-{'+'.join(styles)}-d{avatars.definitions_digest(styles)}"
            f"-{avatars.DEFAULT_SIZE}px-n{n}-{image_size}px-c{cfg.digest()}.safetensors")
    return cache_root() / "avatar_params" / name


def _layout(vocab: avatars.Vocabulary) -> list[list]:
    """[category name, number of values] per head: what a cached file must match to be loaded."""
    return [[c.name, len(c.values)] for c in vocab.categories]


def save_estimator(estimator: ParamEstimator, path: Path, cfg: EstimatorConfig, scores: dict) -> None:
    meta = {"estimator_version": str(ESTIMATOR_VERSION), "image_size": str(estimator.image_size),
            "config": json.dumps(asdict(cfg)), "layout": json.dumps(_layout(estimator.vocab)),
            "styles": json.dumps(list(estimator.vocab.styles)), "scores": json.dumps(scores)}
    save_tensors(estimator.state_dict(), path, meta)


def load_estimator(path: Path, vocab: avatars.Vocabulary, image_size: int,
                   cfg: EstimatorConfig | None = None) -> tuple[ParamEstimator, dict]:
    """(estimator, its test scores) from a file save_estimator wrote, refusing one made for other
    categories, another image size or other settings (the message names the file)."""
    cfg = cfg or DEFAULT_ESTIMATOR
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise RunError(f"{path}: not a readable safetensors file ({exc}); delete it to retrain") from None
    expected = {"layout": _layout(vocab), "image_size": image_size, "config": asdict(cfg)}
    for key, want in expected.items():
        try:
            got = json.loads(meta[key])
        except (KeyError, json.JSONDecodeError):
            raise RunError(f"{path}: no readable {key!r} in its metadata; not an avatar estimator file") from None
        if got != want:
            raise RunError(f"{path}: an avatar estimator for {key} {got}, not {want}; delete it to retrain")
    estimator = ParamEstimator(vocab, image_size, cfg.width)
    try:
        estimator.load_state_dict(load_tensors(path))
    except RuntimeError as exc:
        raise RunError(f"{path}: weights do not fit the estimator ({str(exc).strip().splitlines()[0]})") from None
    return estimator.eval(), json.loads(meta.get("scores", "{}"))


def get_estimator(image_size: int, styles: Sequence[str] | None = None, cfg: EstimatorConfig | None = None,
                  device: str | torch.device = "cpu", say: Callable[[str], None] | None = None
                  ) -> tuple[ParamEstimator, dict]:
    """(estimator, test scores) for avatars of `styles` (None: $DTN_AVATARS_STYLES or the default) at
    `image_size`: from the cache, else trained on the avatars train split, scored on its test split
    and cached. `say` gets one line before training (where, how much) and one after (time, scores)."""
    cfg = cfg or DEFAULT_ESTIMATOR
    styles = tuple(styles or avatars.current_styles())
    vocab = avatars.vocabulary(styles)
    path = estimator_path(image_size, styles, cfg)
    if path.is_file():
        estimator, scores = load_estimator(path, vocab, image_size, cfg)
        return estimator.to(device), scores
    say = say or (lambda line: None)
    source = avatars.avatars_source(styles=styles)
    if not avatars.cache_paths("train", avatars.DEFAULT_SIZE, styles)[0].is_file():
        say(f"the avatar parameter estimator learns from the avatars train split, which is not generated yet: "
            f"generating {avatars.split_size('train'):,} avatars first (about 11 ms each per core)")
    train = source.load("train")
    say(f"training the avatar parameter estimator once for this machine: {cfg.steps} steps of {cfg.batch} "
        f"on {len(train):,} generated avatars at {image_size} px, on {device}; it will be cached as {path}")
    start = time.perf_counter()
    estimator = train_estimator(train.images, train.extras["options"], vocab, image_size, cfg, device, say=say)
    test = source.load("test")
    scores = score_estimator(estimator, test.images, test.extras["options"])
    scores["train_seconds"] = round(time.perf_counter() - start, 1)
    scores["train_n"] = len(train)
    save_estimator(estimator, path, cfg, scores)
    say(f"trained the avatar parameter estimator in {duration(scores['train_seconds'])}: on {len(test):,} "
        f"test avatars, mean category accuracy {100 * scores['mean_category_accuracy']:.1f} %, "
        f"exact match {100 * scores['exact_match']:.1f} %")
    return estimator, scores


# ----------------------------------------------------------------------------------------------
# Rendering estimates, and the whole G(x) -> avatar path
# ----------------------------------------------------------------------------------------------

def _png_pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _render_rows(job: tuple[np.ndarray, int, avatars.Vocabulary]) -> tuple[list[str], np.ndarray]:
    """SVG text and uint8 pixels of some option vectors (module level: run_chunks may spawn it)."""
    rows, size, vocab = job
    svgs = [avatars.render_svg(row, vocab) for row in rows]
    return svgs, np.stack([_png_pixels(avatars.svg_to_png(svg, size)) for svg in svgs])


def render_options(options: np.ndarray, size: int, vocab: avatars.Vocabulary,
                   workers: int | None = None) -> tuple[list[str], np.ndarray]:
    """(SVG markup per vector, uint8 (N, size, size, 3) pixels): the real avatars of estimated options.
    About 10 ms an avatar on one core; from 256 vectors on, chunks run on `workers` processes
    (None: all cores), in order, so the result does not depend on the worker count."""
    options = np.asarray(options)
    svgs: list[str] = []
    pixels = np.empty((len(options), size, size, 3), np.uint8)
    starts = np.cumsum([0] + chunk_sizes(len(options), RENDER_CHUNK))
    jobs = [(options[a:b], size, vocab) for a, b in zip(starts[:-1], starts[1:])]
    workers = min(workers or default_workers(), max(1, len(jobs))) if len(options) >= _PARALLEL_MIN else 1
    for start, (chunk_svgs, chunk_pixels) in zip(starts, run_chunks(_render_rows, jobs, workers)):
        svgs += chunk_svgs
        pixels[start:start + len(chunk_svgs)] = chunk_pixels
    return svgs, pixels


def require_avatar_target(cfg, where: str | Path) -> None:
    """Estimated avatar options only mean something for a run that maps into the avatars domain."""
    if cfg.data.target != avatars.NAME:
        raise ConfigError(f"{where}: its target is {cfg.data.target!r}, not {avatars.NAME!r}; editable avatars "
                          f"(--avatar-svg) need a run trained to draw avatars, e.g. `dtn run faces`")


def estimator_for(model: "DTN", cfg: EstimatorConfig | None = None, say: Callable[[str], None] | None = None,
                  where: str | Path = "this run") -> ParamEstimator:
    """The cached (or newly trained) estimator at the run's image size, on the run's device."""
    require_avatar_target(model.cfg, where)
    return get_estimator(model.cfg.nets.image_size, None, cfg, model.device, say)[0]


def rendered_avatars(model: "DTN", images: np.ndarray, estimator: ParamEstimator | None = None,
                     workers: int | None = None) -> np.ndarray:
    """G(x) -> estimated options -> the real avatar, as the run's target domain holds avatars: drawn at
    the avatars dataset's size and resized to the run's size (uint8 (N, S, S, 3)). Identity retrieval
    on these measures what survives when a transferred face becomes an editable avatar."""
    estimator = estimator or estimator_for(model)
    options = estimate_options(estimator, model.transfer(images))
    _, pixels = render_options(options, avatars.DEFAULT_SIZE, estimator.vocab, workers)
    return resize_uint8(pixels, model.cfg.nets.image_size, 3).permute(0, 2, 3, 1).numpy()


def write_avatar_files(folder: Path, stems: Sequence[Path | str], options: np.ndarray,
                       vocab: avatars.Vocabulary, size: int) -> None:
    """FOLDER/<stem>.svg (editable), .png (size x size) and .json (avatars.describe: the named options;
    avatars.encode reads it back) for each estimated option vector."""
    from PIL import Image

    from .errors import DtnError

    svgs, pixels = render_options(options, size, vocab)
    for stem, svg, image, row in zip(stems, svgs, pixels, options):
        base = Path(folder) / stem
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            base.with_name(base.name + ".svg").write_text(svg, encoding="utf-8")
            Image.fromarray(image).save(base.with_name(base.name + ".png"), format="PNG")
            base.with_name(base.name + ".json").write_text(
                json.dumps(avatars.describe(row, vocab), indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise DtnError(f"cannot write the avatar files {base}.svg/.png/.json: {exc.strerror or exc}") from None


def avatar_writer(model: "DTN", folder: Path, size: int = 256, say: Callable[[str], None] | None = None,
                  where: str | Path = "this run") -> Callable[[list[str], np.ndarray], None]:
    """`dtn transfer --avatar-svg FOLDER`: refuses a run whose target is not avatars, gets the estimator
    (training it first if this machine has none, told to `say`), then returns what writes each batch of
    transferred images as estimated avatars: writer(stems, images) -> FOLDER/<stem>.svg/.png/.json."""
    estimator = estimator_for(model, say=say, where=where)

    def write(stems: list[str], transferred: np.ndarray) -> None:
        write_avatar_files(folder, stems, estimate_options(estimator, transferred), estimator.vocab, size)

    return write
