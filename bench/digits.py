"""Run the default digits preset end to end and record accuracy, the iteration sweep and wall time.

    python bench/digits.py [--preset digits] [--seed 0] [--set section.key=value ...]

Writes bench/results/digits_<preset>_s<seed>.json: final metrics on the full synth-digits test split,
the per-eval curve from metrics.csv (accuracy and FLD on a fixed 2,000-image subset), and timings.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dtn.config import apply_overrides, parse_set_args, preset, to_dict
from dtn.rundir import RunDir
from dtn.run import run_dtn

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--runs-dir", default="runs/bench")
    p.add_argument("--resume", metavar="NAME", default="",
                   help="continue a stopped bench run runs-dir/NAME (exact resume) and write its JSON; "
                        "its wall time is then not recorded (the curve keeps the training seconds)")
    args = p.parse_args()
    overrides = {"train.seed": str(args.seed), **parse_set_args(args.set)}
    cfg = apply_overrides(preset(args.preset), overrides)
    name = args.resume or f"{args.preset}-s{args.seed}-{int(time.time())}"
    t0 = time.time()
    if args.resume:
        cfg = RunDir.open(Path(args.runs_dir) / name).config()
    final = run_dtn(cfg, Path(args.runs_dir), name, resume=bool(args.resume))
    wall = None if args.resume else time.time() - t0
    run = RunDir(Path(args.runs_dir) / name)
    curve = [{k: float(v) for k, v in row.items() if v != ""} for row in run.read_metrics()]
    first_90 = next((r for r in curve if r.get("transfer_accuracy", 0) >= 0.90), None)
    out = {
        "command": "python bench/digits.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "overrides": overrides, "config": to_dict(cfg), "resumed": bool(args.resume),
        "transfer_accuracy": final["transfer_accuracy"], "fld": final["fld"],
        "f_consistency": final["f_consistency"], "source_baseline_accuracy": final["source_baseline_accuracy"],
        "n_source_test": final["n_source_test"], "steps": final["steps"],
        "wall_seconds_total": None if wall is None else round(wall, 1), "train_seconds": final["train_seconds"],
        "first_eval_at_or_above_90": first_90 and {"step": first_90["step"], "seconds": first_90["seconds"],
                                                   "accuracy_on_eval_subset": first_90["transfer_accuracy"]},
        "goal_90_met": final["transfer_accuracy"] >= 0.90, "goal_97_met": final["transfer_accuracy"] >= 0.97,
        "shortfall_to_97_points": round(max(0.0, 97 - 100 * final["transfer_accuracy"]), 2),
        "curve": curve, "f_pretraining": run.read_json("f.json") if (run.path / "f.json").exists() else None,
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"digits_{args.preset}_s{args.seed}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    took = "" if wall is None else f" in {wall / 60:.1f} min"
    print(f"wrote {path}: accuracy {final['transfer_accuracy']:.2%}{took}")


if __name__ == "__main__":
    main()
