"""Run `dtn run faces` end to end (face photos -> avatars) and record identity retrieval, f's quality on
the held-out identities, wall time and the face | avatar grid.

    DTN_DATA_DIR=../shared/datasets python bench/faces.py [--seed 0] [--set section.key=value ...]

Writes bench/results/faces.json (or --out): the final identity retrieval over all held-out faces
(median rank, recall@1, recall@10, N, the percentile beside the paper's 16 / 100,001), the same on the
eval subset at each evaluation (from metrics.csv), f's held-out retrieval and verification AUC (f.json),
the wall time, the command and the avatar domain's size; copies RUN/identity_grid.png to --grid, by
default docs/faces_grid.png (the README's) for the default --out and beside any other --out (same name,
.png), so an experiment does not overwrite the README's grid. DTN_AVATARS_TRAIN_N / DTN_AVATARS_TEST_N shorten the avatar generation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from dtn.data import avatars
from dtn.errors import DtnError
from dtn.config import apply_overrides, parse_set_args, preset, to_dict
from dtn.run import run_dtn
from dtn.rundir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import run_name, stop_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDENTITY_KEYS = ("identity_median_rank", "identity_recall_at_1", "identity_recall_at_10", "identity_n",
                 "identity_median_rank_percentile", "identity_distance", "identity_codes", "identity_paper")
REALISM_KEYS = ("pixel_fd", "pixel_fd_source")   # metrics/pixel_fd.py: does G(x) look like an avatar at all


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--runs-dir", default="runs/bench")
    p.add_argument("--resume", metavar="NAME", default="",
                   help="continue a stopped bench run runs-dir/NAME (exact resume; a full-size faces run takes "
                        "hours on a CPU) and write its JSON; wall_seconds_total then counts this part only")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "faces.json")
    p.add_argument("--grid", type=Path, default=None,
                   help="where the face | avatar grid of 32 held-out faces is copied (default: "
                        "docs/faces_grid.png for the default --out, else --out with .png)")
    args = p.parse_args(argv)
    if args.grid is None:
        default_out = args.out.resolve() == (REPO / "bench" / "results" / "faces.json").resolve()
        args.grid = REPO / "docs" / "faces_grid.png" if default_out else args.out.with_suffix(".png")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    overrides = {"train.seed": str(args.seed), **parse_set_args(args.set)}
    cfg = apply_overrides(preset(args.preset), overrides)
    name = args.resume or run_name(args.preset, args.seed)
    if args.resume:
        cfg = RunDir.open(Path(args.runs_dir) / name).config()
    t0 = time.time()
    try:
        final = run_dtn(cfg, Path(args.runs_dir), name, resume=bool(args.resume))
    except DtnError as exc:
        sys.exit(stop_line("bench/faces.py", exc, f"python bench/faces.py --runs-dir {args.runs_dir} --resume {name} "
                                                  f"--out {args.out} --grid {args.grid}"))
    wall = time.time() - t0
    run = RunDir(Path(args.runs_dir) / name)
    if "identity_median_rank" not in final:
        raise SystemExit(f"{run.path}: no identity retrieval in results.json (is the source split by identity?): "
                         f"{final.get('skipped_metrics')}")
    curve = [{k: float(v) for k, v in row.items() if v != "" and (k in ("step", "seconds", *REALISM_KEYS) or k.startswith(("identity_", "judge_identity_")))}
             for row in run.read_metrics() if row.get("identity_median_rank")]
    out = {
        "command": "python bench/faces.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": args.preset, "overrides": overrides, "run": str(run.path),
        **{k: final[k] for k in (*IDENTITY_KEYS, *REALISM_KEYS) if k in final},
        # the same retrieval by an f of another seed that g was never trained through (pretrain.judge)
        **{k: v for k, v in final.items() if k.startswith("judge_identity_")},
        "f_pretraining": run.read_json("f.json") if (run.path / "f.json").exists() else "f loaded from the cache",
        "curve_on_eval_subset": curve, "eval_subset_size": cfg.train.eval_samples,
        # every metrics.csv row (loss terms each log step): whether D wins shows here, not in retrieval
        "metrics_rows": [{k: float(v) for k, v in row.items() if v != ""} for row in run.read_metrics()],
        "steps": final["steps"], "resumed": bool(args.resume),
        "wall_seconds_total": round(wall, 1), "train_seconds": final["train_seconds"],
        "avatars_env": avatars.env_overrides(),
        "config": to_dict(run.config()),
        "machine": {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run.path / final["identity_grid"], args.grid)
    print(f"wrote {args.out} and {args.grid}: median rank {final['identity_median_rank']:g} of "
          f"{final['identity_n']:,} (percentile {final['identity_median_rank_percentile']:.2e}; paper 1.60e-04), "
          f"recall@1 {final['identity_recall_at_1']:.2%}, recall@10 {final['identity_recall_at_10']:.2%} "
          f"in {wall / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
