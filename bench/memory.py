"""Peak training memory with an SVHN-extra-sized source (531,131 images, 32x32x3; goal <= 3 GiB).

    python bench/memory.py [--images 531131] [--steps 20] [--keep DIR] [--threads N]

1. A child process writes the source as an .npy (np.lib.format.open_memmap, uint8 (N, 32, 32, 3),
   1.6 GB) in a temporary folder, filled with cheap tiled noise: a separate process, so the pages it
   wrote never count against the measured one.
2. A fresh process opens it with np.load(mmap_mode="r"), wraps it with dtn.domain.view_uint8 (what
   `data.memmap = true` makes load_domain do: no copy into RAM), builds a Trainer with the digits preset
   (random f, a 60,000-image in-RAM MNIST-sized target) and runs --steps train steps with the GAN on.
   Its peak resident set (VmHWM from /proc/self/status, file-backed pages of the memmap included) is
   the figure. A second fresh process does the same with the source copied into RAM by resize_uint8,
   the path load_domain takes by default, for comparison.
Writes bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_GIB = 3.0
SVHN_EXTRA = 531_131


def write_source(path: Path, n: int, size: int = 32, chunk: int = 65_536) -> None:
    """uint8 (n, size, size, 3) .npy of one 8,192-image noise tile repeated (cheap to make, not constant)."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (min(chunk, 8192), size, size, 3), dtype=np.uint8)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    for start in range(0, n, len(tile)):
        stop = min(n, start + len(tile))
        out[start:stop] = tile[:stop - start]
    out.flush()
    del out
    np.save(path.with_name("labels.npy"), rng.integers(0, 10, n))


def proc_status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def measure(path: Path, mode: str, steps: int) -> dict:
    """Runs in a fresh process: build the Trainer on the source at `path` and train; report memory."""
    import torch

    from dtn.config import apply_overrides, preset
    from dtn.domain import Domain, resize_uint8, view_uint8
    from dtn.nets import Encoder, init_weights
    from dtn.train import Trainer

    before = proc_status()
    images = np.load(path, mmap_mode="r")
    labels = torch.from_numpy(np.load(path.with_name("labels.npy")))
    source_images = view_uint8(images) if mode == "memmap" else resize_uint8(images, 32, 3)
    source = Domain(source_images, labels, "svhn-extra-sized", "train")
    rng = np.random.default_rng(1)
    target = Domain(torch.from_numpy(rng.integers(0, 256, (60_000, 1, 32, 32), dtype=np.uint8)),
                    torch.full((60_000,), -1), "mnist-sized", "train")
    cfg = apply_overrides(preset("digits"), {"train.device": "cpu"})
    torch.manual_seed(0)
    f = Encoder(cfg.nets)
    init_weights(f)
    trainer = Trainer(cfg, f.eval(), source, target, torch.device("cpu"))
    trainer.step = cfg.train.warmup_steps
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    after = proc_status()
    return {"mode": mode, "steps": steps, "seconds": round(time.perf_counter() - t0, 1),
            "source_is_a_view_of_the_file": bool(np.shares_memory(source.images.numpy(), images)),
            "peak_rss_gib": round(after["VmHWM"] / 2**30, 3),
            "rss_after_imports_gib": round(before["VmRSS"] / 2**30, 3),
            "rss_anon_gib": round(after["RssAnon"] / 2**30, 3), "rss_file_gib": round(after["RssFile"] / 2**30, 3)}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=SVHN_EXTRA)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--keep", help="folder for the .npy (default: a temporary folder, removed after)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the training processes (default: all)")
    p.add_argument("--child", choices=("write", "memmap", "copy"), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "write":
        write_source(Path(args.path), args.images)
        print(json.dumps({"written": args.path}))
        return
    if args.child:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(Path(args.path), args.child, args.steps)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import RESULTS, machine_info, write_result

    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        path = Path(tmp) / "source.npy"
        t0 = time.perf_counter()
        run_child(["--child", "write", "--path", str(path), "--images", str(args.images)])
        written = time.perf_counter() - t0
        runs = {mode: run_child(["--child", mode, "--path", str(path), "--steps", str(args.steps),
                                 "--threads", str(args.threads)])
                for mode in ("memmap", "copy")}
        size = path.stat().st_size
    peak = runs["memmap"]["peak_rss_gib"]
    result = {
        "command": "python bench/memory.py " + " ".join(sys.argv[1:]),
        "source_images": args.images, "source_file_gib": round(size / 2**30, 3),
        "write_seconds": round(written, 1), "peak_rss_gib": peak, "goal_gib": GOAL_GIB, "met": peak <= GOAL_GIB,
        "runs": runs,
        "measured": "VmHWM (peak resident set, file-backed memmap pages included) of a fresh process that "
                    "opens the source, builds the digits Trainer and runs the train steps",
        "machine": machine_info(),
    }
    out = write_result(RESULTS / "memory.json", result)
    print(f"wrote {out}: peak RSS {peak:.2f} GiB with the memmapped source "
          f"({runs['copy']['peak_rss_gib']:.2f} GiB copied into RAM); goal <= {GOAL_GIB} GiB")


if __name__ == "__main__":
    main()
