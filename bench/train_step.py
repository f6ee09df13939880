"""Training throughput: the Trainer's step against a plain fp32 eager port of the same step.

    python bench/train_step.py [--preset digits] [--device cpu|cuda] [--rounds 6] [--steps 3]

(a) bench/reference_step.py: fp32, NCHW, a DataLoader over per-sample numpy arrays with PIL-style
    conversion, separate forward passes per loss, .item() on every loss;
(b) dtn.train.Trainer.train_step with the preset (digits: bf16 autocast, channels_last, in-memory
    uint8 batching).
Both start from the same weights and read the same images (random uint8, 20,000 per domain), with
the preset's batch size and update ratio; the GAN terms are on (the step counter starts after the
warm-up). The two alternate in rounds, so background load hits both alike; each figure is the
median over rounds. Throughput counts every image a step draws: g_steps x (source + target) x batch.
Writes bench/results/train_step.json (or train_step_cuda.json with --device cuda).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_speed_args, machine_info, result_path, speed_device, write_result  # noqa: E402
from reference_step import make_loader, make_nets, reference_step  # noqa: E402

from dtn.config import apply_overrides, parse_set_args, preset, reader_augments  # noqa: E402
from dtn.domain import Domain  # noqa: E402
from dtn.nets import Encoder, init_weights  # noqa: E402
from dtn.pretrain import ReaderEnsemble  # noqa: E402
from dtn.train import Trainer  # noqa: E402

GOAL = 2.5
GPU_GOAL_IMG_PER_S = 30_000   # issue #7: digits training on one H100-class GPU


def random_domains(n: int, cfg, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source (n, S, S, C_s) and target (n, S, S, C_t) uint8 images and source labels: speed does not
    depend on content, and random data keeps the benchmark free of downloads and generation time."""
    rng = np.random.default_rng(seed)
    s = cfg.nets.image_size
    src = rng.integers(0, 256, (n, s, s, cfg.nets.source_channels), dtype=np.uint8)
    tgt = rng.integers(0, 256, (n, s, s, cfg.nets.target_channels), dtype=np.uint8)
    return src, tgt, rng.integers(0, 10, n)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def random_reader(cfg):
    """L_READ's reader(s) with random weights (None when the preset has no L_READ): a reader's cost does
    not depend on what it learned, and training one takes minutes."""
    if not cfg.loss.target_reader:
        return None
    readers = []
    for _ in reader_augments(cfg.pretrain.reader_augment):
        reader = Encoder(cfg.nets)
        init_weights(reader)
        readers.append(reader.eval().requires_grad_(False))
    return readers[0] if len(readers) == 1 else ReaderEnsemble(readers)


def build(cfg, device: torch.device, n: int, workers: int):
    """The Trainer and a reference port holding copies of the Trainer's initial weights."""
    src, tgt, labels = random_domains(n, cfg)
    torch.manual_seed(0)
    f = Encoder(cfg.nets)
    init_weights(f)
    source = Domain(nchw(src), torch.from_numpy(labels), "random-source", "train")
    target = Domain(nchw(tgt), torch.full((n,), -1), "random-target", "train")
    trainer = Trainer(cfg, f.eval(), source, target, device, random_reader(cfg))
    trainer.step = cfg.train.warmup_steps          # time the full step, GAN terms included
    plain = {k: copy.deepcopy(m).to(memory_format=torch.contiguous_format) for k, m in trainer.modules().items()}
    nets = make_nets(cfg, plain["f"].eval(), plain["g"], plain["d"], float(trainer.code_scale))
    loaders = (make_loader(src, labels, cfg.train.batch_size, 1, workers),
               make_loader(tgt, np.zeros(n, np.int64), cfg.train.batch_size, 2, workers))
    return trainer, nets, loaders


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` consecutive steps (the device is synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(1, steps)   # steps 0 (--warmup 0): no time, not a crash


def alternate(trainer, nets, loaders, cfg, device: torch.device, args) -> dict[str, list[float]]:
    """Seconds per step of each, per round; the order flips every round."""
    src, tgt = loaders
    ref_step = [trainer.step]

    def run_reference():
        reference_step(nets, src, tgt, cfg, ref_step[0], device)
        ref_step[0] += 1

    def run_trainer():
        trainer.train_step()  # as dtn's loop calls it: losses stay on the device until a log step

    order = (("reference", run_reference), ("trainer", run_trainer))
    for _, fn in order:
        time_steps(fn, args.warmup, device)
    times: dict[str, list[float]] = {"reference": [], "trainer": []}
    for r in range(args.rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(time_steps(fn, args.steps, device))
        print(f"round {r + 1}/{args.rounds}: reference {times['reference'][-1]:.3f} s/step, "
              f"trainer {times['trainer'][-1]:.3f} s/step", flush=True)
    return times


def summary(times: dict[str, list[float]], cfg, device: torch.device, args) -> dict:
    per_step = cfg.train.g_steps * 2 * cfg.train.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["reference"] / med["trainer"]
    what = {"reference": "fp32 NCHW eager, DataLoader over per-sample numpy + PIL conversion "
                         f"(workers={args.workers}), separate forward passes per loss, .item() per loss",
            "trainer": f"Trainer.train_step: precision {cfg.train.precision}, channels_last "
                       f"{cfg.train.channels_last}, in-memory uint8 batching"}
    return {
        "command": "python bench/train_step.py " + " ".join(sys.argv[1:]),
        "preset": args.preset, "device": str(device), "images_per_step": per_step,
        "images_counted": f"source + target images drawn per step: g_steps ({cfg.train.g_steps}) x 2 domains "
                          f"x batch ({cfg.train.batch_size}); d_steps {cfg.train.d_steps} D update(s) reuse them",
        **{k: {"img_per_s": round(per_step / med[k], 1), "s_per_step": round(med[k], 4),
               "s_per_step_rounds": [round(t, 4) for t in times[k]], "what": what[k]} for k in times},
        "speedup": round(ratio, 2), "goal": GOAL, "met": ratio >= GOAL,
        "shortfall": None if ratio >= GOAL else f"{GOAL - ratio:.2f}x below the {GOAL}x goal "
                                                f"({100 * (1 - ratio / GOAL):.0f} % short)",
        **(gpu_goal(per_step / med["trainer"]) if device.type == "cuda" else {}),
        "cuda_graphs": cfg.train.cuda_graphs and device.type == "cuda",
        "rounds": args.rounds, "steps_per_round": args.steps, "images_per_domain": args.images,
        "batch_size": cfg.train.batch_size, "machine": machine_info(device),
    }


def gpu_goal(img_per_s: float) -> dict:
    met = img_per_s >= GPU_GOAL_IMG_PER_S
    return {"gpu_goal_img_per_s": GPU_GOAL_IMG_PER_S, "gpu_goal_met": met,
            "gpu_shortfall": None if met else f"{GPU_GOAL_IMG_PER_S - img_per_s:,.0f} img/s short "
                                              f"({100 * (1 - img_per_s / GPU_GOAL_IMG_PER_S):.0f} %)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(p)
    p.add_argument("--set", action="append", default=[], help="section.key=value, applied to both")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="steps of each per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    p.add_argument("--images", type=int, default=20_000, help="images per domain")
    p.add_argument("--workers", type=int, default=0, help="reference DataLoader workers (default 0: loading a "
                   "128-image batch takes about 5 ms here, about 1 %% of a step, and workers would compete with the "
                   "step for the 2 cores)")
    args = p.parse_args()
    device = speed_device(args)
    cfg = apply_overrides(preset(args.preset), {"train.device": str(device), **parse_set_args(args.set)})
    trainer, nets, loaders = build(cfg, device, args.images, args.workers)
    result = summary(alternate(trainer, nets, loaders, cfg, device, args), cfg, device, args)
    out = write_result(result_path(args, "train_step", device), result)
    print(f"wrote {out}: reference {result['reference']['img_per_s']} img/s, trainer "
          f"{result['trainer']['img_per_s']} img/s, {result['speedup']:.2f}x (goal {GOAL}x)")


if __name__ == "__main__":
    main()
