"""On a machine with a CUDA GPU, `auto` picks it and training runs there under bf16 autocast with
channels_last; the domains live on the GPU. Skipped (with the reason) where torch sees no GPU."""
from __future__ import annotations

import math

import pytest
import torch

from dtn.config import apply_overrides, preset
from dtn.domain import Domain
from dtn.nets import Encoder
from dtn.train import Trainer, pick_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason=f"needs a CUDA GPU; this torch {torch.__version__} sees none")


def test_auto_picks_cuda_and_trains_in_bf16_there():
    cfg = apply_overrides(preset("tiny"), {"train.device": "auto", "train.precision": "bf16",
                                           "train.warmup_steps": 0, "train.batch_size": 16})
    device = pick_device(cfg.train.device)
    assert device.type == "cuda"
    source = Domain(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.arange(64) % 10, "s", "train")
    target = Domain(torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8), torch.full((64,), -1), "t", "train")
    torch.manual_seed(0)
    trainer = Trainer(cfg, Encoder(cfg.nets).eval(), source, target)
    assert trainer.device.type == "cuda" and trainer.source.images.is_cuda
    assert all(p.is_cuda for m in trainer.modules().values() for p in m.parameters())
    with trainer.autocast():
        assert torch.get_autocast_dtype("cuda") == torch.bfloat16 and torch.is_autocast_enabled("cuda")
    out = trainer.train_step()
    assert {"d", "gang", "const", "tid"} <= set(out.values)
    assert all(v.is_cuda and v.dtype == torch.float32 for v in out.values.values())
    assert all(math.isfinite(v) for v in out.items().values())
    _, (gs, *_) = trainer.g_update()
    assert gs.is_cuda and gs.dtype == torch.bfloat16
    assert gs.is_contiguous(memory_format=torch.channels_last)
    assert trainer.transfer(torch.zeros(2, 3, 32, 32, device=device)).dtype == torch.float32


def test_self_training_f_runs_on_cuda():
    """pretrain.f_self_train on domains held on the GPU: the pseudo-label pool lives there too (its
    labels once stayed on the CPU and the first round failed)."""
    from dtn.pretrain import self_train_f
    cfg = apply_overrides(preset("tiny"), {"pretrain.f_self_train": "2", "pretrain.f_self_train_steps": "2"})
    g = torch.Generator().manual_seed(0)
    cuda = torch.device("cuda")
    source = Domain(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (32,), generator=g), "s", "train").to(cuda)
    target = Domain(torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=g),
                    torch.full((40,), -1), "t", "train").to(cuda)
    f = Encoder(cfg.nets).to(cuda)
    rounds = self_train_f(f, cfg.pretrain, source, target, seed=0, autocast_dtype=torch.bfloat16)
    assert [r["round"] for r in rounds] == [1, 2] and all(r["pseudo_labelled"] > 0 for r in rounds)
