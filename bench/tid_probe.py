"""How fast g learns to redraw target images through f (L_TID), under loss variants, from a run's f.

    python bench/tid_probe.py RUN [--steps 40] [--variant loss.gamma=0,train.warmup_steps=0 ...] [--out FILE]

Each variant (comma-separated section.key=value overrides of the run's config; none = the run's own)
trains fresh g and D from the same seed for --steps steps on the run's data with the run's f, frozen,
and L_CONST off (loss.alpha_start_step beyond the steps), and records every loss term each 10 steps.
Why: on the faces run, g never learned to draw avatars; this probe found why in two minutes (L_TV summed
over 64x64 pixels outweighed L_TID's per-pixel MSE: loss.tv_reduction). Also writes, per variant, a
two-row image (8 source test images, then 8 target test images, each through G) beside the JSON.
Writes bench/results/tid_probe.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dtn.config import apply_overrides, parse_set_args
from dtn.nets import to_images
from dtn.run import get_f, load_domains
from dtn.rundir import RunDir
from dtn.train import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def probe(run: RunDir, overrides: dict, steps: int, domains, image_path: Path) -> list[dict]:
    cfg = apply_overrides(run.config(), {"loss.alpha_start_step": str(steps + 1), "train.g_ema": "0", **overrides})
    f = get_f(cfg, run, domains, torch.device("cpu"))          # the run's f.safetensors
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, f, domains.source_train, domains.target_train, torch.device("cpu"))
    curve, t0 = [], time.time()
    for step in range(1, steps + 1):
        out = trainer.train_step()
        if step % 10 == 0 or step == steps:
            curve.append({"step": step, "seconds": round(time.time() - t0, 1),
                          **{k: round(v, 4) for k, v in out.items().items()}})
            print(overrides or "(the run's config)", curve[-1], flush=True)
    idx = torch.arange(8)
    with torch.no_grad():
        shown = [to_images(trainer.transfer(d.batch(idx)[0])) for d in (domains.source_test, domains.target_test)]
    rows = [np.concatenate(list(s.expand(-1, -1, -1, 3).numpy()), axis=1) for s in shown]   # grey -> RGB
    Image.fromarray(np.concatenate(rows)).save(image_path)
    return curve


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--variant", action="append", default=[], help="comma-separated section.key=value overrides")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "tid_probe.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    domains = load_domains(run.config())
    result = {"command": "python bench/tid_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "run": str(args.run), "steps": args.steps, "variants": []}
    for i, variant in enumerate(args.variant or [""]):
        overrides = parse_set_args([kv for kv in variant.split(",") if kv])
        image = args.out.with_name(f"{args.out.stem}_{i}.png")
        rows = probe(run, overrides, args.steps, domains, image)
        result["variants"].append({"overrides": overrides, "curve": rows, "image": image.name})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
