"""Domain adaptation (paper §5.1): train a classifier on G(source train) with the *source* labels,
test it on the real target test set (paper: 84.44 % on MNIST test, from SVHN). A DTN that keeps
the digit and draws it in the target style makes a usable labelled target-domain training set."""
from __future__ import annotations

import torch

from ..domain import Domain
from ..nets import LeNet, to_images
from ..augment import shift_augment
from ..pretrain import accuracy, train_classifier
from . import EvalContext, register_metric


def adaptation_accuracy(transfer, source_train: Domain, target_test: Domain, epochs: int = 3,
                        batch: int = 128, lr: float = 2e-3, seed: int = 0) -> float:
    """LeNet trained on (G(x), label(x)) for x in source_train, accuracy on target_test."""
    outs = [to_images(transfer(x)).permute(0, 3, 1, 2).contiguous() for x, _ in source_train.in_order(1000)]
    transferred = Domain(torch.cat(outs), source_train.labels, "G(" + source_train.name + ")", source_train.split)
    torch.manual_seed(seed)
    model = LeNet(transferred.channels, int(source_train.labels.max()) + 1).to(transferred.images.device)
    steps = max(1, epochs * len(transferred) // batch)
    train_classifier(model, model, transferred, steps, batch, lr, shift_augment, seed, "adaptation classifier")
    return accuracy(model, target_test)


@register_metric("adaptation_accuracy")
def _adaptation(ctx: EvalContext) -> dict:
    if ctx.source_train is None:
        raise ValueError("adaptation_accuracy needs the source train split in the EvalContext")
    return {"adaptation_accuracy": adaptation_accuracy(ctx.transfer, ctx.source_train, ctx.target_test)}
