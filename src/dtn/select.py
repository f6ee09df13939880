"""`dtn select RUN`: choose a run's best checkpoint without target labels.

GAN training does not improve monotonically, so the last checkpoint is often not the best; but the
honest yardstick, transfer accuracy, needs target labels, which an unsupervised method may not use to
pick its own model. So every checkpoint is scored on label-free signals, all computed on the same fixed
subsets (`samples` source test images x, `samples` target test images t; no label is read):

* feature_fd (lower is better; default): Fréchet distance between f's mid-level features (the output
  of its second block, averaged over space) of G(x) and of real targets t. Which features are honest:
  the evaluation LeNet of FLD is trained on target labels (selecting with it is selecting with target
  labels); D's features are a different ruler at every checkpoint (each D is trained against its own
  g). f is trained on the source labels only, which the method already uses, and is frozen during DTN
  training: one fixed ruler. Its mid-level features describe strokes and texture, which L_CONST does
  not constrain (L_CONST matches f's final code), so g was not trained to game them.
* pixel_fd (lower is better; default): Fréchet distance of 8x8 average-pooled pixels of G(x) and t:
  no network at all, it sees the coarse layout and contrast of the target domain.
* code_fd (lower is better): the same distance on f's final code. Recorded, not in the default: g is
  trained to match codes (L_CONST), and the code space is class-semantic, so it separates late
  checkpoints poorly (see the measurement below).
* f_agreement (higher is better): the share of x whose G(x) f's head puts in the class it gives x.
  Recorded, not in the default: it is what L_CONST trains, and it is already 0.97 for warm-up
  checkpoints whose transfers the evaluation classifier reads at chance (9.8 %).
* d_real (higher is better): the mean probability that the checkpoint's own D calls G(x) real. Recorded,
  not in the default: each D judges only its own g, and an untrained warm-up D is the most lenient.

Rule: rank average over the chosen signals (default feature_fd and pixel_fd). For each signal the
checkpoints are ranked 1 (best) .. n, ties sharing the mean rank and NaN ranked last; a checkpoint's
score is the mean of its ranks; the lowest score wins, a tie going to the later step. Ranks need no
weights between distances of different scales.

Measured (bench/results/select_existing_runs.json: bench/select_checkpoints.py on four finished digits
runs, three checkpoints each, accuracy on 5,000 source test images): within 1 point of the best
checkpoint on 4 of 4 runs for the default rule, feature_fd alone and pixel_fd alone; 2 of 4 for code_fd
and d_real, 1 of 4 for f_agreement (61.8 points off on one run: it chose a warm-up checkpoint). The last
checkpoint was also within 1 point on all four, so the test that matters is the bench's own runs with a
checkpoint every 100 steps.

RUN/select.json records every checkpoint's signals, ranks and score, and the choice; that checkpoint
is then never pruned (RunDir keeps it beside the last keep_last), and `dtn export --best` exports it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .apply import load_nets, resolve_device
from .config import Config
from .domain import load_domain
from .errors import ConfigError, RunError
from .metrics import batched
from .metrics.fld import frechet_distance
from .metrics.pixel_fd import pixel_fd
from .nets import Discriminator, Encoder, Generator, to_float, transfer
from .rundir import RunDir, inference_weights
from .weights import load_tensors

SELECT_FORMAT = 1


@dataclass(frozen=True)
class Signal:
    name: str
    higher_is_better: bool
    what: str


SIGNALS = (
    Signal("feature_fd", False, "Fréchet distance of f's mid-level features, G(source test) vs target test"),
    Signal("pixel_fd", False, "Fréchet distance of 8x8 average-pooled pixels, G(source test) vs target test"),
    Signal("code_fd", False, "Fréchet distance of f's codes, G(source test) vs target test"),
    Signal("f_agreement", True, "share of x whose G(x) f's head puts in the class it gives x (no labels)"),
    Signal("d_real", True, "mean probability the checkpoint's D gives 'real target' to G(x)"),
)
SIGNAL_NAMES = tuple(s.name for s in SIGNALS)
DEFAULT_SIGNALS = ("feature_fd", "pixel_fd")


def pick_signals(names: str | list[str] | tuple[str, ...] | None) -> tuple[Signal, ...]:
    """The signals to combine (DEFAULT_SIGNALS when None); an unknown name is an error listing the valid ones."""
    if names is None:
        names = DEFAULT_SIGNALS
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in wanted if n not in SIGNAL_NAMES]
    if unknown or not wanted:
        raise ConfigError(f"unknown selection signal {unknown[0] if unknown else '(none)'!r}; "
                          f"valid: {', '.join(SIGNAL_NAMES)}")
    return tuple(s for s in SIGNALS if s.name in wanted)


# ----------------------------------------------------------------------------- signals
def mid_features(f: nn.Module) -> nn.Module:
    """f's layers up to its second ReLU (the end of its second block), then a mean over space.
    A 1-channel image is repeated to 3 channels first, as f itself does."""
    layers, relus = [], 0
    for layer in f.features:
        layers.append(layer)
        relus += isinstance(layer, nn.ReLU)
        if relus == 2:
            break
    return nn.Sequential(_Rgb(), *layers, _SpatialMean())


class _Rgb(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x


@torch.no_grad()
def checkpoint_signals(f, g, d, source: torch.Tensor, target: torch.Tensor, code_dim: int,
                       batch: int = 500) -> dict[str, float]:
    """Every signal for one (f, g, D). source, target: float [-1, 1] (N, C, S, S) on the nets' device.
    D's last logit is "real target" for both the ternary and the binary D (losses.py). A conditional D
    (nets.d_conditional) is told x's class as f reads it, as in training."""
    gx = batched(lambda x: transfer(f, g, x), source, batch)
    mid = mid_features(f)
    source_class = batched(f.classify, source, batch).argmax(1)
    agree = source_class == batched(f.classify, gx, batch).argmax(1)
    if getattr(d, "num_conditions", 0):
        real = torch.cat([d(gx[i:i + batch], source_class[i:i + batch]).float().softmax(1)[:, -1]
                          for i in range(0, len(gx), batch)])
    else:
        real = batched(lambda x: d(x).float().softmax(1)[:, -1:], gx, batch)
    return {"feature_fd": frechet_distance(mid, mid(target[:1]).shape[1], target, gx, batch),
            "pixel_fd": pixel_fd(target, gx, batch),
            "code_fd": frechet_distance(f, code_dim, target, gx, batch),
            "f_agreement": agree.float().mean().item(),
            "d_real": real.mean().item()}


def ranks(values: list[float], higher_is_better: bool) -> list[float]:
    """1 = best; ties share their mean rank; NaN ranks last (a broken checkpoint must not win)."""
    def key(i: int) -> float:
        v = values[i]
        if math.isnan(v):
            return math.inf
        return -v if higher_is_better else v

    order = sorted(range(len(values)), key=key)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and key(order[j + 1]) == key(order[i]):
            j += 1
        for k in order[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_average(rows: list[dict], signals: tuple[Signal, ...]) -> list[float]:
    """Each row's mean rank over the signals (lower is better)."""
    per_signal = [ranks([float(r[s.name]) for r in rows], s.higher_is_better) for s in signals]
    return [sum(col) / len(signals) for col in zip(*per_signal)]


def choose(rows: list[dict], scores: list[float]) -> int:
    """Index of the lowest score; a tie goes to the later step (more training, same evidence)."""
    return min(range(len(rows)), key=lambda i: (scores[i], -rows[i]["step"]))


# ----------------------------------------------------------------------------- a run
def selection_images(cfg: Config, samples: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed subsets of the source and target *test* splits as float [-1, 1]; labels are dropped here."""
    n, data_dir = cfg.nets, cfg.data.data_dir or None
    out = []
    for name, channels in ((cfg.data.source, n.source_channels), (cfg.data.target, n.target_channels)):
        domain = load_domain(name, "test", n.image_size, channels, data_dir).subset(samples, seed=seed)
        out.append(to_float(domain.images.to(device)))
    return out[0], out[1]


def select_run(run_path: Path, samples: int = 2000, signals: str | tuple[str, ...] | None = None,
               device: str = "auto", seed: int = 5, write: bool = True) -> dict:
    """Score every checkpoint of a run, choose one, write RUN/select.json (unless write=False)."""
    from .progress import progress

    if samples < 2:
        raise ConfigError(f"--samples must be at least 2 (a Fréchet distance needs a covariance), got {samples}")
    chosen_signals = pick_signals(signals)
    run = RunDir.open(Path(run_path))
    cfg = run.config()
    ckpts = run.checkpoints()
    if not ckpts:
        raise RunError(f"{run.path} has no checkpoint to select from")
    dev = resolve_device(device)
    source, target = selection_images(cfg, samples, seed, dev)
    nets = {"f": Encoder(cfg.nets), "g": Generator(cfg.nets), "d": Discriminator(cfg.nets)}
    rows = []
    for step, path in progress(ckpts, desc="select", total=len(ckpts)):
        load_nets(nets, inference_weights(load_tensors(path)), path)
        f, g, d = (nets[k].to(dev).eval() for k in ("f", "g", "d"))
        rows.append({"step": step, "checkpoint": f"checkpoints/{path.name}",
                     **checkpoint_signals(f, g, d, source, target, cfg.nets.code_dim)})
    per_signal = {s.name: ranks([r[s.name] for r in rows], s.higher_is_better) for s in chosen_signals}
    scores = rank_average(rows, chosen_signals)
    for i, row in enumerate(rows):
        row["ranks"] = {name: r[i] for name, r in per_signal.items()}
        row["score"] = scores[i]
    best = rows[choose(rows, scores)]
    result = {
        "format": SELECT_FORMAT,
        "rule": "rank average: per signal rank 1 = best (ties share the mean rank, NaN last); score = mean "
                "rank; lowest score wins, ties to the later step",
        "signals": {s.name: s.what for s in chosen_signals},
        "recorded": {s.name: s.what for s in SIGNALS},
        "samples": {"source_test": len(source), "target_test": len(target), "seed": seed},
        "labels_used": "none (f's head was pretrained on source labels, as the method does)",
        "checkpoints": rows,
        "chosen_step": best["step"],
        "chosen_checkpoint": best["checkpoint"],
    }
    if write:
        run.write_json("select.json", result)
    return result
