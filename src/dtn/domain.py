"""A domain's images as one uint8 tensor on the device, and random-index batching from it.

Replaces a DataLoader: the whole split is resized once at load, kept as uint8 (N, C, S, S), and a
batch is an index_select plus one float conversion, so a step never waits on Python workers.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.nn import functional as F

from . import data as datasets
from .data.classes import select_classes
from .errors import DataError
from .nets import to_float


@dataclass
class Domain:
    images: torch.Tensor          # uint8 (N, C, S, S)
    labels: torch.Tensor          # int64 (N,), -1 when unknown
    name: str
    split: str
    balanced: bool = False        # sample() draws each class equally often (then uniformly within it)
    _by_class: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device) -> "Domain":
        return Domain(self.images.to(device), self.labels.to(device), self.name, self.split, self.balanced)

    def batch(self, idx: torch.Tensor, memory_format=torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at idx as float [-1, 1] (N, C, S, S), and their labels."""
        idx = idx.to(self.images.device)
        x = to_float(self.images.index_select(0, idx))
        return x.contiguous(memory_format=memory_format), self.labels.index_select(0, idx.to(self.labels.device))

    def in_order(self, batch: int, memory_format=torch.contiguous_format):
        """Every image once, in order: (images, labels) batches of at most `batch` (evaluation, statistics)."""
        for start in range(0, len(self), batch):
            yield self.batch(torch.arange(start, min(start + batch, len(self))), memory_format)

    def sample(self, n: int, generator: torch.Generator, memory_format=torch.contiguous_format,
               shard: slice | None = None):
        """n random images; with `shard`, only that slice of them (distributed.py: each process trains on
        its slice of the one global batch that every process draws from the same stream)."""
        idx = self.draw(n, generator)
        return self.batch(idx if shard is None else idx[shard], memory_format)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The n random indices sample() reads (on the generator's device, the CPU)."""
        return self._balanced_indices(n, generator) if self.balanced else torch.randint(len(self), (n,), generator=generator)

    def _balanced_indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n indices: a class uniformly among the labelled ones, then an image uniformly within it, so a
        rare class (357 dresses beside 1,292 T-shirts) is seen as often as a common one."""
        order, starts, counts = self._class_index()
        cls = torch.randint(len(counts), (n,), generator=generator)
        offset = (torch.rand(n, generator=generator) * counts[cls]).long().clamp_max(counts[cls] - 1)
        return order[starts[cls] + offset]

    def _class_index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(indices of labelled images sorted by label, where each class starts, its size), on the CPU
        like the sampling generator; computed once per Domain."""
        if self._by_class is None:
            labels = self.labels.cpu()
            labelled = torch.nonzero(labels >= 0).flatten()
            if len(labelled) == 0:
                raise DataError(f"{self.name}/{self.split}: balanced sampling needs class labels, and there are none")
            order = labelled[torch.argsort(labels[labelled], stable=True)]
            _, counts = torch.unique_consecutive(labels[order], return_counts=True)
            self._by_class = (order, torch.cumsum(counts, 0) - counts, counts)
        return self._by_class

    def with_balance(self, balanced: bool) -> "Domain":
        """The same images, sampled class-balanced (or not)."""
        return self if balanced == self.balanced else replace(self, balanced=balanced)

    def subset(self, n: int, seed: int = 0) -> "Domain":
        """A fixed random subset (all when n >= len): the same images on every call with the same seed."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Domain(self.images[idx], self.labels[idx], self.name, self.split, self.balanced)


def resize_uint8(images: np.ndarray, size: int, channels: int, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, channels, size, size): antialiased bilinear resize, grey/RGB conversion."""
    out = torch.empty((len(images), channels, size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[start:start + chunk])).permute(0, 3, 1, 2)  # copy: caches are read-only memmaps
        if x.shape[1] != channels:
            if channels == 1:
                w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
                x = (x.float() * w).sum(1, keepdim=True)
            else:
                x = x.expand(-1, channels, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:start + chunk] = x.round().clamp(0, 255).to(torch.uint8) if x.is_floating_point() else x
    return out


def view_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, C) numpy -> (N, C, S, S) tensor sharing its memory (channels_last strides).
    On a memmap nothing is read until a batch's index_select touches its rows, so a split larger than
    RAM trains from the page cache. Domain never writes to its images: the read-only warning is moot."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(images).permute(0, 3, 1, 2)


def load_domain(name: str, split: str, size: int, channels: int, data_dir: str | None = None,
                memmap: bool = False, classes: tuple[str, ...] = ()) -> Domain:
    """A split as uint8 (N, C, S, S), resized into RAM; with `memmap`, a split whose .npy cache is already
    at (S, S, C) is viewed in place instead (SVHN extra is 1.6 GB at 32 px). Off by default: the view's
    channels_last strides reach the metrics that read `images` directly, which would change their last bits."""
    s = select_classes(datasets.load(name, split, data_dir or None), classes)   # classes: data/classes.py
    on_disk = memmap and isinstance(s.images, np.memmap) and s.images.shape[1:] == (size, size, channels)
    images = view_uint8(s.images) if on_disk else resize_uint8(s.images, size, channels)
    return Domain(images, torch.from_numpy(np.array(s.labels, dtype=np.int64)), s.dataset, split)
