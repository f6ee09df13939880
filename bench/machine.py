"""What a benchmark ran on, recorded beside every number (CPU model, cores, torch build, load), and the
pieces every benchmark shares: the speed flags and writing bench/results/*.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from dtn.run import cpu_model   # one home for the CPU's name: results.json's trained_on uses it too
from dtn.train import pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def run_name(prefix: str, seed: int) -> str:
    """A fresh run name: the time alone let two bench runs started in the same second share one
    directory (now refused), so the process id is part of it."""
    return f"{prefix}-s{seed}-{int(time.time())}-{os.getpid()}"


def machine_info(device: torch.device | None = None) -> dict:
    """Load average is recorded because other work on a 2-core machine changes every figure."""
    info = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def add_speed_args(p: argparse.ArgumentParser) -> None:
    """--preset, --device, --threads, --out: the flags of the speed benchmarks (train_step, peak, transfer_speed)."""
    p.add_argument("--preset", default="digits")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--out", default=None, help="results file (default bench/results/NAME.json on the CPU, "
                   "NAME_cuda.json on a GPU)")


def speed_device(args: argparse.Namespace) -> torch.device:
    """Applies --threads and resolves --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def result_path(args: argparse.Namespace, name: str, device: torch.device) -> Path:
    """--out, else bench/results/NAME.json (CPU) or NAME_<device type>.json, so a GPU run keeps the CPU figure."""
    if args.out:
        return Path(args.out)
    return RESULTS / (f"{name}.json" if device.type == "cpu" else f"{name}_{device.type}.json")


def write_result(path: Path, result: dict, echo: bool = False) -> Path:
    """The results JSON (indent 2, trailing newline); `echo` prints it too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    if echo:
        print(text, end="")
    return path


def stop_line(script: str, exc: Exception, resume_command: str) -> str:
    """The one line a stopped or refused bench run ends with, as `dtn run` words it; after a stop signal
    (checkpoint saved) it also says how to resume the bench run."""
    from dtn.run import StopRequested

    return f"{script}: {exc}" + (f"; or: {resume_command}" if isinstance(exc, StopRequested) else "")
