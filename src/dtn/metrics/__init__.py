"""Metrics registry: name -> function(context) -> dict of numbers.

Each metric lives in its own file and registers itself with `@register_metric("name")`. The keys are
the CLI choices of `dtn evaluate --metrics` and appear in the error for an unknown name.
A metric takes an `EvalContext` (the transfer function, the domains and the classifiers it may use).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..domain import Domain
from ..errors import ConfigError

MetricFn = Callable[["EvalContext"], dict]
_METRICS: dict[str, MetricFn] = {}


@dataclass
class EvalContext:
    """What a metric may look at. `transfer` maps float source images [-1, 1] to target images [-1, 1]."""

    transfer: Callable[[torch.Tensor], torch.Tensor]
    source_test: Domain
    target_test: Domain | None = None
    classifier: nn.Module | None = None        # evaluation classifier on the target domain (uses target labels)
    f: nn.Module | None = None                 # the DTN's f, with its pretraining head
    standardise_codes: bool = False            # loss.code_scale = domain: compare f's codes per-domain standardised
    judge: nn.Module | None = None             # an f of another seed that training never saw (pretrain.judge)
    source_train: Domain | None = None         # only for adaptation_accuracy (uses source labels)
    batch_size: int = 500
    cache: dict = field(default_factory=dict)  # shared between metrics: e.g. G(source_test) computed once

    @torch.no_grad()
    def transferred(self) -> torch.Tensor:
        """G(source_test) as float [-1, 1], computed once per context."""
        if "transferred" not in self.cache:
            self.cache["transferred"] = torch.cat([self.transfer(x).float()
                                                   for x, _ in self.source_test.in_order(self.batch_size)])
        return self.cache["transferred"]


def register_metric(name: str):
    def wrap(fn: MetricFn) -> MetricFn:
        _METRICS[name] = fn
        return fn
    return wrap


def metric_names() -> list[str]:
    _load_all()
    return sorted(_METRICS)


def compute(names: list[str], ctx: EvalContext) -> dict:
    _load_all()
    out = {}
    for name in names:
        if name not in _METRICS:
            raise ConfigError(f"unknown metric {name!r}; valid metrics: {', '.join(sorted(_METRICS))}")
        out.update(_METRICS[name](ctx))
    return out


def _load_all() -> None:
    from . import accuracy, adaptation, consistency, fld, pixel_fd, retrieval  # noqa: F401  (imports register the metrics)


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])
