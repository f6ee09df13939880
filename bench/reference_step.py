"""A plain fp32 eager DTN step, written the way public ports write it: the baseline that
bench/train_step.py times the Trainer against. Not part of the package: only benchmarks and
tests/test_reference_step.py import it.

What makes it plain (each is something the Trainer avoids):
- data: a torch.utils.data.DataLoader over per-sample numpy uint8 (H, W, C) arrays, each sample
  converted PIL-style (Image.fromarray -> float array -> ToTensor/Normalize arithmetic), then collated;
- fp32 and NCHW (contiguous) tensors, no autocast;
- separate forward passes per loss: the D update regenerates G(x) under no_grad instead of reusing
  the G update's images, and L_CONST encodes x again instead of reusing f(x) from the generation;
- `.item()` on every loss of every update (a host sync each time on a GPU).

It computes the same function as dtn.train.Trainer (same nets, g's BatchNorm over the source and
target codes together, means over the batch, the same code scale), with its own loss code, so on the
same weights and batch its L_D, L_GANG, L_CONST, L_TID and L_TV equal the Trainer's.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dtn.config import Config


class NumpyImages(Dataset):
    """One uint8 (H, W, C) numpy image per item, converted like torchvision's ToTensor + Normalize(0.5, 0.5)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr = self.images[i]
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        x = np.asarray(img, dtype=np.float32) / 255.0
        if x.ndim == 2:
            x = x[..., None]
        x = torch.from_numpy(x.transpose(2, 0, 1).copy())
        return (x - 0.5) / 0.5, int(self.labels[i])


def endless(loader: DataLoader) -> Iterator:
    """Epoch after epoch, as the ports' `while True: for batch in loader` loops do."""
    while True:
        yield from loader


def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, workers: int = 0) -> Iterator:
    g = torch.Generator().manual_seed(seed)
    return endless(DataLoader(NumpyImages(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                              num_workers=workers, generator=g, persistent_workers=workers > 0))


@dataclass
class ReferenceNets:
    """f (frozen), g, D and their Adam optimizers, as a port keeps them: loose attributes."""

    f: nn.Module
    g: nn.Module
    d: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    code_scale: float


def make_nets(cfg: Config, f: nn.Module, g: nn.Module, d: nn.Module, code_scale: float) -> ReferenceNets:
    o = cfg.optim
    return ReferenceNets(f, g, d, torch.optim.Adam(g.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2)),
                         torch.optim.Adam(d.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2)), code_scale)


def generate(nets: ReferenceNets, xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G(xs), G(xt) from one g call, so g's BatchNorm sees both domains as the Trainer's does."""
    with torch.no_grad():
        codes = torch.cat([nets.f(xs), nets.f(xt)])
    fake = nets.g(codes)
    return fake[:len(xs)], fake[len(xs):]


def _labels(n: int, cls: int, device) -> torch.Tensor:
    return torch.full((n,), cls, dtype=torch.long, device=device)


def d_losses(nets: ReferenceNets, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """L_D with freshly generated, detached G(x) (classes 0 = G(s), 1 = G(t), 2 = real t)."""
    with torch.no_grad():
        fake_s, fake_t = generate(nets, xs, xt)
    n = len(xs)
    return (F.cross_entropy(nets.d(fake_s), _labels(n, 0, xs.device))
            + F.cross_entropy(nets.d(fake_t), _labels(len(xt), 1, xs.device))
            + F.cross_entropy(nets.d(xt), _labels(len(xt), 2, xs.device)))


def g_losses(nets: ReferenceNets, xs: torch.Tensor, xt: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor]:
    """L_GANG, L_CONST (MSE of codes / code_scale), L_TID (MSE), L_TV, each from its own expression."""
    fake_s, fake_t = generate(nets, xs, xt)
    out = {"gang": F.cross_entropy(nets.d(fake_s), _labels(len(xs), 2, xs.device))
           + F.cross_entropy(nets.d(fake_t), _labels(len(xt), 2, xs.device))}
    with torch.no_grad():
        code_x = nets.f(xs) / nets.code_scale          # encoded again: a separate forward pass
    out["const"] = ((nets.f(fake_s) / nets.code_scale - code_x) ** 2).mean()
    out["tid"] = ((fake_t - xt) ** 2).mean()
    if cfg.loss.gamma:
        z = torch.cat([fake_s, fake_t])
        dx = z[..., :-1, 1:] - z[..., :-1, :-1]
        dy = z[..., 1:, :-1] - z[..., :-1, :-1]
        per_pixel = (dx ** 2 + dy ** 2).clamp_min(1e-12).pow(cfg.loss.tv_power / 2)
        out["tv"] = (per_pixel.mean((-2, -1)) if cfg.loss.tv_reduction == "mean" else per_pixel.sum((-2, -1))).mean()
    return out


def g_total(parts: dict[str, torch.Tensor], cfg: Config, gan: bool) -> torch.Tensor:
    total = cfg.loss.alpha * parts["const"] + cfg.loss.beta * parts["tid"]
    if "tv" in parts:
        total = total + cfg.loss.gamma * parts["tv"]
    return total + parts["gang"] if gan else total


def set_lr(nets: ReferenceNets, cfg: Config, step: int) -> None:
    factor = {"linear": 1 - min(step / max(1, cfg.train.steps), 1.0),
              "cosine": 0.5 * (1 + math.cos(math.pi * min(step / max(1, cfg.train.steps), 1.0)))}.get(
        cfg.optim.schedule, 1.0)
    for opt, lr in ((nets.opt_g, cfg.optim.lr_g), (nets.opt_d, cfg.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * factor


def reference_step(nets: ReferenceNets, source: Iterator, target: Iterator, cfg: Config, step: int,
                   device: torch.device) -> dict[str, float]:
    """g_steps G updates, then d_steps D updates on the last G batch, every loss read back with .item()."""
    set_lr(nets, cfg, step)
    gan = cfg.loss.gan and step >= cfg.train.warmup_steps
    log: dict[str, float] = {}
    for _ in range(cfg.train.g_steps):
        xs, _ = next(source)
        xt, _ = next(target)
        xs, xt = xs.to(device), xt.to(device)
        nets.g.train()
        for p in nets.d.parameters():
            p.requires_grad_(False)
        parts = g_losses(nets, xs, xt, cfg)
        if not gan:
            parts.pop("gang")
        loss = g_total(parts, cfg, gan)
        nets.opt_g.zero_grad()
        loss.backward()
        nets.opt_g.step()
        for p in nets.d.parameters():
            p.requires_grad_(True)
        log.update({k: v.item() for k, v in parts.items()}, g_total=loss.item())
    for _ in range(cfg.train.d_steps if gan else 0):
        loss_d = d_losses(nets, xs, xt)
        nets.opt_d.zero_grad()
        loss_d.backward()
        nets.opt_d.step()
        log["d"] = loss_d.item()
    return log
