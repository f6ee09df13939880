"""Transfer accuracy (DESIGN §3): the target-domain classifier reads G(x) for source test images x;
the score is the fraction equal to x's label. Also the raw-source baseline (classifier on grey x)."""
from __future__ import annotations

import torch

from ..nets import grey, to_float
from . import EvalContext, batched, register_metric


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: true label, columns: predicted label."""
    idx = labels.cpu().long() * num_classes + pred.cpu().long()
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def transfer_accuracy(classifier, transferred: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> dict:
    logits = batched(classifier, transferred)
    pred, labels = logits.argmax(1).cpu(), labels.cpu()
    num_classes = max(num_classes, logits.shape[1], int(labels.max()) + 1)   # any class count, not only 10
    return {"transfer_accuracy": (pred == labels).float().mean().item(),
            "confusion": confusion_matrix(pred, labels, num_classes).tolist()}


@register_metric("transfer_accuracy")
def _transfer_accuracy(ctx: EvalContext) -> dict:
    return transfer_accuracy(ctx.classifier, ctx.transferred(), ctx.source_test.labels)


@register_metric("source_baseline")
def _source_baseline(ctx: EvalContext) -> dict:
    """The classifier on the raw source images in the target's channels: greyscaled for a grey target
    (paper: 40.06 % on SVHN), a grey source repeated to RGB for a colour one (MNIST -> synth-digits)."""
    channels = ctx.target_test.channels if ctx.target_test is not None else 1

    def read(u8: torch.Tensor) -> torch.Tensor:  # uint8 batch -> classifier logits
        x = to_float(u8)
        if x.shape[1] != channels:
            x = grey(x) if channels == 1 else x.expand(-1, channels, -1, -1)
        return ctx.classifier(x)

    pred = batched(read, ctx.source_test.images, ctx.batch_size).argmax(1).cpu()
    return {"source_baseline_accuracy": (pred == ctx.source_test.labels.cpu()).float().mean().item()}
