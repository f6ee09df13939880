"""Pixel Fréchet distance: does G(x) look like the target domain, with no classifier at all?

The Fréchet distance between target test images and G(source test), both average-pooled to 8x8 pixels
per channel. Why: where the target has no labels (avatars) there is no evaluation classifier and so no
FLD, and a label-free identity score alone rewards a g that hides f's code in patterns f reads (coloured
noise ranks every face first). Coarse pixels cannot be fooled that way: noise averages out, and what is
left is the layout and colour of the picture, which must match the target's. `dtn select` uses the
same features as one of its checkpoint signals.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

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


@register_metric("pixel_fd")
def _pixel_fd(ctx: EvalContext) -> dict:
    """With pixel_fd_source beside it where the domains' images have one shape: the score of copying
    the source picture unchanged (G = identity), the level a useful G must get well below."""
    target = to_float(ctx.target_test.images)
    out = {"pixel_fd": pixel_fd(target, ctx.transferred())}
    if ctx.source_test.images.shape[1:] == ctx.target_test.images.shape[1:]:
        out["pixel_fd_source"] = pixel_fd(target, to_float(ctx.source_test.images))
    return out
