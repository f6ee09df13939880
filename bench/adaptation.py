"""Domain adaptation (paper §5.1) for a finished digits run: a LeNet trained on G(source train) with the
source labels, tested on the real MNIST test split (paper: 84.44 % from SVHN).

    python bench/adaptation.py RUN [--samples 20000] [--out bench/results/adaptation_digits.json]

Calls the same code as `dtn evaluate RUN --metrics adaptation_accuracy` and writes its number beside
the paper's, the shortfall and the protocol.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, machine_info  # noqa: E402

from dtn.apply import evaluate_run  # noqa: E402
from dtn.rundir import RunDir  # noqa: E402

PAPER = 0.8444


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--samples", type=int, default=20000, help="source train images transferred for training")
    p.add_argument("--out", default=str(RESULTS / "adaptation_digits.json"))
    args = p.parse_args()
    run = RunDir.open(Path(args.run))
    acc = evaluate_run(run.path, None, ("adaptation_accuracy",), args.samples)["adaptation_accuracy"]
    out = {"command": "python bench/adaptation.py " + " ".join(sys.argv[1:]), "run": args.run,
           "preset": run.config().name,
           "adaptation_accuracy_on_mnist_test": round(acc, 4), "paper_svhn_to_mnist": PAPER,
           "shortfall_points_vs_paper": round(100 * max(0.0, PAPER - acc), 2), "goal_met": acc >= PAPER,
           "protocol": f"LeNet trained 3 epochs on G(x) for {args.samples:,} source train images with their source "
                       "labels, tested on the target test split", "machine": machine_info()}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}: adaptation accuracy {acc:.2%} (paper {PAPER:.2%})")


if __name__ == "__main__":
    main()
