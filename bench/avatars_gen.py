"""How fast the avatars dataset draws 96x96 DiceBear avatars: on one core, and with all cores.

    python bench/avatars_gen.py [--n 400] [--styles adventurer]

Times generate() end to end (best of 2 on one core; one run with all cores, pool start-up included),
splits one avatar's cost into DiceBear's SVG and resvg's rasterisation, and writes
bench/results/avatars_gen.json. Under a minute; the numbers depend on what else the machine runs.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.metadata import version

import numpy as np

from dtn.data import avatars
from dtn.data.parallel import default_workers
from machine import RESULTS, write_result  # bench/machine.py (the script's folder is on sys.path)



def rate(n: int, styles: tuple[str, ...], workers: int, seed: int) -> tuple[float, float]:
    """(avatars per wall second, avatars per CPU second of this process: the one-core cost, which other
    work on a busy machine affects less than the wall time; meaningless with workers > 1)."""
    start, cpu = time.perf_counter(), time.process_time()
    avatars.generate(n, seed=seed, size=avatars.DEFAULT_SIZE, styles=styles, workers=workers, progress=False)
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def split_cost(styles: tuple[str, ...], n: int = 100) -> dict:
    """Milliseconds per avatar for each stage, on option vectors drawn as generate() draws them."""
    vocab = avatars.vocabulary(styles)
    options = avatars.draw_options(np.random.default_rng(0), n, vocab)
    t0 = time.perf_counter()
    svgs = [avatars.render_svg(row, vocab) for row in options]
    t1 = time.perf_counter()
    pngs = [avatars.svg_to_png(svg, avatars.DEFAULT_SIZE) for svg in svgs]
    t2 = time.perf_counter()
    return {"svg_ms": round((t1 - t0) / n * 1e3, 2), "rasterise_ms": round((t2 - t1) / n * 1e3, 2),
            "svg_kb": round(sum(map(len, svgs)) / n / 1024, 1), "png_kb": round(sum(map(len, pngs)) / n / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="avatars per one-core run (all cores: twice that)")
    parser.add_argument("--styles", default=",".join(avatars.DEFAULT_STYLES))
    args = parser.parse_args()
    styles = tuple(args.styles.split(","))

    avatars.generate(8, seed=99, styles=styles, workers=1, progress=False)   # build the style once (not timed)
    load_before = os.getloadavg()[0]  # other work on the machine lowers the rate: record it
    one_core, per_cpu_s = max(rate(args.n, styles, 1, seed) for seed in (1000, 1001))
    workers = default_workers()
    all_cores, _ = rate(2 * args.n, styles, workers, 1002)
    result = {
        "avatars_per_s_one_core": round(one_core, 1),
        "ms_per_avatar_one_core": round(1e3 / one_core, 2),
        "avatars_per_cpu_s": round(per_cpu_s, 1),
        "avatars_per_s_all_cores": round(all_cores, 1),
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "n_one_core": args.n,
        "n_all_cores": 2 * args.n,
        "size": avatars.DEFAULT_SIZE,
        "styles": list(styles),
        "stage_cost": split_cost(styles),
        "minutes_for_default_train_split_all_cores": round(avatars.DEFAULT_SIZES["train"] / all_cores / 60, 1),
        "load_avg_1min_before": round(load_before, 2),
        "command": "python bench/avatars_gen.py",
        "generator_version": avatars.GENERATOR_VERSION,
        "packages": {p: version(p) for p in ("dicebear-core", "dicebear-styles", "resvg-py")},
        "python": platform.python_version(),
    }
    write_result(RESULTS / "avatars_gen.json", result, echo=True)


if __name__ == "__main__":
    main()
