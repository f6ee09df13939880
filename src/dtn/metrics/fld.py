"""Fréchet LeNet Distance: FID computed on the evaluation classifier's penultimate features
(torchmetrics' FrechetInceptionDistance with a custom feature extractor; no hand-written sqrtm)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..nets import to_float
from . import EvalContext, register_metric


class _Features(nn.Module):
    """Adapter: torchmetrics calls feature(imgs) and reads .num_features."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], num_features: int) -> None:
        super().__init__()
        self.extract = features
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x.float()).double()


@torch.no_grad()
def frechet_distance(features: Callable[[torch.Tensor], torch.Tensor], num_features: int, real: torch.Tensor,
                     fake: torch.Tensor, batch: int = 500) -> float:
    """Fréchet distance between the Gaussians fitted to features(real) and features(fake).
    One implementation for FLD (LeNet features) and `dtn select` (f's features, pooled pixels)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute=False: one process computes it (rank 0 evaluates a torchrun launch); torchmetrics
    # would otherwise gather from every rank and wait for ranks that never call it.
    metric = FrechetInceptionDistance(feature=_Features(features, num_features), normalize=False,
                                      sync_on_compute=False).to(real.device)
    for chunk in real.split(batch):
        metric.update(chunk.float(), real=True)
    for chunk in fake.split(batch):
        metric.update(chunk.float(), real=False)
    return float(metric.compute())


def frechet_lenet_distance(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 500) -> float:
    """FLD: the Fréchet distance on the evaluation classifier's penultimate features (uses target labels,
    through the classifier's training)."""
    return frechet_distance(classifier.features, classifier.num_features, real, fake, batch)


@register_metric("fld")
def _fld(ctx: EvalContext) -> dict:
    real = to_float(ctx.target_test.images)
    return {"fld": frechet_lenet_distance(ctx.classifier, real, ctx.transferred())}
