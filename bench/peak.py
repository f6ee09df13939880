"""How close a Trainer step comes to the machine's matmul peak.

    python bench/peak.py [--preset digits] [--device cpu|cuda] [--steps 6] [--size 2048]

FLOPs per step come from torch.utils.flop_counter.FlopCounterMode around one Trainer.train_step
(convolutions and matmuls, forward and backward; element-wise work such as BatchNorm, activations and
Adam is not counted, so the fraction is a lower bound on how busy the step keeps the cores). The peak
is the best of repeated large torch.mm calls in bf16 and in fp32, on all threads, alternating with the
timed steps; bf16's only where the device computes it natively (emulated bf16 matmuls take minutes on an
AVX2 CPU and are no peak), and the goal is then judged against the fp32 peak. The achieved rate is
FLOPs / best step time (the median is reported too), with the GAN
terms on (the step counter starts after the warm-up).
Writes bench/results/peak.json (peak_cuda.json with --device cuda).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_speed_args, machine_info, result_path, speed_device, write_result  # noqa: E402
from train_step import build, sync  # noqa: E402

from dtn.config import apply_overrides, preset  # noqa: E402
from dtn.precision import native_bf16, resolve_precision  # noqa: E402

GOAL = 0.5


def matmul_rate(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, device: torch.device) -> float:
    """FLOP/s of one (n x n) @ (n x n) product."""
    sync(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    return 2 * a.shape[0] ** 3 / (time.perf_counter() - t0)


def operands(dtype: torch.dtype, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    a = torch.randn(size, size, device=device).to(dtype)
    return a, torch.randn(size, size, device=device).to(dtype), torch.empty(size, size, device=device, dtype=dtype)


def step_seconds(trainer, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    trainer.train_step()
    sync(device)
    return time.perf_counter() - t0


def step_flops(trainer) -> tuple[int, dict[str, int]]:
    """FLOPs of one train step, in total and per operator (the step is really taken)."""
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.train_step()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), per_op


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p)
    p.add_argument("--steps", type=int, default=6, help="timed train steps")
    p.add_argument("--size", type=int, default=2048, help="matrix size of the peak matmul")
    args = p.parse_args()
    device = speed_device(args)
    cfg = apply_overrides(preset(args.preset), {"train.device": str(device)})
    trainer, _, _ = build(cfg, device, 4096, workers=0)
    flops, per_op = step_flops(trainer)
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32} if native_bf16(device) else {"fp32": torch.float32}
    mats = {k: operands(dtype, args.size, device) for k, dtype in dtypes.items()}
    reference = next(iter(mats))        # the fastest native precision: bf16 where the device has it
    trainer.train_step()
    for m in mats.values():
        torch.mm(m[0], m[1], out=m[2])
    # Steps and matmuls alternate, so load from other work hits both alike; the best of each is the
    # measurement least disturbed by it, the median step is reported beside it.
    times: list[float] = []
    rates: dict[str, list[float]] = {k: [] for k in mats}
    for _ in range(args.steps):
        times.append(step_seconds(trainer, device))
        for k, m in mats.items():
            rates[k].append(matmul_rate(*m, device))
    step_s = min(times)
    peaks = {k: max(v) for k, v in rates.items()}
    achieved = flops / step_s
    precision = resolve_precision(cfg.train.precision, device)
    fraction = achieved / peaks[reference]
    result = {
        "command": "python bench/peak.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "device": str(device), "precision": precision,
        "flops_per_step": flops, "gflops_per_step": round(flops / 1e9, 2), "flops_by_op": per_op,
        "step_seconds_best": round(step_s, 4), "step_seconds_median": round(statistics.median(times), 4),
        "step_seconds": [round(t, 4) for t in times],
        "peak_reference": reference,
        "fraction_of_peak_at_median_step": round(flops / statistics.median(times) / peaks[reference], 3),
        "achieved_gflops": round(achieved / 1e9, 1),
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}, "peak_matmul_size": args.size,
        "fraction_of_peak": round(fraction, 3),
        "fraction_of_own_precision_peak": round(achieved / peaks[precision], 3),
        "goal_fraction_of_peak": GOAL, "met": fraction >= GOAL,
        "shortfall": None if fraction >= GOAL else f"{100 * (GOAL - fraction):.1f} points below {100 * GOAL:.0f} %",
        "counted": "FlopCounterMode: convolution and matmul FLOPs, forward and backward (2 per multiply-add); "
                   "BatchNorm, activations, losses and Adam are not counted",
        "machine": machine_info(device),
    }
    out = write_result(result_path(args, "peak", device), result)
    print(f"wrote {out}: {flops / 1e9:.1f} GFLOP/step in {step_s:.3f} s = {achieved / 1e9:.0f} GFLOP/s; "
          f"peak {', '.join(f'{k} {v / 1e9:.0f}' for k, v in peaks.items())} GFLOP/s: "
          f"{100 * fraction:.1f} % of the {reference} peak (goal {100 * GOAL:.0f} %)")


if __name__ == "__main__":
    main()
