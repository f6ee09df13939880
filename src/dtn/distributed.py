"""Several processes, one training run: torchrun + DistributedDataParallel.

    torchrun --nproc_per_node=N -m dtn run digits ...

Each choice keeps an N-process run the same computation as one process with the same config:
- `train.batch_size` is the global batch (per domain); each process trains on batch_size / N of it.
  Every process draws the whole global batch from the one seeded stream (the Trainer's generator)
  and keeps its own slice (Domain.sample(shard=...)). The slices make up the single-process batch,
  and the generators stay equal on every rank, so rank 0's checkpoint resumes with any N.
- BatchNorm in g and D normalises over the global batch (SyncBatchNorm semantics). torch's
  SyncBatchNorm runs only on GPUs, so GlobalBatchNorm2d below does it with one differentiable
  all-reduce. It runs on CPUs (gloo) too, so the 2-process CPU test checks the code that GPUs run.
- g and D are wrapped in DDP, which averages gradients across processes. The losses are means, so
  that average is the gradient of the global-batch loss. f is frozen, so it needs neither DDP nor
  synced statistics. Forward passes whose gradients must not be synced (D inside the G update,
  evaluation, sample grids) call the plain modules, and the Trainer calls the wrapped ones
  (`g_train`, `d_train`) only where it trains them.
- Rank 0 writes everything (run dir, metrics, checkpoints, samples, report) and evaluates. The
  others wait at a barrier after each checkpoint, and their stdout goes to /dev/null.
One thing is not the same as one process: with loss.const_augment, the blur falls on the first half
of each process's slice instead of the first half of the global batch (still half the images).
"""
from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a launch. The default is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @classmethod
    def from_env(cls) -> "Dist":
        """torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each value averaged over the processes (logged losses are then those of the global batch)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)                                   # the same order on every rank
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys]).to(self.device)
        dist.all_reduce(stacked)
        return {k: stacked[keys.index(k)] / self.world_size for k in values}

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on one (a stop signal that reached only some of them)."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def process_device(d: Dist, device: torch.device) -> torch.device:
    """cuda -> this process's own GPU (cuda:LOCAL_RANK); anything else unchanged."""
    if not (d.enabled and device.type == "cuda"):
        return device
    if d.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"process {d.local_rank} of this node has no GPU of its own ({torch.cuda.device_count()} "
                          "visible): start at most one process per GPU (--nproc_per_node), or use --device cpu")
    return torch.device("cuda", d.local_rank)


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """Join torchrun's process group for the duration (nccl on CUDA, gloo on CPUs) and leave it after.
    Without torchrun (WORLD_SIZE unset or 1) this yields Dist() and does nothing."""
    d = Dist.from_env()
    if not d.enabled:
        yield d
        return
    device = process_device(d, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with contextlib.ExitStack() as stack:
            if not d.is_main:
                os.environ["DTN_QUIET"] = "1"                   # no progress bars from the other ranks
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield replace(d, device=device)
    finally:
        if owns:
            # DDP wrappers hold the process group; one that outlives it (kept by a reference cycle) is
            # freed at interpreter exit, when gloo's threads can abort the process. Free them first.
            gc.collect()
            dist.destroy_process_group()


def prepare(trainer, d: Dist):
    """Make `trainer` one of d.world_size processes: its slice of each global batch, global-batch
    BatchNorm in g and D, DDP wrappers for the updates. A single process's trainer is left as it is."""
    if not d.enabled:
        return trainer
    t = trainer.cfg.train
    if trainer.f_learns:
        raise ConfigError("with several processes f must stay frozen (train.f_mode pretrained or random, "
                          "train.f_trainable false): only g and D are synchronised")
    if t.d_loss_floor > 0:
        raise ConfigError("train.d_loss_floor is not supported with several processes: each would skip D "
                          "on its own loss")
    if t.batch_size % d.world_size:
        raise ConfigError(f"train.batch_size {t.batch_size} is the global batch: it must be divisible by the "
                          f"{d.world_size} processes")
    per = t.batch_size // d.world_size
    trainer.shard = slice(d.rank * per, (d.rank + 1) * per)
    trainer.use_eager("several processes (DDP)")
    ids = [trainer.device.index] if trainer.device.type == "cuda" else None
    # broadcast_buffers=False: global BatchNorm keeps the running statistics equal on every rank anyway,
    # and a broadcast in forward would hang rank 0's evaluation while the others wait elsewhere.
    trainer.g_train = DistributedDataParallel(global_batchnorm(trainer.g), device_ids=ids, broadcast_buffers=False)
    trainer.d_train = DistributedDataParallel(global_batchnorm(trainer.d), device_ids=ids, broadcast_buffers=False)
    return trainer


class AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: each rank's input feeds every rank's output, so the
    gradient with respect to it is the sum of every rank's output gradient. (The same as
    torch.distributed.nn.functional.all_reduce, which is deprecated.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's part of the batch.

    One differentiable all-reduce of (sum(x - k), sum((x - k)^2), count) per call, where the shift
    k = running_mean is equal on every rank and keeps E[x^2] - E[x]^2 accurate when |mean| >> std.
    The all-reduce's backward sums the gradients of the statistics over the processes, as
    SyncBatchNorm's does. Eval mode, or a single process, is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        shift = self.running_mean.detach().clone() if self.track_running_stats else xf.new_zeros(c)
        centred = xf - shift.view(1, c, 1, 1)
        local = torch.cat([centred.sum((0, 2, 3)), centred.square().sum((0, 2, 3)), xf.new_full((1,), xf.numel() / c)])
        total = AllReduceSum.apply(local)
        n = total[-1]
        mean_c = total[:c] / n
        var = (total[c:2 * c] / n - mean_c.square()).clamp_min(0)
        mean = mean_c + shift
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(n.detach()))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        """What F.batch_norm does: unbiased variance, momentum (or a cumulative average when None)."""
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(var * (n / max(n - 1.0, 1.0)), m)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Swap every nn.BatchNorm2d under `module` for a GlobalBatchNorm2d holding the *same* parameter and
    buffer tensors, so optimizers built before the swap and checkpoint keys are unaffected."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(new, key, getattr(child, key))
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batchnorm(child)
    return module
