"""Inference throughput of G = g o f at 32x32 (target: 5,000 images/s).

    python bench/transfer_speed.py [--preset digits] [--device cpu|cuda] [--batch-sizes 64,256,1024]

For each batch size, three ways of running the same nets (the preset's sizes, random weights: speed
does not depend on them) on the same images, alternating so background load hits all alike:
  fp32          g(f(x)) in fp32, NCHW, torch.no_grad  (float in, float out)
  bf16_cl       g(f(x)) under bf16 autocast, channels_last, torch.inference_mode  (float in, float out)
  dtn_transfer  DTN.transfer, the public API: uint8 (N,32,32,3) in, uint8 (N,32,32) out, all conversions
Each figure is the best of --repeats passes over --images images. Writes bench/results/transfer_speed.json.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_speed_args, machine_info, result_path, speed_device, write_result  # noqa: E402
from train_step import sync  # noqa: E402

from dtn.apply import DTN  # noqa: E402
from dtn.config import preset  # noqa: E402
from dtn.nets import Encoder, Generator, from_images, init_weights  # noqa: E402

GOAL = 5000.0


def runners(cfg, f, g, device: torch.device, images: np.ndarray) -> dict:
    """name -> function(batch) that transfers all `images` once, `batch` at a time; each runner has its
    own copy of f and g (module.to(memory_format) changes a module in place)."""
    x32 = from_images(torch.from_numpy(images)).to(device)
    f_cl, g_cl = (copy.deepcopy(m).to(memory_format=torch.channels_last) for m in (f, g))
    model = DTN(cfg, copy.deepcopy(f), copy.deepcopy(g), device)

    def fp32(batch: int) -> None:
        with torch.no_grad():
            for i in range(0, len(x32), batch):
                g(f(x32[i:i + batch])).float()

    def bf16_cl(batch: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            for i in range(0, len(x32), batch):
                g_cl(f_cl(x32[i:i + batch].contiguous(memory_format=torch.channels_last))).float()

    def dtn_transfer(batch: int) -> None:
        model.transfer(images, batch)

    return {"fp32": fp32, "bf16_cl": bf16_cl, "dtn_transfer": dtn_transfer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p)
    p.add_argument("--batch-sizes", default="64,256,1024")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = speed_device(args)
    cfg = preset(args.preset)
    torch.manual_seed(0)
    f, g = Encoder(cfg.nets), Generator(cfg.nets)
    init_weights(f)
    init_weights(g)
    images = np.random.default_rng(0).integers(0, 256, (args.images, cfg.nets.image_size, cfg.nets.image_size,
                                                        cfg.nets.source_channels), dtype=np.uint8)
    run = runners(cfg, f.to(device).eval(), g.to(device).eval(), device, images)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    best: dict[str, dict[int, float]] = {name: {b: 0.0 for b in sizes} for name in run}
    for name, fn in run.items():
        fn(sizes[0])                                    # warm-up: first calls pick kernels
    for _ in range(args.repeats):
        for b in sizes:
            for name, fn in run.items():
                sync(device)
                t0 = time.perf_counter()
                fn(b)
                sync(device)
                best[name][b] = max(best[name][b], len(images) / (time.perf_counter() - t0))
    print(" ".join(f"{name}: " + ", ".join(f"b{b} {v:.0f}" for b, v in r.items()) for name, r in best.items()))
    top = max(best["bf16_cl"].values())
    result = {
        "command": "python bench/transfer_speed.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "device": str(device), "image_size": cfg.nets.image_size,
        "img_per_s": {name: {str(b): round(v, 1) for b, v in r.items()} for name, r in best.items()},
        "best_bf16_channels_last_img_per_s": round(top, 1),
        "best_dtn_transfer_img_per_s": round(max(best["dtn_transfer"].values()), 1),
        "goal": GOAL, "met": top >= GOAL,
        "shortfall": None if top >= GOAL else f"{GOAL - top:.0f} img/s below the goal ({100 * (1 - top / GOAL):.0f} % short)",
        "images": args.images, "repeats": args.repeats, "machine": machine_info(device),
    }
    out = write_result(result_path(args, "transfer_speed", device), result)
    print(f"wrote {out}: best {top:.0f} img/s with bf16 + channels_last (goal {GOAL:.0f})")


if __name__ == "__main__":
    main()
