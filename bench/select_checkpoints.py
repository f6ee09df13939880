"""Does `dtn select` (label-free checkpoint choice) land near the best checkpoint?

    python bench/select_checkpoints.py [--seeds 3] [--steps 1000] [--ckpt-every 100] [--set section.key=value ...]
    python bench/select_checkpoints.py runs/a runs/b ...          # existing run directories instead of training

Without run directories it trains --seeds runs of --preset (seeds 0..N-1) through the run API, keeping
every checkpoint (train.keep_last = 0, one every --ckpt-every steps); a finished run in --runs-dir is
reused and a half-finished one resumed. On each run it calls `dtn select`, then measures every
checkpoint's labelled transfer accuracy on a fixed subset of the source test split (--eval-samples,
the evaluation LeNet, fp32) and records how far the chosen checkpoint is from the best one, what each
signal alone would have chosen, and where the last checkpoint stands.

Writes bench/results/select.json (or --out). Goal: the chosen checkpoint within 1 point of the best
on at least 3 seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dtn.apply import DTN, resolve_device
from dtn.config import Config, apply_overrides, parse_set_args, preset
from dtn.domain import load_domain
from dtn.metrics.accuracy import transfer_accuracy
from dtn.nets import to_float
from dtn.pretrain import eval_classifier
from dtn.rundir import RunDir
from dtn.run import run_dtn
from dtn.select import SIGNALS, choose, rank_average, select_run

RESULTS = Path(__file__).resolve().parent / "results"


def train_runs(args) -> list[Path]:
    """Train (or reuse, or resume) one run per seed; every checkpoint is kept."""
    paths = []
    for seed in range(args.seeds):
        overrides = {"train.seed": seed, "train.steps": args.steps, "train.ckpt_every": args.ckpt_every,
                     "train.keep_last": 0, **parse_set_args(args.set)}
        cfg = apply_overrides(preset(args.preset), overrides)
        name = f"{args.preset}-s{seed}"
        path = Path(args.runs_dir) / name
        status = RunDir(path)._status() if (path / "run.json").exists() else ""
        if status not in ("trained", "done"):
            run_dtn(cfg, Path(args.runs_dir), name, resume=bool(status), until="train")
        paths.append(path)
    return paths


def labelled_accuracies(run_path: Path, cfg: Config, n: int, device: torch.device) -> dict[int, float]:
    """Transfer accuracy of every checkpoint on a fixed source test subset (seed 7, not select's 5)."""
    nets, data_dir = cfg.nets, cfg.data.data_dir or None
    target_train = load_domain(cfg.data.target, "train", nets.image_size, nets.target_channels, data_dir)
    classifier, _ = eval_classifier(cfg.pretrain, target_train.to(device), nets.num_classes)
    source = load_domain(cfg.data.source, "test", nets.image_size, nets.source_channels, data_dir).subset(n, seed=7)
    x = to_float(source.images)
    out = {}
    for step, _ in RunDir.open(run_path).checkpoints():
        model = DTN.load(run_path, checkpoint=step, device=str(device))
        out[step] = transfer_accuracy(classifier.eval(), model.transfer_tensor(x, 500).to(device),
                                      source.labels)["transfer_accuracy"]
    return out


def gap(accuracy: dict[int, float], step: int) -> float:
    return round(100 * (max(accuracy.values()) - accuracy[step]), 2)


def bench_run(run_path: Path, args, device: torch.device) -> dict:
    run = RunDir.open(run_path)
    cfg = run.config()
    sel = select_run(run_path, args.samples, device=str(device))
    acc = labelled_accuracies(run_path, cfg, args.eval_samples, device)
    rows = sel["checkpoints"]
    best_step = max(acc, key=lambda s: (acc[s], s))
    alone = {s.name: rows[choose(rows, rank_average(rows, (s,)))]["step"] for s in SIGNALS}
    last = rows[-1]["step"]
    return {
        "run": str(run_path), "seed": cfg.train.seed, "steps": [r["step"] for r in rows],
        "chosen_step": sel["chosen_step"], "chosen_accuracy": acc[sel["chosen_step"]],
        "best_step": best_step, "best_accuracy": acc[best_step],
        "gap_points": gap(acc, sel["chosen_step"]), "within_1_point": gap(acc, sel["chosen_step"]) <= 1.0,
        "last_step": last, "last_accuracy": acc[last], "last_gap_points": gap(acc, last),
        "single_signal_choice": {name: {"step": step, "gap_points": gap(acc, step)} for name, step in alone.items()},
        "checkpoints": [{"step": r["step"], "accuracy": acc[r["step"]], "score": r["score"],
                         **{s.name: r[s.name] for s in SIGNALS}} for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="existing run directories (default: train --seeds runs)")
    p.add_argument("--preset", default="digits")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--runs-dir", default="runs/select")
    p.add_argument("--samples", type=int, default=2000, help="images per domain for `dtn select` (default 2000)")
    p.add_argument("--eval-samples", type=int, default=5000, help="source test images for the labelled accuracy")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(RESULTS / "select.json"))
    args = p.parse_args()
    device = resolve_device(args.device)
    t0 = time.time()
    paths = [Path(r) for r in args.runs] or train_runs(args)
    results = [bench_run(path, args, device) for path in paths]
    within = sum(r["within_1_point"] for r in results)
    out = {
        "command": "python bench/select_checkpoints.py " + " ".join(sys.argv[1:]),
        "goal": "the checkpoint dtn select chooses (no target labels) is within 1 point of the best checkpoint's "
                "transfer accuracy on >= 3 seeds",
        "summary": {"runs": len(results), "within_1_point": within, "goal_met": within >= 3,
                    "mean_gap_points": round(sum(r["gap_points"] for r in results) / max(1, len(results)), 2),
                    "last_checkpoint_within_1_point": sum(r["last_gap_points"] <= 1.0 for r in results)},
        "eval_samples": args.eval_samples, "select_samples": args.samples,
        "wall_seconds": round(time.time() - t0, 1), "runs": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        print(f"{r['run']}: chose step {r['chosen_step']} ({100 * r['chosen_accuracy']:.2f} %), best step "
              f"{r['best_step']} ({100 * r['best_accuracy']:.2f} %), gap {r['gap_points']:.2f} points")
    print(f"wrote {args.out}: {within}/{len(results)} within 1 point")


if __name__ == "__main__":
    main()
