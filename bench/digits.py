"""Run a preset end to end and record accuracy (overall and per class), the iteration sweep and wall time.

    python bench/digits.py [--preset digits] [--seed 0] [--set section.key=value ...]
    python bench/digits.py --preset fashion --classes trouser,pullover --tag fashion2
    python bench/digits.py --source mnist --target synth-digits --tag mnist_to_synth

Writes bench/results/digits_<preset>_s<seed>.json (or <tag>.json): final metrics on the whole source
test split, per-class accuracy from the confusion matrix, the per-eval curve from metrics.csv (accuracy
and FLD on the eval subset), and timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dtn.cli import data_overrides
from dtn.data import load as load_split
from dtn.data.classes import parse_classes, select_classes
from dtn.config import apply_overrides, parse_set_args, preset, to_dict
from dtn.rundir import RunDir
from dtn.errors import DtnError
from dtn.run import run_dtn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, machine_info, run_name, stop_line  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--runs-dir", default="runs/bench")
    p.add_argument("--resume", metavar="NAME", default="",
                   help="continue a stopped bench run runs-dir/NAME (exact resume) and write its JSON; "
                        "its wall time is then not recorded (the curve keeps the training seconds)")
    p.add_argument("--source", help="source dataset, as `dtn run --source`")
    p.add_argument("--target", help="target dataset, as `dtn run --target`")
    p.add_argument("--classes", help="keep these classes, as `dtn run --classes`")
    p.add_argument("--tag", default="", help="write bench/results/TAG.json instead of digits_<preset>_s<seed>.json")
    args = p.parse_args()
    overrides = {"train.seed": str(args.seed), **parse_set_args(args.set)}
    data_overrides(args, overrides)
    cfg = apply_overrides(preset(args.preset), overrides)
    name = args.resume or run_name(args.tag or args.preset, args.seed)
    t0 = time.time()
    if args.resume:
        cfg = RunDir.open(Path(args.runs_dir) / name).config()
    try:
        final = run_dtn(cfg, Path(args.runs_dir), name, resume=bool(args.resume))
    except DtnError as exc:   # a stop signal (checkpoint saved) or a refused run: one line, as `dtn run` says it
        sys.exit(stop_line("bench/digits.py", exc, f"python bench/digits.py --runs-dir {args.runs_dir} "
                                                   f"--resume {name} --tag {args.tag or '...'}"))
    wall = None if args.resume else time.time() - t0
    run = RunDir(Path(args.runs_dir) / name)
    curve = [{k: float(v) for k, v in row.items() if v != ""} for row in run.read_metrics()]
    classes = select_classes(load_split(cfg.data.source, "test", cfg.data.data_dir or None),
                             parse_classes(cfg.data.classes)).class_names
    per_class = {name: (row[k] / sum(row) if sum(row) else None)
                 for k, (name, row) in enumerate(zip(classes, final.get("confusion", [])))}
    first_90 = next((r for r in curve if r.get("transfer_accuracy", 0) >= 0.90), None)
    out = {
        "command": "python bench/digits.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "overrides": overrides, "config": to_dict(run.config()), "resumed": bool(args.resume),
        "run": str(run.path),
        "transfer_accuracy": final["transfer_accuracy"], "fld": final.get("fld"),
        "f_consistency": final.get("f_consistency"), "source_baseline_accuracy": final.get("source_baseline_accuracy"),
        "per_class_accuracy": per_class, "confusion": final.get("confusion"),
        "source": cfg.data.source, "target": cfg.data.target, "classes": cfg.data.classes,
        "n_source_test": final["n_source_test"], "steps": final["steps"],
        "wall_seconds_total": None if wall is None else round(wall, 1), "train_seconds": final["train_seconds"],
        "first_eval_at_or_above_90": first_90 and {"step": first_90["step"], "seconds": first_90["seconds"],
                                                   "accuracy_on_eval_subset": first_90["transfer_accuracy"]},
        "curve": curve, "f_pretraining": run.read_json("f.json") if (run.path / "f.json").exists() else None,
        "machine": machine_info(),
    }
    if cfg.data.target == "mnist":   # the digits goals of issue #5; other pairs have none yet
        out.update(goal_90_met=final["transfer_accuracy"] >= 0.90, goal_97_met=final["transfer_accuracy"] >= 0.97,
                   shortfall_to_97_points=round(max(0.0, 97 - 100 * final["transfer_accuracy"]), 2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{args.tag}.json" if args.tag else f"digits_{args.preset}_s{args.seed}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    took = "" if wall is None else f" in {wall / 60:.1f} min"
    print(f"wrote {path}: accuracy {final['transfer_accuracy']:.2%}{took}")


if __name__ == "__main__":
    main()
