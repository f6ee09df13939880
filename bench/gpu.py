"""The GPU figures in one command: train step (vs the plain port), peak fraction and transfer speed on
CUDA, gathered into bench/results/gpu.json. Without a GPU it records that none was available, with the
commands that would measure it.

    python bench/gpu.py [--out-dir bench/results]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHES = {
    "train_step": ["train_step.py", "--device", "cuda", "--rounds", "6", "--steps", "20", "--warmup", "5", "--workers", "4"],
    # the same without the captured graph: what the graph itself buys
    "train_step_eager": ["train_step.py", "--device", "cuda", "--rounds", "6", "--steps", "20", "--warmup", "5",
                         "--workers", "4", "--set", "train.cuda_graphs=false"],
    "peak": ["peak.py", "--device", "cuda", "--steps", "20", "--size", "8192"],
    "transfer_speed": ["transfer_speed.py", "--device", "cuda", "--batch-sizes", "256,1024,4096", "--images", "32768"],
    # the whole `dtn run digits` on the GPU (graphed steps, evaluation, checkpoints): needs DTN_DATA_DIR's MNIST
    "time_to_90": ["time_to_90.py", "--eval-every", "100", "--runs-dir", "runs/gpu"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    commands = {name: "python bench/" + " ".join(argv) for name, argv in BENCHES.items()}
    result: dict = {"command": "python bench/gpu.py", "commands": commands, "available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        result["note"] = (f"no CUDA GPU visible to torch {torch.__version__} on this machine; run the command on "
                          "one to fill this file (bench/train_step.py --device cuda alone gives the speed-up)")
        result["machine"] = machine_info()
    else:
        for name, argv in BENCHES.items():
            target = out_dir / f"{name}_cuda.json"
            done = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:], "--out", str(target)],
                                  capture_output=True, text=True)
            print(done.stdout, done.stderr[-2000:], sep="\n")
            # one failed benchmark is recorded as such; the others still run
            result[name] = json.loads(target.read_text()) if done.returncode == 0 else {
                "failed": done.returncode, "stderr_tail": done.stderr[-2000:]}
        result["machine"] = machine_info(torch.device("cuda"))
    (out_dir / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_dir / 'gpu.json'} (GPU available: {result['available']})")


if __name__ == "__main__":
    main()
