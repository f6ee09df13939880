"""The Trainer's wiring (DESIGN.md §1): which loss updates which parameters, and every config option.

Everything runs the `tiny` preset on random uint8 domains on the CPU; each test takes well under a second.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dtn import losses
from dtn.config import apply_overrides, preset
from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.nets import Encoder, init_weights
from dtn.rundir import RunDir
from dtn.train import Trainer, code_rms

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- helpers

def make_cfg(**overrides):
    """The tiny preset, fp32, no warm-up (so the GAN terms are active from step 0) unless overridden."""
    base = {"train.device": "cpu", "train.warmup_steps": 0, "train.precision": "fp32"}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return apply_overrides(preset("tiny"), base)


def make_domains(seed: int = 0, n: int = 24):
    g = torch.Generator().manual_seed(seed)
    src_images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    src_labels = torch.randint(0, 10, (n,), generator=g)
    tgt_images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    source = Domain(src_images, src_labels, "random-source", "train")
    target = Domain(tgt_images, torch.full((n,), -1, dtype=torch.long), "random-target", "train")
    return source, target


def make_f(cfg, seed: int = 0) -> Encoder:
    """A stand-in for a pretrained f: deterministic random weights with non-trivial BN running stats."""
    torch.manual_seed(seed)
    f = Encoder(cfg.nets)
    init_weights(f)
    with torch.no_grad():  # give BN some running statistics, as pretraining would
        f.train()
        f(torch.rand(16, 3, 32, 32) * 2 - 1)
    return f.eval()


def make_trainer(cfg=None, seed: int = 0, f: Encoder | None = None, **overrides) -> Trainer:
    cfg = cfg or make_cfg(**overrides)
    source, target = make_domains()
    f = f if f is not None else make_f(cfg, seed)
    torch.manual_seed(seed)
    return Trainer(cfg, f, source, target, CPU)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def all_equal(module: nn.Module, snap: dict[str, torch.Tensor], params_only: bool = True) -> bool:
    now = dict(module.named_parameters()) if params_only else module.state_dict()
    return all(torch.equal(now[k].detach(), v) for k, v in snap.items())


def changed_params(module: nn.Module, snap: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, p in module.named_parameters() if not torch.equal(p.detach(), snap[k])]


class StepCounter:
    """Counts optimizer.step() calls through the optimizer's post-step hook."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.n = 0
        opt.register_step_post_hook(self._hook)

    def _hook(self, *_args) -> None:
        self.n += 1


class Spy:
    """Wraps a function in the `losses` module (as train.py calls it) and records the calls."""

    def __init__(self, monkeypatch, name: str) -> None:
        self.calls: list[tuple] = []
        original = getattr(losses, name)

        def wrapper(*args, **kwargs):
            self.calls.append((args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(losses, name, wrapper)


def finite(out) -> bool:
    return all(math.isfinite(v) for v in out.items().values())


# ----------------------------------------------------------------------------- which loss updates what

def test_g_update_changes_only_g():
    t = make_trainer()
    f0, d0, g0 = params_snapshot(t.f), params_snapshot(t.d), params_snapshot(t.g)
    parts, fakes = t.g_update()
    assert all_equal(t.f, f0), "L_G must not update f (frozen by default)"
    assert all_equal(t.d, d0), "L_G must not update D"
    assert all(p.grad is None for p in t.f.parameters()), "frozen f must get no .grad"
    assert all(p.grad is None for p in t.d.parameters()), "L_G must not leave grads on D"
    assert changed_params(t.g, g0) == list(g0), "every parameter of g should move after one Adam step"
    assert all(p.requires_grad for p in t.d.parameters()), "D must be trainable again after the G update"
    assert not any(p.requires_grad for p in t.f.parameters())
    assert {"const", "tid", "gang", "g_total"} <= set(parts)
    assert not fakes[0].requires_grad and not fakes[1].requires_grad


def test_g_optimizer_holds_only_g_when_f_frozen():
    t = make_trainer()
    in_opt = {id(p) for group in t.opt_g.param_groups for p in group["params"]}
    assert in_opt == {id(p) for p in t.g.parameters()}
    assert {id(p) for group in t.opt_d.param_groups for p in group["params"]} == {id(p) for p in t.d.parameters()}


@pytest.mark.parametrize("reuse_fakes", [False, True])
def test_d_update_changes_only_d(reuse_fakes):
    t = make_trainer()
    fakes = None
    if reuse_fakes:
        _, fakes = t.g_update()
        for p in t.g.parameters():
            p.grad = None
    f0, d0, g0 = params_snapshot(t.f), params_snapshot(t.d), params_snapshot(t.g)
    loss = t.d_update(fakes)
    assert loss is not None and math.isfinite(loss.item())
    assert all_equal(t.g, g0), "L_D must not update g"
    assert all_equal(t.f, f0), "L_D must not update f"
    assert all(p.grad is None for p in t.g.parameters()), "L_D must not put grads on g"
    assert all(p.grad is None for p in t.f.parameters())
    assert changed_params(t.d, d0) == list(d0), "every parameter of D should move after one Adam step"


def test_d_loss_detaches_generated_images():
    t = make_trainer()
    xs, _, xt = t.sample()
    gs, gt = t.g(t.f(xs)), t.g(t.f(xt))
    assert gs.requires_grad and gt.requires_grad  # the fakes are attached to g here ...
    loss = t.d_loss(gs, gt, xt)
    loss.backward()
    assert all(p.grad is None for p in t.g.parameters()), "... and L_D must not reach g through them"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.d.parameters())


def test_const_backpropagates_through_frozen_f_into_g():
    """f(G(x)) in L_CONST carries gradient into g although f itself is frozen."""
    t = make_trainer(loss__alpha=1.0, loss__beta=0.0, loss__gan=False)
    xs, ys, xt = t.sample()
    total, parts, _ = t.g_loss(xs, ys, xt)
    assert set(parts) == {"const", "tid"}
    total.backward()
    for name, p in t.g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"L_CONST gave no gradient to g.{name}"
    assert all(p.grad is None for p in t.f.parameters())


def test_const_alone_trains_g():
    t = make_trainer(loss__alpha=1.0, loss__beta=0.0, loss__gan=False)
    g0, f0 = params_snapshot(t.g), params_snapshot(t.f)
    t.g_update()
    assert changed_params(t.g, g0)
    assert all_equal(t.f, f0)


def test_zero_weights_give_no_gradient():
    """Control for the test above: with alpha = beta = 0 and no GAN there is nothing to learn from."""
    t = make_trainer(loss__alpha=0.0, loss__beta=0.0, loss__gan=False)
    xs, ys, xt = t.sample()
    total, _, _ = t.g_loss(xs, ys, xt)
    total.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in t.g.parameters())


def test_frozen_f_stays_in_eval_mode():
    t = make_trainer()
    assert not t.f.training
    buffers0 = snapshot(t.f)
    for _ in range(2):
        t.train_step()
    assert not t.f.training
    assert all_equal(t.f, buffers0, params_only=False), "BN running stats of a frozen f must not move"


def test_tid_uses_target_images(monkeypatch):
    spy = Spy(monkeypatch, "tid_loss")
    t = make_trainer(loss__gan=False)
    xs, ys, xt = t.sample()
    gs, gt = t.g_loss(xs, ys, xt)[2][:2]
    (args, _kw), = spy.calls
    assert torch.equal(args[0], xt) and torch.equal(args[1], gt)


def test_g_total_combines_weighted_terms():
    t = make_trainer(loss__alpha=2.0, loss__beta=3.0, loss__gamma=0.5)
    out = t.train_step().items()
    expected = 2.0 * out["const"] + 3.0 * out["tid"] + 0.5 * out["tv"] + out["gang"]
    assert out["g_total"] == pytest.approx(expected, rel=1e-5)


def test_alpha_schedule_holds_l_const_off_then_ramps_it_up():
    """loss.alpha_start_step 2, alpha_ramp_steps 4: L_CONST weighs 0 for steps 0-1, then 1/4, 2/4, 3/4
    of alpha, then alpha; the total G loss is built with that weight (g learns the look first)."""
    t = make_trainer(loss__alpha=2.0, loss__beta=3.0, loss__gamma=0.5, loss__alpha_start_step=2,
                     loss__alpha_ramp_steps=4)
    weights = []
    for _ in range(7):
        weights.append(t.alpha_now)
        out = t.train_step().items()
        rest = 3.0 * out["tid"] + 0.5 * out["tv"] + out["gang"]
        assert out["g_total"] == pytest.approx(weights[-1] * out["const"] + rest, rel=1e-5)
    assert weights == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert make_trainer(loss__alpha=2.0, loss__alpha_start_step=3).alpha_now == 0.0
    jump = make_trainer(loss__alpha=2.0, loss__alpha_start_step=1)
    jump.train_step()
    assert jump.alpha_now == 2.0, "no ramp: the full weight from alpha_start_step on"
    with pytest.raises(ConfigError, match="alpha_ramp_steps"):
        make_cfg(loss__alpha_ramp_steps=-1).validate()


# ----------------------------------------------------------------------------- options

@pytest.mark.parametrize("distance", ["mse", "cosine", "mse+cosine"])
def test_const_distance(monkeypatch, distance):
    spy = Spy(monkeypatch, "const_loss")
    t = make_trainer(loss__const_distance=distance)
    out = t.train_step()
    assert finite(out)
    (args, _kw), = spy.calls
    code_x, code_gx, used_distance, scale = args
    assert used_distance == distance
    assert scale == pytest.approx(float(t.code_scale))
    assert not code_x.requires_grad, "f(x) is a fixed target when f is frozen"
    assert code_gx.requires_grad, "f(G(x)) must carry gradient to g"


@pytest.mark.parametrize("distance", ["kl", "mse+kl"])
def test_const_distance_kl_compares_f_class_distributions(monkeypatch, distance):
    """kl: f's head on x vs on G(x), no labels; mse+kl: the code MSE plus that KL, in one L_CONST."""
    spy_kl, spy_mse = Spy(monkeypatch, "const_kl_loss"), Spy(monkeypatch, "const_loss")
    t = make_trainer(loss__const_distance=distance)
    xs, ys, xt = t.sample()
    total, parts, _ = t.g_loss(xs, ys, xt)
    (args, _kw), = spy_kl.calls
    with torch.no_grad():
        want_x = t.f.head[-1](t.f(xs).relu())
    assert torch.allclose(args[0], want_x, atol=1e-5) and not args[0].requires_grad
    assert args[1].requires_grad, "f's reading of G(x) must carry gradient to g"
    assert len(spy_mse.calls) == (distance == "mse+kl")
    kl = losses.const_kl_loss(args[0], args[1])
    mse = losses.const_loss(*spy_mse.calls[0][0]) if distance == "mse+kl" else 0.0
    assert float(parts["const"].detach()) == pytest.approx(float((kl + mse).detach()), rel=1e-5)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t.g.parameters())
    assert all(p.grad is None for p in t.f.parameters())


def test_const_distance_ce_uses_source_labels(monkeypatch):
    spy_mse = Spy(monkeypatch, "const_loss")
    spy_ce = Spy(monkeypatch, "const_ce_loss")
    t = make_trainer(loss__const_distance="ce")
    sampled = []
    original_sample = t.sample

    def sample():
        batch = original_sample()
        sampled.append(batch)
        return batch

    t.sample = sample
    out = t.train_step()
    assert finite(out)
    assert not spy_mse.calls
    (args, _kw), = spy_ce.calls
    logits, labels = args
    assert logits.shape == (t.cfg.train.batch_size, t.cfg.nets.num_classes)
    assert logits.requires_grad
    assert torch.equal(labels, sampled[0][1]), "ce must compare f's head on G(x) with x's label"


def test_const_ce_trains_g_not_f():
    t = make_trainer(loss__const_distance="ce", loss__beta=0.0, loss__gan=False)
    g0, f0 = params_snapshot(t.g), params_snapshot(t.f)
    t.g_update()
    assert changed_params(t.g, g0)
    assert all_equal(t.f, f0)
    assert all(p.grad is None for p in t.f.parameters())


def test_binary_discriminator(monkeypatch):
    spies = {n: Spy(monkeypatch, n) for n in ("binary_d_loss", "binary_g_loss", "ternary_d_loss", "ternary_g_loss")}
    t = make_trainer(loss__discriminator="binary", nets__d_classes=2)
    assert t.d(torch.zeros(4, 1, 32, 32)).shape == (4, 2)
    out = t.train_step()
    assert {"gang", "d"} <= set(out.values) and finite(out)
    assert len(spies["binary_d_loss"].calls) == 1 and len(spies["binary_g_loss"].calls) == 1
    assert not spies["ternary_d_loss"].calls and not spies["ternary_g_loss"].calls


def test_ternary_discriminator_is_default(monkeypatch):
    spies = {n: Spy(monkeypatch, n) for n in ("binary_d_loss", "ternary_d_loss")}
    t = make_trainer()
    assert t.d(torch.zeros(4, 1, 32, 32)).shape == (4, 3)
    t.train_step()
    assert len(spies["ternary_d_loss"].calls) == 1 and not spies["binary_d_loss"].calls


def test_f_trainable_updates_f():
    t = make_trainer(train__f_trainable=True)
    assert t.f.training
    f0, d0 = params_snapshot(t.f), params_snapshot(t.d)
    t.g_update()
    assert changed_params(t.f, f0), "with f_trainable, L_G must update f"
    assert all_equal(t.d, d0)
    in_opt = {id(p) for group in t.opt_g.param_groups for p in group["params"]}
    assert {id(p) for p in t.f.parameters()} <= in_opt


def test_f_mode_random_keeps_f_frozen():
    cfg = make_cfg(train__f_mode="random")
    f = make_f(cfg, seed=5)
    given = snapshot(f)
    t = make_trainer(cfg, f=f)
    assert all_equal(t.f, given, params_only=False), "random f is used as given (not re-initialised)"
    assert not t.f.training and not any(p.requires_grad for p in t.f.parameters())
    for _ in range(2):
        out = t.train_step()
    assert finite(out)
    assert all_equal(t.f, given, params_only=False)
    assert all(p.grad is None for p in t.f.parameters())


def test_f_mode_joint_trains_f_from_scratch():
    cfg = make_cfg(train__f_mode="joint")
    f = make_f(cfg, seed=5)
    given = params_snapshot(f)
    t = make_trainer(cfg, f=f)
    assert changed_params(t.f, given), "joint mode re-initialises f (G without a pretrained f)"
    assert t.f.training and all(p.requires_grad for p in t.f.parameters())
    f0 = params_snapshot(t.f)
    out = t.train_step()
    assert finite(out)
    assert changed_params(t.f, f0), "joint mode trains f with g"


def test_gan_off():
    t = make_trainer(loss__gan=False)
    d0, d_buffers = params_snapshot(t.d), snapshot(t.d)
    counter = StepCounter(t.opt_d)
    for _ in range(3):
        out = t.train_step()
        assert "gang" not in out.values and "d" not in out.values
    assert counter.n == 0
    assert all_equal(t.d, d0)
    assert all_equal(t.d, d_buffers, params_only=False), "without a GAN, D is never even run"


@pytest.mark.parametrize("d_steps,g_steps", [(2, 3), (1, 1), (0, 2)])
def test_update_ratios(d_steps, g_steps):
    t = make_trainer(train__d_steps=d_steps, train__g_steps=g_steps)
    cg, cd = StepCounter(t.opt_g), StepCounter(t.opt_d)
    for _ in range(2):
        t.train_step()
    assert (cg.n, cd.n) == (2 * g_steps, 2 * d_steps)
    p = next(t.g.parameters())
    assert int(t.opt_g.state[p]["step"]) == 2 * g_steps
    if d_steps:
        q = next(t.d.parameters())
        assert int(t.opt_d.state[q]["step"]) == 2 * d_steps
    assert t.step == 2


def test_d_loss_floor_skips_d_updates():
    t = make_trainer(train__d_loss_floor=100.0)  # L_D (about 3 log 3 here) is always below this floor
    cd = StepCounter(t.opt_d)
    seen = []
    for _ in range(4):
        out = t.train_step()
        seen.append("d" in out.values)
    # measured -> below the floor -> skipped once (and re-measured next time) -> ...
    assert seen == [True, False, True, False]
    assert cd.n == 2


def test_d_loss_floor_below_loss_never_skips():
    t = make_trainer(train__d_loss_floor=1e-3)
    cd = StepCounter(t.opt_d)
    for _ in range(3):
        assert "d" in t.train_step().values
    assert cd.n == 3


def test_sgd_step_follows_formula():
    t = make_trainer(optim__optimizer="sgd", optim__lr_g=0.05, optim__lr_d=0.02, optim__weight_decay=0.1,
                     optim__momentum=0.9)
    assert isinstance(t.opt_g, torch.optim.SGD) and isinstance(t.opt_d, torch.optim.SGD)
    t._set_lr()
    assert t.opt_g.param_groups[0]["lr"] == pytest.approx(0.05)
    assert t.opt_d.param_groups[0]["lr"] == pytest.approx(0.02)
    assert t.opt_g.param_groups[0]["momentum"] == 0.9
    g0 = params_snapshot(t.g)
    t.g_update()
    for name, p in t.g.named_parameters():
        # first SGD step: the momentum buffer is the (decayed) gradient itself
        expected = g0[name] - 0.05 * (p.grad + 0.1 * g0[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


def test_adam_betas_lr_and_weight_decay():
    t = make_trainer(optim__lr_g=1e-3, optim__lr_d=5e-4, optim__beta1=0.7, optim__beta2=0.95,
                     optim__weight_decay=0.01)
    assert isinstance(t.opt_g, torch.optim.Adam)
    for opt, lr in ((t.opt_g, 1e-3), (t.opt_d, 5e-4)):
        group = opt.param_groups[0]
        assert group["lr"] == pytest.approx(lr)
        assert group["betas"] == (0.7, 0.95)
        assert group["weight_decay"] == 0.01
    g0 = params_snapshot(t.g)
    t.g_update()
    for name, p in t.g.named_parameters():
        grad = p.grad + 0.01 * g0[name]
        state = t.opt_g.state[p]
        torch.testing.assert_close(state["exp_avg"], (1 - 0.7) * grad)
        torch.testing.assert_close(state["exp_avg_sq"], (1 - 0.95) * grad * grad)
        # first Adam step moves each weight by lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps)
        step = 1e-3 * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(p.detach(), g0[name] - step, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_lr_schedule(schedule):
    total = 4
    t = make_trainer(optim__schedule=schedule, optim__lr_g=1e-3, optim__lr_d=4e-4, train__steps=total,
                     loss__gan=False)
    formula = {"constant": lambda k: 1.0,
               "cosine": lambda k: 0.5 * (1 + math.cos(math.pi * k / total)),
               "linear": lambda k: 1 - k / total}[schedule]
    for k in range(total):
        t.train_step()  # step k uses the lr of step k
        assert t.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * formula(k)), k
        assert t.opt_d.param_groups[0]["lr"] == pytest.approx(4e-4 * formula(k)), k
    assert t._lr_factor(total) == pytest.approx(formula(total), abs=1e-12)
    assert t._lr_factor(10 * total) == pytest.approx(formula(total), abs=1e-12)  # no rebound after the end


def test_leaky_slope_zero_uses_relu():
    t = make_trainer(nets__leaky_slope=0.0)
    kinds = {type(m) for m in t.d.modules()}
    assert nn.ReLU in kinds and nn.LeakyReLU not in kinds
    assert finite(t.train_step())
    default = make_trainer()
    slopes = {m.negative_slope for m in default.d.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


def test_d_downsample_maxpool():
    t = make_trainer(nets__d_downsample="maxpool")
    pools = [m for m in t.d.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # one per block at 32 px
    convs = [m for m in t.d.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert t.d(torch.zeros(5, 1, 32, 32)).shape == (5, 3)
    assert finite(t.train_step())
    default = make_trainer()
    assert not any(isinstance(m, nn.MaxPool2d) for m in default.d.modules())


def test_warmup_has_no_gan():
    t = make_trainer(train__warmup_steps=2)
    cd = StepCounter(t.opt_d)
    d0 = params_snapshot(t.d)
    for _ in range(2):
        assert t.in_warmup and not t.gan_active
        out = t.train_step()
        assert "gang" not in out.values and "d" not in out.values
    assert cd.n == 0 and all_equal(t.d, d0)
    assert not t.in_warmup
    out = t.train_step()
    assert {"gang", "d"} <= set(out.values)
    assert cd.n == 1 and changed_params(t.d, d0)


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision(precision, dtype):
    t = make_trainer(train__precision=precision)
    out = t.train_step()
    assert finite(out)
    assert all(v.dtype == torch.float32 for v in out.values.values()), "losses are computed in fp32"
    _, (gs, gt, *_) = t.g_update()
    assert gs.dtype == dtype and gt.dtype == dtype
    assert all(p.dtype == torch.float32 for p in t.g.parameters()), "weights stay fp32 under autocast"
    assert t.transfer(torch.zeros(2, 3, 32, 32)).dtype == torch.float32


def test_gamma_adds_tv(monkeypatch):
    spy = Spy(monkeypatch, "tv_loss")
    assert "tv" not in make_trainer().train_step().values
    assert not spy.calls
    t = make_trainer(loss__gamma=0.05, loss__tv_power=2.0, loss__tv_reduction="mean")
    out = t.train_step()
    assert "tv" in out.values and out.items()["tv"] >= 0
    (args, _kw), = spy.calls
    images, power, reduction = args
    assert images.shape == (2 * t.cfg.train.batch_size, 1, 32, 32) and power == 2.0 and reduction == "mean"


def test_code_scale():
    t = make_trainer(loss__code_scale="rms")
    expected = code_rms(t.f, t.source)
    assert float(t.code_scale) == pytest.approx(expected)
    assert expected != pytest.approx(1.0)
    assert float(make_trainer(loss__code_scale="none").code_scale) == 1.0


def test_channels_last_option():
    t = make_trainer(train__channels_last=False)
    assert finite(t.train_step())
    xs, _, _ = t.sample()
    assert xs.is_contiguous()


def test_transfer_restores_modes():
    t = make_trainer(train__f_trainable=True)
    out = t.transfer(torch.zeros(3, 3, 32, 32))
    assert out.shape == (3, 1, 32, 32) and out.abs().max() <= 1
    assert t.g.training and t.f.training


@pytest.mark.parametrize("code_scale", ["rms", "domain"])   # domain: the moments L_CONST measured are reused
def test_g_code_align_has_g_read_source_codes_with_the_target_s_moments(code_scale):
    """nets.g_code_align: g reads f(x) standardised per dimension by the source's code moments and given the
    target's; target codes reach g as they are; G(x) outside training (Trainer.transfer) reads the same."""
    from dtn.train import code_moments
    off = make_trainer()
    assert "align_scale" not in off.g.state_dict() and off.g.align(torch.ones(2, 3)).equal(torch.ones(2, 3))
    t = make_trainer(nets__g_code_align="true", train__g_ema="0.9", loss__code_scale=code_scale)
    src, tgt = code_moments(t.f, t.source), code_moments(t.f, t.target)
    seen = []
    t.g.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    xs, ys, xt = t.sample()
    cs, ct, _, _ = t.generate(xs, xt)
    n = xs.shape[0]
    assert torch.allclose(seen[0][:n], (cs - src[0]) / src[1] * tgt[1] + tgt[0], atol=1e-4)
    assert torch.equal(seen[0][n:], ct)
    assert (seen[0][:n] - cs).norm() > 0.05 * cs.norm(), "the aligned code is not f's own"
    # on the moment subset itself, the aligned source codes have the target's per-dimension mean and std
    aligned = t.g.align(torch.cat([t.f(x) for x, _ in t.source.subset(2048, seed=1).in_order(512)]).detach())
    assert torch.allclose(aligned.mean(0), tgt[0], atol=1e-4) and torch.allclose(aligned.std(0), tgt[1], atol=1e-4)
    assert torch.equal(t.g_ema.align_shift, t.g.align_shift), "the average reads as g does"
    x = xs[:4]
    with torch.no_grad():
        t.g_ema.eval(), t.f.eval()
        want = t.g_ema(t.g.align(t.f(x)))
    assert torch.allclose(t.transfer(x), want, atol=1e-5)


def test_g_code_align_needs_a_frozen_f():
    for over in ({"train.f_mode": "joint"}, {"train.f_trainable": "true"}):
        with pytest.raises(ConfigError, match="g_code_align"):
            apply_overrides(preset("tiny"), {"nets.g_code_align": "true", **over}).validate()


# ----------------------------------------------------------------------------- exact resume

def _run(trainer: Trainer, steps: int) -> list[dict[str, torch.Tensor]]:
    return [trainer.train_step().values for _ in range(steps)]


@pytest.mark.parametrize("ema,layout,align", [(0.0, 0.0, False), (0.9, 0.0, False), (0.0, 5.0, False),
                                              (0.9, 0.0, True)])
def test_exact_resume(tmp_path, ema, layout, align):
    cfg = make_cfg(train__steps=6, train__warmup_steps=1, optim__schedule="cosine", train__g_steps=2,
                   train__d_steps=2, train__g_ema=ema, loss__class_layout=layout,
                   nets__g_code_align=str(align).lower())
    straight = make_trainer(cfg, seed=0)
    full = _run(straight, 6)

    first = make_trainer(cfg, seed=0)
    head = _run(first, 3)
    for a, b in zip(head, full[:3]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = RunDir.create(tmp_path / "run", cfg)
    run.save_checkpoint(first)
    del first

    torch.manual_seed(1234)  # the fresh trainer starts from different weights and a different RNG
    fresh = make_trainer(cfg, seed=99)
    assert not torch.equal(next(fresh.g.parameters()), next(straight.g.parameters()))
    if layout:
        fresh.layouts += 1        # computed from another f: the checkpoint's must replace them
    if align:
        assert not torch.equal(fresh.g.align_shift, straight.g.align_shift), "measured with another f"
    assert run.load_checkpoint(fresh) == 3
    tail = _run(fresh, 3)
    for step, (a, b) in enumerate(zip(tail, full[3:]), start=4):
        assert a.keys() == b.keys(), step
        for k in a:
            assert torch.equal(a[k], b[k]), f"step {step}: {k} differs after resume ({a[k]} vs {b[k]})"
    assert set(fresh.modules()) == ({"f", "g", "d", "g_ema"} if ema else {"f", "g", "d"})
    for name, module in straight.modules().items():
        want, got = module.state_dict(), fresh.modules()[name].state_dict()
        for k in want:
            assert torch.equal(want[k], got[k]), f"{name}.{k} differs after resume"
    assert fresh.step == straight.step == 6
    assert torch.equal(fresh.generator.get_state(), straight.generator.get_state())


@pytest.mark.parametrize("on", [False, True])
def test_const_augment_feeds_f_a_jittered_g_of_x_and_keeps_gradients(monkeypatch, on):
    import dtn.train as train_mod

    calls = []
    real = train_mod.jitter

    def spy(x, generator):
        calls.append(x.shape)
        return real(x, generator)

    monkeypatch.setattr(train_mod, "jitter", spy)
    tr = make_trainer(loss__const_augment=str(on).lower(), loss__beta="0", loss__gan="false")
    before = params_snapshot(tr.g)
    tr.g_update()
    assert bool(calls) == on
    assert not all_equal(tr.g, before), "L_CONST through the jittered G(x) still trains g"


def test_jitter_shifts_within_two_pixels_and_is_seeded():
    from dtn.train import jitter

    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1
    a = jitter(x, torch.Generator().manual_seed(0))
    b = jitter(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    ys, xs = torch.nonzero(a[-1, 0] > 0.5, as_tuple=True)  # the last image is never blurred
    assert ys.min() >= 1 and ys.max() <= 6 and xs.min() >= 1 and xs.max() <= 6


# ----------------------------------------------------------------------------- L_LAYOUT and confident targets

def test_class_layout_off_by_default_and_when_on_it_trains_g_only():
    off = make_trainer()
    assert off.layouts is None and "layout" not in off.train_step().values
    assert make_trainer(loss__class_layout="10", loss__class_layout_grid="4").layouts.shape == (10, 16)
    tr = make_trainer(loss__class_layout="10", loss__alpha="0", loss__beta="0", loss__gan="false")
    assert tr.layouts.shape == (10, 64)     # 10 classes, 1 target channel x 8 x 8
    f_before, g_before, d_before = snapshot(tr.f), params_snapshot(tr.g), snapshot(tr.d)
    parts, _ = tr.g_update()
    assert parts["layout"].item() != 0
    assert not all_equal(tr.g, g_before), "L_LAYOUT alone trains g"
    assert all_equal(tr.f, f_before, params_only=False) and all_equal(tr.d, d_before, params_only=False)


def test_target_reader_off_by_default_and_when_on_it_trains_g_only():
    assert make_trainer().reader is None and "read" not in make_trainer().train_step().values
    with pytest.raises(ConfigError, match="target_reader"):
        make_trainer(loss__target_reader="5")          # on, but no reader given
    cfg = make_cfg(loss__target_reader="50", loss__alpha="0", loss__beta="0", loss__gan="false")
    reader = make_f(cfg, seed=3)
    tr = Trainer(cfg, make_f(cfg), *make_domains(), CPU, reader=reader)
    f_before, g_before, d_before, r_before = snapshot(tr.f), params_snapshot(tr.g), snapshot(tr.d), snapshot(reader)
    losses_seen = [tr.g_update()[0]["read"].item() for _ in range(8)]
    assert not all_equal(tr.g, g_before), "L_READ alone trains g"
    assert all_equal(tr.f, f_before, params_only=False) and all_equal(tr.d, d_before, params_only=False)
    assert all_equal(reader, r_before, params_only=False) and all(p.grad is None for p in reader.parameters())
    assert losses_seen[-1] < losses_seen[0], f"g learns to make the reader agree with f: {losses_seen}"


def test_target_classes_by_reader_tell_a_conditional_d_and_l_layout_the_reader_s_readings(reads_brightness):
    """loss.target_classes_by_reader: real targets (and G(t)) are conditioned on the reader's reading of t,
    G(x) still on f's reading of x, and the class layouts are the reader's classes' means."""
    from dtn.train import class_layouts
    over = dict(loss__target_reader="5", nets__d_conditional="true", loss__class_layout="5")
    cfg = make_cfg(**over, loss__target_classes_by_reader="true")
    reader = reads_brightness(classes=10)
    t = Trainer(cfg, make_f(cfg), *make_domains(), CPU, reader=reader)
    xs, _, xt = t.sample()
    cs, ct, _, _ = t.generate(xs, xt)
    ys_hat, yt_hat = t.d_conditions(cs, ct, xt)
    assert torch.equal(yt_hat, reader.classify(xt).argmax(1)) and torch.equal(ys_hat, t.f_logits(cs).argmax(1))
    assert not torch.equal(yt_hat, t.f_logits(ct).argmax(1)), "not f's reading"
    assert torch.equal(t.layouts, class_layouts(reader, t.target, cfg.loss.class_layout_grid))
    plain = Trainer(make_cfg(**over), make_f(cfg), *make_domains(), CPU, reader=reader)
    assert torch.equal(plain.d_conditions(cs, ct, xt)[1], plain.f_logits(ct).argmax(1))
    with pytest.raises(ConfigError, match="set loss.target_classes_by_reader=false too"):
        make_cfg(loss__target_classes_by_reader="true").validate()


def test_class_layouts_are_the_mean_target_layout_per_class_f_reads(reads_brightness):
    from dtn.metrics.pixel_fd import pooled_pixels
    from dtn.train import class_layouts

    images = torch.cat([torch.zeros(3, 1, 16, 16, dtype=torch.uint8), torch.full((2, 1, 16, 16), 255, dtype=torch.uint8)])
    target = Domain(images, torch.full((5,), -1), "t", "train")
    means = class_layouts(reads_brightness(classes=3), target, batch=2)
    x = images.float() / 127.5 - 1
    assert torch.allclose(means[0], pooled_pixels(x[:3]).mean(0)) and torch.allclose(means[1], pooled_pixels(x[3:]).mean(0))
    assert torch.allclose(means[2], pooled_pixels(x).mean(0)), "a class f never reads gets the overall mean"


def test_confident_targets_keeps_the_images_f_reads_surely(reads_brightness):
    from dtn.pretrain import confident_readings
    from dtn.train import confident_targets

    levels = torch.tensor([0, 10, 124, 128, 131, 250], dtype=torch.uint8)   # grey (~127.5) is unsure
    target = Domain(levels.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous(), torch.arange(6), "t", "train")
    kept = confident_readings(reads_brightness(sharpness=20), target, 0.9, "x", batch=4)
    assert kept.images[:, 0, 0, 0].tolist() == [0, 10, 250] and kept.images.shape == (3, 1, 4, 4)
    assert kept.labels.tolist() == [0, 0, 1], "labelled with f's readings, not the target's labels"
    assert confident_targets(reads_brightness(sharpness=20), target, 0.9).images.equal(kept.images)
    with pytest.raises(ConfigError, match="target_min_confidence"):
        confident_targets(reads_brightness(sharpness=20), Domain(target.images[2:5], target.labels[2:5], "t", "train"), 0.9)


def test_target_min_confidence_off_by_default_and_on_it_trains_on_fewer_targets():
    assert len(make_trainer().target) == 24
    f = make_f(make_cfg())
    with torch.no_grad():
        f.head[-1].weight.mul_(3000)      # a random f reads every image alike: spread its confidence
    tr = make_trainer(f=f, train__target_min_confidence="0.4")
    assert 0 < len(tr.target) < 24
    tr.train_step()


# ----------------------------------------------------------------------------- g_ema (deviation)

def test_g_ema_off_by_default():
    t = make_trainer()
    t.train_step()
    assert t.g_ema is None and t.g_eval is t.g and "g_ema" not in t.modules()


def test_g_ema_copies_g_in_warmup_then_averages():
    t = make_trainer(train__g_ema=0.9, train__warmup_steps=1)
    t.train_step()                                    # warm-up: the average is g itself
    assert all(torch.equal(a, b) for a, b in zip(t.g_ema.state_dict().values(), t.g.state_dict().values()))
    before = params_snapshot(t.g_ema)
    for _ in range(3):
        t.train_step()
    ema, g = dict(t.g_ema.named_parameters()), dict(t.g.named_parameters())
    assert changed_params(t.g_ema, before), "the average never moved"
    assert any(not torch.equal(ema[k], g[k]) for k in g), "after GAN updates the average should lag g"
    assert all(not p.requires_grad and p.grad is None for p in t.g_ema.parameters())
    assert t.ema_updates == 3 * t.cfg.train.g_steps


def test_g_ema_lerp_weight_follows_ramp():
    t = make_trainer(train__g_ema=0.99)
    for p in t.g_ema.parameters():
        p.data.zero_()
    t.update_ema()                                   # k = 0: decay min(.99, 1/10) -> weight .9 on g
    p_ema, p_g = next(t.g_ema.parameters()), next(t.g.parameters())
    assert torch.allclose(p_ema, 0.9 * p_g.detach())


def test_transfer_uses_g_ema():
    t = make_trainer(train__g_ema=0.9)
    with torch.no_grad():
        for p in t.g_ema.parameters():
            p.add_(torch.randn_like(p))
    x = torch.zeros(2, 3, 32, 32)
    t.g_ema.eval()
    with torch.no_grad():
        want = t.g_ema(t.f(x))
        other = t.g.eval()(t.f(x))
    t.g.train()
    assert torch.allclose(t.transfer(x), want) and not torch.allclose(want, other)


def spy_const_codes(monkeypatch) -> dict[str, torch.Tensor]:
    """Records the two codes L_CONST compares (keys x and gx) on each call of losses.const_loss."""
    seen, real_const_loss = {}, losses.const_loss

    def spy(code_x, code_gx, distance, scale):
        seen.update(x=code_x.detach(), gx=code_gx.detach())
        return real_const_loss(code_x, code_gx, distance, scale)
    monkeypatch.setattr(losses, "const_loss", spy)
    return seen


@pytest.mark.parametrize("factor", [1, 4])
def test_const_lowpass_has_f_read_x_and_g_of_x_without_fine_detail(monkeypatch, factor):
    """loss.const_lowpass: L_CONST compares f(lowpass(x)) with f(lowpass(G(x))), and still trains g."""
    from dtn.augment import lowpass
    t = make_trainer(loss__const_lowpass=str(factor), loss__beta="0", loss__gan="false")
    seen = spy_const_codes(monkeypatch)
    xs, ys, xt = t.sample()
    total, _, fakes = t.g_loss(xs, ys, xt)
    with torch.no_grad():
        want_x, want_gx = t.f(lowpass(xs, factor)), t.f(lowpass(fakes.gs, factor))
        sharp_x = t.f(xs)
    assert torch.allclose(seen["x"], want_x, atol=1e-5) and torch.allclose(seen["gx"], want_gx, atol=1e-5)
    assert torch.allclose(seen["x"], sharp_x, atol=1e-5) == (factor == 1)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.g.parameters())
    assert all(p.grad is None for p in t.f.parameters())


@pytest.mark.parametrize("factor", [1, 4])
def test_const_lowpass_has_the_reader_read_g_of_x_without_fine_detail(factor):
    """L_READ reads G(x) as L_CONST does: the reader gets lowpass(G(x)), so g cannot pass it in finer detail."""
    from dtn.augment import lowpass

    class Recorder(torch.nn.Module):
        def __init__(self, reader):
            super().__init__()
            self.reader, self.seen = reader, []

        def classify(self, x):
            self.seen.append(x.detach())
            return self.reader.classify(x)
    cfg = make_cfg(loss__target_reader="50", loss__const_lowpass=str(factor), loss__beta="0", loss__gan="false")
    reader = Recorder(make_f(cfg, seed=3))
    tr = Trainer(cfg, make_f(cfg), *make_domains(), CPU, reader=reader)
    xs, ys, xt = tr.sample()
    _, parts, fakes = tr.g_loss(xs, ys, xt)
    assert "read" in parts and len(reader.seen) == 1
    assert torch.allclose(reader.seen[0], lowpass(fakes.gs, factor).detach(), atol=1e-6)
    assert torch.allclose(reader.seen[0], fakes.gs.detach(), atol=1e-6) == (factor == 1)


def test_const_lowpass_code_stats_are_those_of_low_passed_images():
    from dtn.train import code_moments
    t = make_trainer(loss__const_lowpass="4", loss__code_scale="domain")
    assert torch.allclose(t.code_stats[:2], code_moments(t.f, t.source, low=4), atol=1e-5)
    assert not torch.allclose(t.code_stats[:2], code_moments(t.f, t.source), atol=1e-5)


@pytest.mark.parametrize("factor", ["0", "3"])
def test_const_lowpass_must_divide_the_image_size(factor):
    from dtn.errors import ConfigError
    with pytest.raises(ConfigError, match="const_lowpass"):
        make_cfg(loss__const_lowpass=factor).validate()


def test_g_ema_out_of_range_is_refused():
    from dtn.errors import ConfigError
    with pytest.raises(ConfigError, match="g_ema"):
        make_cfg(train__g_ema=1.0).validate()


def test_code_scale_domain_standardises_each_side_with_its_own_domain(monkeypatch):
    t = make_trainer(loss__code_scale="domain")
    assert t.code_stats.shape == (4, t.cfg.nets.code_dim) and (t.code_stats[[1, 3]] > 0).all()
    seen = spy_const_codes(monkeypatch)
    xs, ys, xt = t.sample()
    with torch.no_grad():
        gs = t.g_loss(xs, ys, xt)[2].gs
        raw_x, raw_gx = t.f(xs), t.f(gs)
    assert torch.allclose(seen["x"], (raw_x - t.code_stats[0]) / t.code_stats[1], atol=1e-5)
    assert torch.allclose(seen["gx"], (raw_gx - t.code_stats[2]) / t.code_stats[3], atol=1e-5)
    state = t.state_dict()
    other = make_trainer(loss__code_scale="domain")
    other.code_stats.zero_()
    other.load_state_dict(state)
    assert torch.equal(other.code_stats, t.code_stats)


def test_conditional_d_reads_the_classes_f_predicts():
    """nets.d_conditional: G(x) is judged under x's class as f's head reads it, G(t) and t under t's;
    the same classes in the G and the D update, and no label is read (the target has none)."""
    t = make_trainer(nets__d_conditional=True)
    seen = []
    forward = t.d.forward
    t.d.forward = lambda x, cls=None: (seen.append(cls), forward(x, cls))[1]
    xs, ys, xt = t.sample()
    with torch.no_grad():   # a head centred on these images, so that it reads several classes in them
        linear = t.f.head[-1]
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=torch.Generator().manual_seed(3)))
        linear.bias.copy_(-linear.weight @ torch.cat([t.f(xs), t.f(xt)]).relu().mean(0))
        want_s, want_t = linear(t.f(xs).relu()).argmax(1), linear(t.f(xt).relu()).argmax(1)
    _, fakes = t.g_update((xs, ys, xt))
    assert [c.tolist() for c in seen] == [want_s.tolist(), want_t.tolist()]
    seen.clear()
    t.d_update(fakes)
    assert [c.tolist() for c in seen] == [want_s.tolist(), want_t.tolist(), want_t.tolist()]
    assert len(set(want_s.tolist())) > 1, "the test needs f to read more than one class"
    out = t.train_step()
    assert finite(out) and "d" in out.values


def test_conditional_d_needs_a_classifier_f():
    from dtn.errors import ConfigError
    with pytest.raises(ConfigError, match="d_conditional"):
        make_cfg(nets__d_conditional=True, pretrain__f_head="cosface").validate()


def test_a_reader_ensemble_is_a_target_reader_that_stays_frozen():
    """pretrain.reader_augment with several names: L_READ reads G(x) by all readers at once and trains g only."""
    from dtn.pretrain import ReaderEnsemble
    cfg = make_cfg(loss__target_reader="50", loss__alpha="0", loss__beta="0", loss__gan="false")
    readers = ReaderEnsemble([make_f(cfg, seed=3), make_f(cfg, seed=4)])
    tr = Trainer(cfg, make_f(cfg), *make_domains(), CPU, reader=readers)
    before, g_before = snapshot(readers), params_snapshot(tr.g)
    losses_seen = [tr.g_update()[0]["read"].item() for _ in range(8)]
    assert not all_equal(tr.g, g_before) and all_equal(readers, before, params_only=False)
    assert all(p.grad is None for p in readers.parameters())
    assert losses_seen[-1] < losses_seen[0], f"g learns to make both readers agree with f: {losses_seen}"
