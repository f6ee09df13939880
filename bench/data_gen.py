"""How fast synth-digits makes 32x32 pictures with all cores (target: 2,000 images/s on 2 cores).

    python bench/data_gen.py [--n 20000] [--workers N]

Times generate() end to end, process-pool start-up included, best of 2 runs, and writes
bench/results/data_gen.json. The number depends on what else the machine is running.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from dtn.data import synth_digits
from machine import RESULTS, write_result  # bench/machine.py (the script's folder is on sys.path)

TARGET = 2000


def measure(n: int, workers: int | None, repeats: int = 2) -> list[float]:
    """Seconds per run of generate(n) at 32x32; different seeds so no run reuses another's work."""
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        synth_digits.generate(n, seed=1000 + r, size=32, workers=workers, progress=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    args = parser.parse_args()

    workers = args.workers or synth_digits._default_workers()
    n_fonts = len(synth_digits.font_names())
    load_before = os.getloadavg()[0]  # other work on the machine lowers the rate: record it
    times = measure(args.n, workers)
    rate = args.n / min(times)
    result = {
        "images_per_s": round(rate, 1),
        "n": args.n,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "target": TARGET,
        "met": rate >= TARGET,
        "command": "python bench/data_gen.py",
        "size": 32,
        "run_seconds": [round(t, 3) for t in times],
        "fonts": n_fonts,
        "load_avg_1min_before": round(load_before, 2),
        "generator_version": synth_digits.GENERATOR_VERSION,
        "python": platform.python_version(),
    }
    write_result(RESULTS / "data_gen.json", result, echo=True)


if __name__ == "__main__":
    main()
