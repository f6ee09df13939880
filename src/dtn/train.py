"""The DTN training step and loop: one Trainer owns every piece of state and saves/restores all of it.

Which parameters each loss updates (DESIGN.md §1):
  L_D  -> D only; G(x) is computed without grad (detached from g and f).
  L_G  -> g only; f is frozen (requires_grad False, eval-mode BN) but L_CONST back-propagates
          *through* f(G(x)) into g. Options (deviations) add f to the G optimizer.
"""
from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from . import cuda_graph, losses
from .config import Config
from .domain import Domain
from .errors import ConfigError
from .metrics.pixel_fd import pooled_pixels
from .nets import Discriminator, Encoder, Generator, init_weights, transfer
from .augment import lowpass, shift_augment
from .precision import resolve_precision
from .pretrain import confident_readings, read_targets


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def code_rms(f: Encoder, domain: Domain, n: int = 2048, batch: int = 512) -> float:
    """Root-mean-square of f's code on source images: the scale L_CONST divides by (code_scale = rms)."""
    total, count = 0.0, 0
    for x, _ in domain.subset(n, seed=1).in_order(batch):
        c = f(x).float()
        total += c.pow(2).sum().item()
        count += c.numel()
    return math.sqrt(total / max(1, count)) or 1.0


@torch.no_grad()
def code_moments(f: Encoder, domain: Domain, n: int = 2048, batch: int = 512, low: int = 1) -> torch.Tensor:
    """(2, D): per-dimension mean and std of f's code on a fixed subset of `domain` (code_scale = domain),
    read as L_CONST reads it (through lowpass by `low`)."""
    codes = torch.cat([f(lowpass(x, low)).float() for x, _ in domain.subset(n, seed=1).in_order(batch)])
    return torch.stack([codes.mean(0), codes.std(0).clamp_min(1e-6)])


@torch.no_grad()
def class_layouts(f: Encoder, target: Domain, grid: int = 8, batch: int = 1000) -> torch.Tensor:
    """(K, C * grid * grid): the mean layout of the target images f's head puts in each class (a class f never
    picks gets the mean of all targets). What L_LAYOUT pulls each class's G(x) towards; no labels."""
    sums, counts = None, None
    for x, logits in read_targets(f, target, batch):
        onehot = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()
        part, n = onehot.t() @ pooled_pixels(x, grid), onehot.sum(0)
        sums, counts = (part, n) if sums is None else (sums + part, counts + n)
    overall = sums.sum(0) / counts.sum()
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], overall)


def confident_targets(f: Encoder, target: Domain, min_confidence: float) -> Domain:
    """The target images whose class f's head reads with at least `min_confidence` (softmax). Why: a
    conditional D and L_LAYOUT learn what a real "4" is from the targets f reads as 4, and f, trained on
    the source only, reads 11 % of the MNIST images it calls 1 wrongly (2s and 7s); g may then draw 1s as
    2s. f's confident readings are far purer (measured: 98.4 % right at 0.99 on MNIST test, keeping 69 %).
    No labels: the images come labelled with f's readings, which training does not use either."""
    return confident_readings(f, target, min_confidence, "train.target_min_confidence")


def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Differentiable random shift by up to 2 px (edge padding) and, for half the batch, a 3x3 blur."""
    x = shift_augment(x, generator, edge=True)
    if torch.rand((), generator=generator).item() < 0.5:
        n = x.shape[0] // 2
        x = torch.cat([torch.nn.functional.avg_pool2d(x[:n], 3, 1, 1, count_include_pad=False), x[n:]])
    return x


class Generated(NamedTuple):
    """What a G update generated, for the D update that follows: G(source), G(target), the target batch
    and, for a conditional D, the classes f read in the source and target images (None otherwise)."""

    gs: torch.Tensor
    gt: torch.Tensor
    xt: torch.Tensor
    ys_hat: torch.Tensor | None = None
    yt_hat: torch.Tensor | None = None


@dataclass
class StepOutput:
    """Detached loss tensors of one step (no host sync until someone calls .item())."""

    values: dict[str, torch.Tensor]

    def items(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.values.items()}


class Trainer:
    """Owns f, g, D, their optimizers, the step counter and the sampling RNG."""

    def __init__(self, cfg: Config, f: Encoder, source: Domain, target: Domain,
                 device: torch.device | None = None, reader: nn.Module | None = None) -> None:
        self.cfg = cfg.validate()
        self.device = device or pick_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.source, self.target = source.to(self.device), target.to(self.device)
        self.f = f.to(self.device)
        self.g = Generator(cfg.nets).to(self.device)
        self.d = Discriminator(cfg.nets).to(self.device)
        init_weights(self.g)
        init_weights(self.d)
        if cfg.train.f_mode == "joint":
            init_weights(self.f)
        self.f_learns = cfg.train.f_mode == "joint" or cfg.train.f_trainable
        set_requires_grad(self.f, self.f_learns)
        self.f.train(self.f_learns)
        # Deviation (train.target_min_confidence > 0): train on the targets f reads confidently (confident_targets).
        if cfg.train.target_min_confidence > 0:
            self.target = confident_targets(self.f, self.target, cfg.train.target_min_confidence)
        # Deviation (loss.target_reader > 0): a frozen classifier of the target's own shapes (pretrain.train_target_reader).
        if cfg.loss.target_reader and reader is None:
            raise ConfigError("loss.target_reader is on but no target reader was given (run.get_reader trains one)")
        self.reader = reader.to(self.device).eval().requires_grad_(False) if cfg.loss.target_reader else None
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        for m in (self.f, self.g, self.d, self.reader):
            if m is not None:
                m.to(memory_format=self.memory_format)
        scale = code_rms(self.f, self.source) if cfg.loss.code_scale == "rms" else 1.0
        # On a GPU each step is replayed as one captured CUDA graph where the options allow (cuda_graph.py);
        # its optimizers keep their step counters and learning rates on the GPU.
        self.graph_blockers = cuda_graph.blockers(cfg, self.device)
        self.graphs = None if self.graph_blockers else cuda_graph.StepGraphs(self.device)
        self.code_scale = torch.tensor(scale)
        # Deviation (loss.code_scale = domain): where f puts the two domains' codes apart (a face encoder
        # maps every avatar into one narrow cone), an avatar-like G(x) can never have f(x)'s raw code, and
        # g learns pixel patterns that fool f instead. Standardised per domain, L_CONST asks G(x) to sit
        # where x sits within its own domain. Rows: source mean, std, target mean, std; fixed at the start.
        low = cfg.loss.const_lowpass
        self.code_stats = (torch.cat([code_moments(self.f, self.source, low=low),
                                      code_moments(self.f, self.target, low=low)])
                           if cfg.loss.code_scale == "domain" else None)
        # Deviation (loss.class_layout > 0): each class's target layout, fixed at the start (losses.class_layout_loss).
        self.layouts = (class_layouts(self.reader if cfg.loss.target_classes_by_reader else self.f, self.target,
                                      cfg.loss.class_layout_grid)
                        if cfg.loss.class_layout else None)
        g_params = list(self.g.parameters()) + (list(self.f.parameters()) if self.f_learns else [])
        self.opt_g = self._optimizer(g_params, cfg.optim.lr_g)
        self.opt_d = self._optimizer(self.d.parameters(), cfg.optim.lr_d)
        if cfg.nets.g_code_align:           # fixed at the start, as code_stats (f does not learn: validate)
            moments = (self.code_stats if self.code_stats is not None and low == 1    # g reads raw codes
                       else torch.cat([code_moments(self.f, self.source), code_moments(self.f, self.target)]))
            self.g.set_alignment(moments[:2], moments[2:])
        # Deviation (train.g_ema > 0): a moving average of g's weights, what evaluation and transfer use.
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False) if cfg.train.g_ema > 0 else None
        self.ema_updates = 0
        self.step = 0
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.last_d_loss = math.inf
        # Several processes (distributed.prepare): this one's slice of each global batch, and the DDP
        # wrappers of g and D that the updates call. One process: the whole batch, the modules themselves.
        self.shard: slice | None = None
        self.g_train: nn.Module = self.g
        self.d_train: nn.Module = self.d

    # ------------------------------------------------------------------ construction helpers
    def _optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if o.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if self.graphs is not None:
            return torch.optim.Adam(params, lr=torch.tensor(lr, device=self.device), betas=(o.beta1, o.beta2),
                                    weight_decay=o.weight_decay, capturable=True)
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)

    def _set_lr(self) -> None:
        """The learning rate is a pure function of the step, so resuming needs no scheduler state."""
        factor = self._lr_factor(self.step)
        for opt, lr in ((self.opt_g, self.cfg.optim.lr_g), (self.opt_d, self.cfg.optim.lr_d)):
            for group in opt.param_groups:
                if self.graphs is None:
                    group["lr"] = lr * factor
                elif isinstance(group["lr"], torch.Tensor) and group["lr"].is_cuda:
                    group["lr"].fill_(lr * factor)    # in place: a captured graph reads it at this address
                else:                                 # replaced by load_state_dict, which also drops the graphs
                    group["lr"] = torch.tensor(lr * factor, device=self.device)

    def _lr_factor(self, step: int) -> float:
        total, kind = max(1, self.cfg.train.steps), self.cfg.optim.schedule
        t = min(step / total, 1.0)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if kind == "linear":
            return 1.0 - t
        return 1.0

    def autocast(self):
        if self.precision == "bf16":
            # a graph capture must not reuse casts cached outside it; the casts themselves are the same
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=self.graphs is None)
        return nullcontext()

    @property
    def in_warmup(self) -> bool:
        return self.step < self.cfg.train.warmup_steps

    @property
    def alpha_now(self) -> float:
        """L_CONST's weight at this step (loss.alpha_start_step / alpha_ramp_steps: 0, then a linear rise)."""
        cfg = self.cfg.loss
        past = self.step - cfg.alpha_start_step
        if past < 0:
            return 0.0
        return cfg.alpha * min(1.0, (past + 1) / cfg.alpha_ramp_steps) if cfg.alpha_ramp_steps else cfg.alpha

    @property
    def gan_active(self) -> bool:
        return self.cfg.loss.gan and not self.in_warmup

    def sample(self):
        xs, ys = self.source.sample(self.cfg.train.batch_size, self.generator, self.memory_format, self.shard)
        xt, _ = self.target.sample(self.cfg.train.batch_size, self.generator, self.memory_format, self.shard)
        return xs, ys, xt

    def draw_step_indices(self) -> torch.Tensor:
        """Every batch one step reads, drawn ahead as (batches, [source, target], batch_size) host indices
        in the order sample() would draw them during the step (the graphed step gathers from these)."""
        t = self.cfg.train
        k = t.g_steps + (max(0, t.d_steps - 1) if self.gan_active else 0)
        n = t.batch_size
        return torch.stack([torch.stack([self.source.draw(n, self.generator), self.target.draw(n, self.generator)])
                            for _ in range(k)])

    def batches_at(self, indices: torch.Tensor):
        """A sample()-like callable that returns the batches at `indices` (from draw_step_indices) in turn."""
        rows = iter(indices)

        def next_batch():
            row = next(rows)
            xs, ys = self.source.batch(row[0], self.memory_format)
            xt, _ = self.target.batch(row[1], self.memory_format)
            return xs, ys, xt
        return next_batch

    # ------------------------------------------------------------------ the two updates
    def generate(self, xs: torch.Tensor, xt: torch.Tensor):
        """One f forward and one g forward over source and target together: (f(xs), f(xt), G(xs), G(xt))."""
        n = xs.shape[0]
        with torch.set_grad_enabled(self.f_learns and torch.is_grad_enabled()):
            cs, ct = self.f(xs), self.f(xt)
        out = self.g_train(torch.cat([self.g.align(cs), ct]))
        return cs, ct, out[:n], out[n:]

    @torch.no_grad()
    def d_conditions(self, cs: torch.Tensor, ct: torch.Tensor, xt: torch.Tensor) -> tuple:
        """The class f's head reads in each source and target code: what a conditional D is told
        (nets.d_conditional; no labels: G(x) gets x's predicted class, G(t) and t get t's, or the L_READ
        reader's reading of t with loss.target_classes_by_reader). (None, None) if off."""
        if not self.cfg.nets.d_conditional:
            return None, None
        return self.f_logits(cs).argmax(1), self.target_classes(ct, xt)

    def target_classes(self, ct: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """The class a target image is taken to be: f's reading of its code, or the L_READ reader's of the
        image (loss.target_classes_by_reader: a reader of the target reads it far better than f, which never
        saw it: 98 % against 89 % of MNIST test, so a conditional D learns each class from purer examples)."""
        if self.cfg.loss.target_classes_by_reader:
            return self.reader.classify(xt).argmax(1)
        return self.f_logits(ct).argmax(1)

    def f_logits(self, code: torch.Tensor) -> torch.Tensor:
        """f's class logits for a code: the head without its dropout, so a trainable f reads deterministically."""
        return self.f.head[-1](code.relu())

    def g_loss(self, xs, ys, xt) -> tuple[torch.Tensor, dict[str, torch.Tensor], Generated]:
        cfg = self.cfg.loss
        cs, ct, gs, gt = self.generate(xs, xt)
        parts: dict[str, torch.Tensor] = {}
        gs_for_f = lowpass(jitter(gs, self.generator) if cfg.const_augment else gs, cfg.const_lowpass)
        if cfg.const_distance == "ce":
            parts["const"] = losses.const_ce_loss(self.f.classify(gs_for_f), ys)
        else:
            code_x = cs if self.f_learns else cs.detach()
            if cfg.const_lowpass > 1:      # f reads x as it reads G(x): without detail finer than the factor
                with nullcontext() if self.f_learns else torch.no_grad():
                    code_x = self.f(lowpass(xs, cfg.const_lowpass))
            code_gx = self.f(gs_for_f)
            kl = (losses.const_kl_loss(self.f_logits(code_x), self.f_logits(code_gx))
                  if cfg.const_distance.endswith("kl") else None)
            if self.code_stats is not None:
                code_x = (code_x.float() - self.code_stats[0]) / self.code_stats[1]
                code_gx = (code_gx.float() - self.code_stats[2]) / self.code_stats[3]
            code_distance = cfg.const_distance.removesuffix("kl").removesuffix("+")
            parts["const"] = (losses.const_loss(code_x, code_gx, code_distance, float(self.code_scale))
                              if code_distance else 0.0)
            if kl is not None:
                parts["const"] = parts["const"] + kl
        if self.reader is not None:       # L_READ: the target reader must read in G(x) the class f reads in x
            parts["read"] = losses.const_kl_loss(self.f_logits(cs).detach(), self.reader.classify(gs_for_f))
        parts["tid"] = losses.tid_loss(xt, gt)
        total = self.alpha_now * parts["const"] + cfg.beta * parts["tid"]
        if "read" in parts:
            total = total + cfg.target_reader * parts["read"]
        if cfg.gamma:
            parts["tv"] = losses.tv_loss(torch.cat([gs, gt]), cfg.tv_power, cfg.tv_reduction)
            total = total + cfg.gamma * parts["tv"]
        ys_hat, yt_hat = self.d_conditions(cs, ct, xt)
        if self.layouts is not None:
            with torch.no_grad():     # the class f reads in x: a conditional D was just told it
                read = ys_hat if ys_hat is not None else self.f_logits(cs).argmax(1)
            parts["layout"] = losses.class_layout_loss(pooled_pixels(gs, cfg.class_layout_grid), read, self.layouts)
            total = total + cfg.class_layout * parts["layout"]
        if self.gan_active:
            g_loss_fn = losses.ternary_g_loss if cfg.discriminator == "ternary" else losses.binary_g_loss
            parts["gang"] = g_loss_fn(self.d(gs, ys_hat), self.d(gt, yt_hat))
            total = total + parts["gang"]
        return total, parts, Generated(gs, gt, xt, ys_hat, yt_hat)

    def d_loss(self, gs: torch.Tensor, gt: torch.Tensor, xt: torch.Tensor, ys_hat=None, yt_hat=None) -> torch.Tensor:
        d_loss_fn = losses.ternary_d_loss if self.cfg.loss.discriminator == "ternary" else losses.binary_d_loss
        return d_loss_fn(self.d_train(gs.detach(), ys_hat), self.d_train(gt.detach(), yt_hat), self.d_train(xt, yt_hat))

    def g_update(self, batch: tuple | None = None) -> tuple[dict[str, torch.Tensor], Generated]:
        xs, ys, xt = batch if batch is not None else self.sample()
        set_requires_grad(self.d, False)
        self.g.train()
        with self.autocast():
            total, parts, fakes = self.g_loss(xs, ys, xt)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.update_ema()
        set_requires_grad(self.d, True)
        parts["g_total"] = total
        return {k: v.detach() for k, v in parts.items()}, fakes._replace(gs=fakes.gs.detach(), gt=fakes.gt.detach())

    @torch.no_grad()
    def update_ema(self) -> None:
        """g_ema <- lerp towards g. A copy of g until the GAN starts (warm-up images are not digits yet),
        then decay min(g_ema, (1+k)/(10+k)) after k GAN updates, so the average forgets the start quickly.
        BN running statistics are averaged the same way, to match the averaged weights."""
        if self.g_ema is None:
            return
        if self.gan_active:
            k = self.ema_updates
            weight = 1.0 - min(self.cfg.train.g_ema, (1 + k) / (10 + k))
            self.ema_updates += 1
        else:
            weight = 1.0
        ema = [t for t in (*self.g_ema.parameters(), *self.g_ema.buffers()) if t.is_floating_point()]
        new = [t for t in (*self.g.parameters(), *self.g.buffers()) if t.is_floating_point()]
        torch._foreach_lerp_(ema, new, weight)
        for a, b in zip(self.g_ema.buffers(), self.g.buffers()):
            if not a.is_floating_point():
                a.copy_(b)

    def d_update(self, fakes: Generated | None, next_batch=None) -> torch.Tensor | None:
        floor = self.cfg.train.d_loss_floor
        if floor > 0 and self.last_d_loss < floor:
            self.last_d_loss = math.inf  # re-measure on the next step
            return None
        if fakes is None:
            xs, _, xt = (next_batch or self.sample)()
            with torch.no_grad(), self.autocast():
                cs, ct, gs, gt = self.generate(xs, xt)
                ys_hat, yt_hat = self.d_conditions(cs, ct, xt)
        else:
            gs, gt, xt, ys_hat, yt_hat = fakes
        with self.autocast():
            loss = self.d_loss(gs, gt, xt, ys_hat, yt_hat)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        if floor > 0:
            self.last_d_loss = loss.item()
        return loss.detach()

    def train_step(self) -> StepOutput:
        """g_steps G updates, then d_steps D updates (the first reuses the last G batch's images, detached).
        On a GPU, replayed as a captured graph (cuda_graph.py) unless an option prevents it."""
        self._set_lr()
        if self.graphs is not None:
            parts = self.graphs.step(self)
        else:
            parts = self.run_step(self.sample)
        self.step += 1
        return StepOutput(parts)

    def use_eager(self, reason: str) -> None:
        """Run every step eagerly from now on (distributed.prepare: DDP's hooks are not captured)."""
        self.graph_blockers.append(reason)
        self.graphs = None
        for opt in (self.opt_g, self.opt_d):
            if isinstance(opt, torch.optim.Adam):
                cuda_graph.set_capturable(opt, False)

    def run_step(self, next_batch) -> dict[str, torch.Tensor]:
        """One step's updates on the batches next_batch() returns in turn; leaves the step counter alone."""
        for _ in range(self.cfg.train.g_steps):
            parts, fakes = self.g_update(next_batch())
        if self.gan_active:
            for i in range(self.cfg.train.d_steps):
                d = self.d_update(fakes if i == 0 else None, next_batch)
                if d is not None:
                    parts["d"] = d
        return parts

    # ------------------------------------------------------------------ inference
    @property
    def g_eval(self) -> nn.Module:
        """The g that evaluation and transfer use: the moving average when train.g_ema is on."""
        return self.g_ema if self.g_ema is not None else self.g

    @torch.no_grad()
    def transfer(self, x: torch.Tensor) -> torch.Tensor:
        """G(x) in eval mode, float [-1, 1]."""
        was = self.g.training, self.f.training
        self.g.eval()
        self.f.eval()
        with self.autocast():
            out = transfer(self.f, self.g_eval, x.contiguous(memory_format=self.memory_format)).float()
        self.g.train(was[0])
        self.f.train(was[1])
        return out

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        extra = {"g_ema": self.g_ema} if self.g_ema is not None else {}
        return {"f": self.f, "g": self.g, "d": self.d, **extra}

    def state_dict(self) -> dict:
        """Everything but the weights (those go to safetensors): optimizers, step, RNGs."""
        return {
            "step": self.step,
            "opt_g": cuda_graph.portable_state(self.opt_g), "opt_d": cuda_graph.portable_state(self.opt_d),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "code_scale": self.code_scale,
            **({"code_stats": self.code_stats.cpu()} if self.code_stats is not None else {}),
            **({"layouts": self.layouts.cpu()} if self.layouts is not None else {}),
            "last_d_loss": self.last_d_loss,
            "ema_updates": self.ema_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for opt, key in ((self.opt_g, "opt_g"), (self.opt_d, "opt_d")):
            opt.load_state_dict(state[key])
            if isinstance(opt, torch.optim.Adam):
                cuda_graph.set_capturable(opt, self.graphs is not None)
        if self.graphs is not None:   # the optimizer state now lives in new tensors: capture again
            self.graphs = cuda_graph.StepGraphs(self.device)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.code_scale = state["code_scale"]
        if self.code_stats is not None and "code_stats" in state:
            self.code_stats.copy_(state["code_stats"])     # in place: a captured graph reads it
        if self.layouts is not None and "layouts" in state:
            self.layouts.copy_(state["layouts"])
        self.last_d_loss = float(state["last_d_loss"])
        self.ema_updates = int(state.get("ema_updates", 0))
