"""A source larger than RAM: Domain trains from a memmapped .npy without copying it (bench/memory.py
measures the peak RSS at SVHN-extra size), and sharded sampling takes a slice of the one global draw."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dtn import domain as domain_mod
from dtn.config import apply_overrides, preset
from dtn.data.base import Split
from dtn.domain import Domain, load_domain, resize_uint8, view_uint8
from dtn.nets import Encoder
from dtn.train import Trainer


@pytest.fixture
def memmapped(tmp_path):
    """uint8 (40, 32, 32, 3) random images in an .npy, opened read-only as a memmap."""
    path = tmp_path / "source.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(40, 32, 32, 3))
    out[:] = np.random.default_rng(0).integers(0, 256, out.shape, dtype=np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def test_view_shares_the_file_and_batches_like_a_copy(memmapped):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no read-only warning leaks to the user
        view = view_uint8(memmapped)
    assert view.shape == (40, 3, 32, 32) and np.shares_memory(view.numpy(), memmapped)
    copied = Domain(resize_uint8(memmapped, 32, 3), torch.zeros(40, dtype=torch.long), "s", "train")
    viewed = Domain(view, torch.zeros(40, dtype=torch.long), "s", "train")
    idx = torch.tensor([3, 0, 39, 3])
    for fmt in (torch.contiguous_format, torch.channels_last):
        a, b = copied.batch(idx, fmt)[0], viewed.batch(idx, fmt)[0]
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert torch.equal(viewed.subset(10, seed=1).images, copied.subset(10, seed=1).images)


@pytest.mark.parametrize("memmap,size,shared", [(True, 32, True), (False, 32, False), (True, 16, False)])
def test_load_domain_views_a_memmap_only_when_asked_and_no_resize_is_needed(monkeypatch, memmapped, memmap,
                                                                          size, shared):
    split = Split(memmapped, np.arange(40) % 10, "fake", "train")
    monkeypatch.setattr(domain_mod.datasets, "load", lambda *a, **k: split)
    d = load_domain("fake", "train", size, 3, memmap=memmap)
    assert d.images.shape == (40, 3, size, size)
    assert np.shares_memory(d.images.numpy(), memmapped) == shared
    if size == 32:
        assert torch.equal(d.images, torch.from_numpy(np.array(memmapped)).permute(0, 3, 1, 2))


def test_trainer_trains_on_a_read_only_memmap(memmapped):
    cfg = apply_overrides(preset("tiny"), {"train.device": "cpu", "train.warmup_steps": 0})
    source = Domain(view_uint8(memmapped), torch.arange(40) % 10, "s", "train")
    target = Domain(torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8), torch.full((40,), -1), "t", "train")
    torch.manual_seed(0)
    trainer = Trainer(cfg, Encoder(cfg.nets).eval(), source, target, torch.device("cpu"))
    assert trainer.source.images.data_ptr() == source.images.data_ptr(), "Trainer must not copy a CPU source"
    before = np.array(memmapped)
    out = trainer.train_step().items()
    assert {"d", "gang", "const", "tid"} <= set(out)
    assert np.array_equal(np.asarray(memmapped), before)


def test_sharded_sample_is_a_slice_of_the_global_draw():
    d = Domain(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8), torch.arange(50), "d", "train")
    full_x, full_y = d.sample(12, torch.Generator().manual_seed(3))
    part_x, part_y = d.sample(12, torch.Generator().manual_seed(3), shard=slice(4, 8))
    assert torch.equal(part_x, full_x[4:8]) and torch.equal(part_y, full_y[4:8])
