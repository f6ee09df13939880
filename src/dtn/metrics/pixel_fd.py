"""Pixel Fréchet distance: does G(x) look like the target domain, with no classifier at all?

The Fréchet distance between target test images and G(source test), both average-pooled to 8x8 pixels
per channel. Why: where the target has no labels (avatars) there is no evaluation classifier and so no
FLD, and a label-free identity score alone rewards a g that hides f's code in patterns f reads (coloured
noise ranks every face first). Coarse pixels cannot be fooled that way: noise averages out, and what is
left is the layout and colour of the picture, which must match the target's. `dtn select` uses the
same features as one of its checkpoint signals.

Coarse pixels are blind to what they average away, so the metric also reports `detail_ratio`: the
energy of G(x)'s detail finer than 4 pixels over the target images' own. Near 1, G(x) is as sharp as
the targets; far above 1, it is covered in noise (the faces runs' coloured speckle, which pixel FD
never sees); below 1, it is blurred.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..augment import lowpass
from ..nets import to_float
from . import EvalContext, register_metric
from .fld import frechet_distance

GRID = 8


def pooled_pixels(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(N, C, S, S) -> (N, C * grid * grid): the picture's coarse layout and colour (also what L_LAYOUT compares)."""
    return F.adaptive_avg_pool2d(x.float(), grid).flatten(1)


def pixel_fd(real: torch.Tensor, fake: torch.Tensor, batch: int = 500) -> float:
    """Fréchet distance of pooled pixels; real and fake float [-1, 1] with the same channels."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"pixel FD needs images of one shape; got {tuple(real.shape[1:])} and {tuple(fake.shape[1:])}")
    return frechet_distance(pooled_pixels, real.shape[1] * GRID * GRID, real, fake, batch)


def detail_energy(x: torch.Tensor, factor: int = 4, batch: int = 500) -> float:
    """Mean square of x - lowpass(x, factor): the energy of detail finer than `factor` pixels."""
    total = sum((part.float() - lowpass(part.float(), factor)).pow(2).sum().item() for part in x.split(batch))
    return total / max(1, x.numel())


def detail_ratio(real: torch.Tensor, fake: torch.Tensor, factor: int = 4) -> float:
    """detail_energy(fake) / detail_energy(real): 1 when G(x) is as sharp as the targets."""
    return detail_energy(fake, factor) / max(detail_energy(real, factor), 1e-12)


@register_metric("pixel_fd")
def _pixel_fd(ctx: EvalContext) -> dict:
    """With pixel_fd_source beside it where the domains' images have one shape: the score of copying
    the source picture unchanged (G = identity), the level a useful G must get well below."""
    target, fake = to_float(ctx.target_test.images), ctx.transferred()
    out = {"pixel_fd": pixel_fd(target, fake), "detail_ratio": detail_ratio(target, fake)}
    if ctx.source_test.images.shape[1:] == ctx.target_test.images.shape[1:]:
        out["pixel_fd_source"] = pixel_fd(target, to_float(ctx.source_test.images))
    return out
