"""A domain's images as one uint8 tensor on the device, and random-index batching from it.

Replaces a DataLoader: the whole split is resized once at load, kept as uint8 (N, C, S, S), and a
batch is an index_select plus one float conversion, so a step never waits on Python workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from . import data as datasets


@dataclass
class Domain:
    images: torch.Tensor          # uint8 (N, C, S, S)
    labels: torch.Tensor          # int64 (N,), -1 when unknown
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device) -> "Domain":
        return Domain(self.images.to(device), self.labels.to(device), self.name, self.split)

    def batch(self, idx: torch.Tensor, memory_format=torch.contiguous_format) -> tuple[torch.Tensor, torch.Tensor]:
        """Images at idx as float [-1, 1] (N, C, S, S), and their labels."""
        idx = idx.to(self.images.device)
        x = self.images.index_select(0, idx).float().div_(127.5).sub_(1.0)
        return x.contiguous(memory_format=memory_format), self.labels.index_select(0, idx)

    def sample(self, n: int, generator: torch.Generator, memory_format=torch.contiguous_format):
        idx = torch.randint(len(self), (n,), generator=generator)
        return self.batch(idx, memory_format)

    def subset(self, n: int, seed: int = 0) -> "Domain":
        """A fixed random subset (all when n >= len): the same images on every call with the same seed."""
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Domain(self.images[idx], self.labels[idx], self.name, self.split)


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


def load_domain(name: str, split: str, size: int, channels: int, data_dir: str | None = None) -> Domain:
    s = datasets.load(name, split, data_dir or None)
    return Domain(resize_uint8(s.images, size, channels), torch.from_numpy(np.array(s.labels, dtype=np.int64)),
                  s.dataset, split)
