"""A whole DTN training step captured once as a CUDA graph, then replayed every step.

Why: the digits nets are small. On an H200 an eager step (two G updates and one D update over 512
images) is several hundred kernel launches issued from Python: about 20 ms per step and under 1 % of
the GPU's bf16 peak, bound by launch and interpreter overhead rather than arithmetic. A captured
graph issues the same kernels with one launch.

The arithmetic is the eager step's own: the capture runs Trainer.run_step (the same g_update and
d_update code) on batches gathered from indices that the host generator draws in the order eager
sampling draws them, so a graphed run follows the eager run (tests/test_cuda.py compares the two).

What a capture needs (PyTorch's CUDA Graphs notes): static shapes, no host synchronisation inside
the step, every tensor the graph reads at a fixed address (the batch indices, the learning rates),
optimizer state created before the capture (a few eager steps first), and no autocast weight cache.
Options that read a value on the host each step cannot be captured; `blockers` names them and the
Trainer stays eager for those.
"""
from __future__ import annotations

import warnings

import torch

EAGER_STEPS = 2   # eager steps per phase before its capture: cuDNN picks its algorithms, Adam makes its state


def blockers(cfg, device: torch.device) -> list[str]:
    """Why a step with this config cannot be captured on this device (empty: it can)."""
    checks = [
        (device.type == "cuda", f"the device is {device.type}, not CUDA"),
        (cfg.train.cuda_graphs, "train.cuda_graphs is off"),
        (cfg.optim.optimizer == "adam", "optim.optimizer=sgd keeps its learning rate on the host"),
        (not cfg.loss.const_augment, "loss.const_augment draws its blur on the host each step"),
        (cfg.train.d_loss_floor <= 0, "train.d_loss_floor reads L_D on the host each step"),
        (cfg.train.g_ema <= 0, "train.g_ema's decay changes each step"),
        (not (cfg.loss.alpha_start_step or cfg.loss.alpha_ramp_steps),
         "loss.alpha_start_step / alpha_ramp_steps change L_CONST's weight during training"),
    ]
    return [why for ok, why in checks if not ok]


def set_capturable(opt: torch.optim.Optimizer, flag: bool) -> None:
    """Adam's `capturable` (its step counters on the GPU, updated inside the graph) for every group, with
    the counters moved to match: a state saved by an eager run resumes under graphs and the reverse."""
    for group in opt.param_groups:
        group["capturable"] = flag
        for p in group["params"]:
            state = opt.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(torch.float32).to(p.device if flag else "cpu")


def portable_state(opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() with host learning rates and capturable off, so any machine can load it (the
    learning rate is recomputed from the step on every step anyway)."""
    state = opt.state_dict()
    state["param_groups"] = [{**g, "lr": float(g["lr"]), **({"capturable": False} if "capturable" in g else {})}
                             for g in state["param_groups"]]
    return state


class StepGraphs:
    """One captured graph per phase of training (the warm-up without the GAN, then with it). The phase
    only moves forward, so entering a new one drops the last one's graph and its memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.phase: bool | None = None
        self.eager_steps = 0
        self.captured: tuple | None = None   # (graph, static indices, static losses, loss names)

    def step(self, trainer) -> dict[str, torch.Tensor]:
        phase = trainer.gan_active
        if phase != self.phase:
            self.phase, self.eager_steps, self.captured = phase, 0, None
        indices = trainer.draw_step_indices()
        if self.eager_steps < EAGER_STEPS:
            self.eager_steps += 1
            return self._eager(trainer, indices)
        if self.captured is None:
            self.captured = self._capture(trainer, indices.shape)
        graph, static_indices, static_losses, names = self.captured
        static_indices.copy_(indices.pin_memory(), non_blocking=True)
        graph.replay()
        return dict(zip(names, static_losses.clone().unbind()))

    def _eager(self, trainer, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """A real training step, run eagerly on a side stream as the capture notes ask for warm-up."""
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side), warnings.catch_warnings():
            # Adam warns that a capturable optimizer runs uncaptured: here it does so on purpose, twice
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            parts = trainer.run_step(trainer.batches_at(indices.to(self.device)))
        main.wait_stream(side)
        return parts

    def _capture(self, trainer, shape: torch.Size) -> tuple:
        static_indices = torch.zeros(shape, dtype=torch.long, device=self.device)
        for opt in (trainer.opt_g, trainer.opt_d):
            opt.zero_grad(set_to_none=True)   # gradients are then allocated in the graph's own memory
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            parts = trainer.run_step(trainer.batches_at(static_indices))
            static_losses = torch.stack([v.float() for v in parts.values()])
        return graph, static_indices, static_losses, list(parts)
