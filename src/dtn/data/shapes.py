"""What a split says about the nets' sizes: its images' channels and its number of classes.

`dtn run --source A --target B` (and presets that leave nets.source_channels, target_channels or
num_classes at 0) take these from the data, so any pair of datasets or image folders works without
knowing that MNIST is grey or that celeba-sample has 4,000 identities.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Split

#: Images looked at to decide whether a domain is grey: enough to catch one coloured picture in practice.
GREY_SAMPLE = 512


def native_channels(split: Split) -> int:
    """1 for single-channel images or RGB images whose channels are all equal (a folder of grey PNGs
    reads as RGB), else 3."""
    images = split.images
    if images.shape[-1] == 1:
        return 1
    step = max(1, len(images) // GREY_SAMPLE)
    sample = np.asarray(images[::step][:GREY_SAMPLE])
    grey = (sample[..., 0] == sample[..., 1]).all() and (sample[..., 1] == sample[..., 2]).all()
    return 1 if grey else 3


def class_count(split: Split) -> int:
    """Outputs a classifier head needs for this split: its class names, or its largest label + 1."""
    labels = np.asarray(split.labels)
    if len(labels) == 0 or labels.max() < 0:
        raise DataError(f"{split.dataset}/{split.split} has no class labels, and f is pretrained as a classifier "
                        "on the source's labels: use a labelled source, or --set train.f_mode=random")
    return max(len(split.class_names), int(labels.max()) + 1)
