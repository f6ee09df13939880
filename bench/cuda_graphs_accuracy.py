"""Does replaying the step as a CUDA graph change what training reaches? The digits preset on a GPU,
several seeds, graphs on and off, through bench/time_to_90.py (one fresh `dtn run digits` each).

    python bench/cuda_graphs_accuracy.py [--seeds 0,1,2,3]
    python bench/cuda_graphs_accuracy.py --from DIR   # gather t90_s{seed}_graphs_{true,false}.json written there

Writes bench/results/cuda_graphs_accuracy.json: per seed the full-test transfer accuracy and the run's
wall clock (setup + training) of each, the means, and the difference the issue allows (1 point).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS  # noqa: E402

HERE = Path(__file__).resolve().parent
ALLOWED_DROP_POINTS = 1.0


def run_seed(seed: int, graphs: bool, out_dir: Path) -> Path:
    out = out_dir / f"t90_s{seed}_graphs_{str(graphs).lower()}.json"
    subprocess.run([sys.executable, str(HERE / "time_to_90.py"), "--seed", str(seed), "--runs-dir", "runs/gpu",
                    "--set", f"train.cuda_graphs={str(graphs).lower()}", "--out", str(out)], check=True)
    return out


def summarise(files: dict[tuple[int, bool], Path]) -> dict:
    rows: dict[str, dict] = {}
    for (seed, graphs), path in sorted(files.items()):
        d = json.loads(path.read_text())
        rows.setdefault(str(seed), {})["graphs" if graphs else "eager"] = {
            "transfer_accuracy": round(d["final_full_test_accuracy"], 4),
            "wall_seconds": d["curve"][-1]["seconds"], "setup_seconds": d["setup_seconds"],
            "train_seconds": round(d["curve"][-1]["seconds"] - d["setup_seconds"], 1), "command": d["command"]}
    mean = {mode: round(statistics.mean(r[mode]["transfer_accuracy"] for r in rows.values() if mode in r), 4)
            for mode in ("eager", "graphs")}
    diff = round(100 * (mean["graphs"] - mean["eager"]), 2)
    return {"seeds": rows, "mean_transfer_accuracy": mean, "graphs_minus_eager_points": diff,
            "allowed_drop_points": ALLOWED_DROP_POINTS, "kept": diff >= -ALLOWED_DROP_POINTS,
            "note": "wall_seconds: the run's clock at its last evaluation (setup + training); the first run of "
                    "a fresh machine also builds the data and classifier caches"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--from", dest="from_dir", default="", help="gather finished t90_*.json files instead of running")
    p.add_argument("--out", default=str(RESULTS / "cuda_graphs_accuracy.json"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.from_dir:
        files = {(s, g): Path(args.from_dir) / f"t90_s{s}_graphs_{str(g).lower()}.json" for s in seeds for g in (False, True)}
    else:
        out_dir = Path(args.out).parent
        files = {(s, g): run_seed(s, g, out_dir) for s in seeds for g in (False, True)}
    result = {"command": "python bench/cuda_graphs_accuracy.py " + " ".join(sys.argv[1:]), **summarise(files)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: mean {result['mean_transfer_accuracy']}, graphs - eager {result['graphs_minus_eager_points']} points")


if __name__ == "__main__":
    main()
