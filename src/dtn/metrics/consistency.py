"""f-consistency: f's own classifier head on G(x) agrees with x's label. Needs no target labels,
so it is one of the label-free signals for checkpoint selection (with source labels)."""
from __future__ import annotations

from . import EvalContext, batched, register_metric


def f_consistency(f, transferred, labels) -> float:
    pred = batched(f.classify, transferred).argmax(1).cpu()
    return (pred == labels.cpu()).float().mean().item()


@register_metric("f_consistency")
def _f_consistency(ctx: EvalContext) -> dict:
    return {"f_consistency": f_consistency(ctx.f, ctx.transferred(), ctx.source_test.labels)}
