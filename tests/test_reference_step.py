"""bench/reference_step.py (the plain port bench/train_step.py times the Trainer against) computes the
same losses as the Trainer: same weights, same batch, fp32. Otherwise the speed-up would compare
different work."""
from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reference_step as ref  # noqa: E402

from dtn.config import apply_overrides, preset  # noqa: E402
from dtn.domain import Domain  # noqa: E402
from dtn.nets import Encoder, init_weights  # noqa: E402
from dtn.train import Trainer  # noqa: E402


def setup(**overrides):
    cfg = apply_overrides(preset("tiny"), {"train.device": "cpu", "train.warmup_steps": 0, "train.precision": "fp32",
                                           "loss.gamma": 0.05, **overrides})
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    tgt = rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    torch.manual_seed(0)
    f = Encoder(cfg.nets)
    init_weights(f)
    with torch.no_grad():                       # non-trivial BN running statistics, as pretraining leaves
        f(torch.rand(16, 3, 32, 32) * 2 - 1)
    source = Domain(torch.from_numpy(src).permute(0, 3, 1, 2).contiguous(), torch.arange(16) % 10, "s", "train")
    target = Domain(torch.from_numpy(tgt).permute(0, 3, 1, 2).contiguous(), torch.full((16,), -1), "t", "train")
    trainer = Trainer(cfg, f.eval(), source, target, torch.device("cpu"))
    plain = {k: copy.deepcopy(m).to(memory_format=torch.contiguous_format) for k, m in trainer.modules().items()}
    nets = ref.make_nets(cfg, plain["f"].eval(), plain["g"], plain["d"], float(trainer.code_scale))
    return cfg, trainer, nets, (src, tgt)


@pytest.mark.parametrize("overrides", [{}, {"nets.g_input_norm": True, "loss.tv_power": 2.0},
                                       {"loss.code_scale": "none", "train.channels_last": False},
                                       {"loss.gamma": 0.05, "loss.tv_reduction": "mean"}])
def test_reference_losses_equal_the_trainers(overrides):
    cfg, trainer, nets, _ = setup(**overrides)
    xs, ys, xt = trainer.sample()
    mine = ref.g_losses(nets, xs.contiguous(), xt.contiguous(), cfg)          # before the Trainer's BN
    mine["d"] = ref.d_losses(nets, xs.contiguous(), xt.contiguous())          # running stats move
    _, parts, (gs, gt, *_) = trainer.g_loss(xs, ys, xt)
    parts["d"] = trainer.d_loss(gs, gt, xt)
    assert set(mine) == set(parts) == {"d", "gang", "const", "tid", "tv"}
    for k in mine:
        assert mine[k].item() == pytest.approx(parts[k].item(), rel=1e-5, abs=1e-6), k


def test_reference_dataset_converts_like_domain_batch():
    _, trainer, _, (src, tgt) = setup()
    for images, domain in ((src, trainer.source), (tgt, trainer.target)):
        ds = ref.NumpyImages(images, np.zeros(len(images), np.int64))
        x, _ = domain.batch(torch.tensor([5]))
        torch.testing.assert_close(ds[5][0][None], x, rtol=0, atol=1e-6)


def test_reference_step_trains_g_and_d():
    cfg, trainer, nets, (src, tgt) = setup()
    g0 = [p.detach().clone() for p in nets.g.parameters()]
    d0 = [p.detach().clone() for p in nets.d.parameters()]
    loaders = (ref.make_loader(src, np.arange(16) % 10, 8, 1), ref.make_loader(tgt, np.zeros(16, np.int64), 8, 2))
    log = ref.reference_step(nets, *loaders, cfg, 0, torch.device("cpu"))
    assert {"d", "gang", "const", "tid", "tv", "g_total"} <= set(log) and all(map(math.isfinite, log.values()))
    assert all(not torch.equal(a, b) for a, b in zip(g0, nets.g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, nets.d.parameters()))
