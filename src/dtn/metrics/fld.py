"""Fréchet LeNet Distance: FID computed on the evaluation classifier's penultimate features
(torchmetrics' FrechetInceptionDistance with a custom feature extractor; no hand-written sqrtm)."""
from __future__ import annotations

import torch
from torch import nn

from . import EvalContext, register_metric


class _Features(nn.Module):
    """Adapter: torchmetrics calls feature(imgs) and reads .num_features."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float()).double()


@torch.no_grad()
def frechet_lenet_distance(classifier: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 500) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute=False: one process computes it (rank 0 evaluates a torchrun launch); torchmetrics
    # would otherwise gather from every rank and wait for ranks that never call it.
    metric = FrechetInceptionDistance(feature=_Features(classifier), normalize=False, sync_on_compute=False)
    for chunk in real.split(batch):
        metric.update(chunk.float(), real=True)
    for chunk in fake.split(batch):
        metric.update(chunk.float(), real=False)
    return float(metric.compute())


@register_metric("fld")
def _fld(ctx: EvalContext) -> dict:
    real = ctx.target_test.images.float().div(127.5).sub(1.0)
    return {"fld": frechet_lenet_distance(ctx.classifier, real, ctx.transferred())}
