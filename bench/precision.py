"""bf16 autocast against fp32 for the Trainer's step on this machine, and what train.precision=auto picks.

    python bench/precision.py [--preset digits] [--steps 3] [--threads 2]

bf16 pays only where the hardware computes it (AMX or AVX512-BF16 on a CPU, any recent GPU); elsewhere
PyTorch emulates it. Each precision trains the same Trainer (the preset's nets and batch, GAN terms on,
random images) for one untimed and --steps timed steps. Writes bench/results/precision_<CPU capability>.json
(precision_cuda.json on a GPU), with the CPU's model and flags.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, add_speed_args, machine_info, speed_device, write_result  # noqa: E402
from train_step import nchw, random_domains, random_reader, time_steps  # noqa: E402

from dtn.config import apply_overrides, parse_set_args, preset  # noqa: E402
from dtn.domain import Domain  # noqa: E402
from dtn.nets import Encoder, init_weights  # noqa: E402
from dtn.precision import native_bf16, resolve_precision  # noqa: E402
from dtn.train import Trainer  # noqa: E402


def seconds_per_step(cfg, device: torch.device, steps: int, n: int = 2000) -> list[float]:
    src, tgt, labels = random_domains(n, cfg)
    torch.manual_seed(0)
    f = Encoder(cfg.nets)
    init_weights(f)
    trainer = Trainer(cfg, f.eval(), Domain(nchw(src), torch.from_numpy(labels), "random-source", "train"),
                      Domain(nchw(tgt), torch.full((n,), -1), "random-target", "train"), device, random_reader(cfg))
    trainer.step = cfg.train.warmup_steps          # the full step, GAN terms included
    time_steps(trainer.train_step, 1, device)      # first step: allocation, autotuning
    return [time_steps(trainer.train_step, 1, device) for _ in range(steps)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    device = speed_device(args)
    base = apply_overrides(preset(args.preset), parse_set_args(args.set))
    times = {}
    for precision in ("fp32", "bf16"):
        times[precision] = seconds_per_step(apply_overrides(base, {"train.precision": precision}), device, args.steps)
        print(f"{precision}: {statistics.median(times[precision]):.3f} s/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python bench/precision.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": args.preset, "device": str(device), "seconds_per_step": times, "median_seconds_per_step": med,
        "bf16_over_fp32_time": round(med["bf16"] / med["fp32"], 2),
        "native_bf16": native_bf16(device), "auto_picks": resolve_precision("auto", device),
        "faster": min(med, key=med.get), "machine": machine_info(device),
    }
    result["auto_picks_the_faster"] = result["auto_picks"] == result["faster"]
    name = f"precision_{result['machine']['cpu_capability'].lower()}" if device.type == "cpu" else "precision_cuda"
    write_result(Path(args.out) if args.out else RESULTS / f"{name}.json", result, echo=False)
    print(f"bf16 takes {result['bf16_over_fp32_time']}x fp32's time; auto picks {result['auto_picks']}")
    return result


if __name__ == "__main__":
    main()
