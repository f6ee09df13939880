"""Which arithmetic a run uses: train.precision auto | bf16 | fp32.

bf16 autocast halves memory traffic and, where the hardware computes bf16, about doubles a DTN step's
speed (measured 1.9x on an AMX Xeon CPU). Where it does not, PyTorch emulates it and a step is many
times slower, so "auto" (the default) picks bf16 only where it is native.
"""
from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 autocast is emulated (measured: a digits DTN step 17x slower
    than fp32 on an AVX2-only AMD EPYC; 1.9x faster on an AMX Xeon)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # private in torch 2.13; a torch without them is treated as a CPU without native bf16
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe() for probe in probes if probe is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """train.precision "auto" -> "bf16" where the device computes it natively, else "fp32"."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def inference_precision(recorded: str, device: torch.device) -> str:
    """The precision to apply or evaluate a stored run in: its own (auto resolved on `device`), except
    bf16 where `device` only emulates it, where fp32 gives the same numbers up to rounding many times
    faster. Training and resuming keep the recorded precision instead, so a resume stays exact."""
    return "bf16" if recorded in ("bf16", "auto") and native_bf16(device) else "fp32"


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A line for the log when a run will train in bf16 on a device that only emulates it."""
    if precision != "bf16" or native_bf16(device):
        return None
    return (f"warning: training in bf16 on a {device.type} without native bf16, where it runs many times slower "
            "than fp32 (17x for a digits step on an AVX2 CPU, bench/results/precision_avx2.json); a resumed "
            "bf16 run keeps bf16 to stay exact: --set train.precision=fp32 continues it in fp32 instead")
