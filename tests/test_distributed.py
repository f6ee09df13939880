"""Two CPU processes (gloo) train what one process trains with the same global batch (distributed.py):
the same losses step after step and the same weights after, BatchNorm statistics included. And a
2-process `torchrun -m dtn run` writes one run directory, from rank 0 only."""
from __future__ import annotations

import csv
import gc
import os
import socket
import subprocess
import sys
import weakref

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from dtn.config import apply_overrides, preset
from dtn.distributed import Dist, GlobalBatchNorm2d, prepare, process_device, session
from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.nets import Encoder, init_weights
from dtn.train import Trainer

STEPS = 3
OVERRIDES = {"train.device": "cpu", "train.precision": "fp32", "train.warmup_steps": 0, "train.batch_size": 8,
             "train.g_steps": 2, "loss.gamma": 0.05}


def make_trainer(overrides: dict) -> Trainer:
    """The tiny preset on fixed random domains, g and D seeded as run.py seeds them."""
    cfg = apply_overrides(preset("tiny"), overrides)
    g = torch.Generator().manual_seed(0)
    source = Domain(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (40,), generator=g), "s", "train")
    target = Domain(torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=g),
                    torch.full((40,), -1), "t", "train")
    torch.manual_seed(0)
    f = Encoder(cfg.nets)
    init_weights(f)
    with torch.no_grad():
        f(torch.rand(16, 3, 32, 32) * 2 - 1)     # BN running statistics, as pretraining leaves them
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, f.eval(), source, target, torch.device("cpu"))


def states(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n in ("g", "d") for k, v in getattr(trainer, n).state_dict().items()}


def train_in_process_group(d: Dist, wrappers: list) -> dict:
    """STEPS steps of one rank. The trainer ends with this call, inside the session, as it does in
    run.py; weak references to its DDP wrappers go into `wrappers`."""
    trainer = prepare(make_trainer(OVERRIDES), d)
    wrappers += [weakref.ref(trainer.g_train), weakref.ref(trainer.d_train)]
    losses = [{k: float(v) for k, v in d.mean(trainer.train_step().values).items()} for _ in range(STEPS)]
    return {"losses": losses, "states": states(trainer), "shard": trainer.sample()[0].shape[0],
            "global_bn_layers": sum(isinstance(m, GlobalBatchNorm2d) for m in trainer.g.modules())}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """Trains twice: as dtn does (global BatchNorm), then with per-rank BatchNorm statistics (plain DDP)
    to show that the comparison below would catch the difference."""
    import dtn.distributed as distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    results, wrappers = {}, []
    gc.disable()            # DDP holds reference cycles: only an explicit collection frees a dropped wrapper
    with session(torch.device("cpu")) as d:
        results["global_bn"] = train_in_process_group(d, wrappers)
        distributed.global_batchnorm = lambda module: module
        results["per_rank_bn"] = train_in_process_group(d, wrappers)
        results["wrappers_alive_in_session"] = sum(r() is not None for r in wrappers)
    # session() collected them before destroying the process group (one freed later, at exit, while gloo's
    # threads run, can abort the process: CI saw it once)
    results["wrappers_alive_after"] = sum(r() is not None for r in wrappers)
    gc.enable()
    if rank == 0:
        torch.save(results, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mismatches(two: dict, one: list[dict], one_states: dict) -> list[str]:
    """What differs beyond float tolerance between a 2-process run and the 1-process run."""
    bad = [f"step {i + 1} {k}" for i, (got, want) in enumerate(zip(two["losses"], one)) for k in want
           if got.get(k) != pytest.approx(want[k], rel=2e-4, abs=1e-5)]
    return bad + [k for k, v in one_states.items()
                  if not torch.allclose(two["states"][k].float(), v.float(), rtol=1e-3, atol=1e-4)]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    one = make_trainer(OVERRIDES)
    losses = [one.train_step().items() for _ in range(STEPS)]
    assert {"d", "gang", "const", "tid", "tv"} <= set(losses[0])
    ddp = two["global_bn"]
    assert ddp["shard"] == OVERRIDES["train.batch_size"] // 2 and ddp["global_bn_layers"] > 0
    assert mismatches(ddp, losses, states(one)) == []
    assert two["wrappers_alive_in_session"] > 0, "dropped DDP wrappers outlive their trainer (reference cycles)"
    assert two["wrappers_alive_after"] == 0, "session() must free them before destroying the process group"
    plain = two["per_rank_bn"]
    assert plain["global_bn_layers"] == 0
    assert len(mismatches(plain, losses, states(one))) > 10, "per-rank BatchNorm should not pass this comparison"


def test_global_batchnorm_is_plain_batchnorm_in_one_process():
    bn = nn.BatchNorm2d(4)
    mine = GlobalBatchNorm2d(4)
    x = torch.randn(6, 4, 5, 5)
    assert torch.equal(mine(x), bn(x)) and torch.equal(mine.running_var, bn.running_var)


def test_a_single_process_is_left_alone_and_bad_configs_are_refused():
    t = make_trainer(OVERRIDES)
    assert prepare(t, Dist()) is t and t.g_train is t.g and t.shard is None
    two = Dist(rank=1, world_size=2)
    for bad in ({"train.batch_size": 7}, {"train.f_trainable": True}, {"train.d_loss_floor": 0.5}):
        with pytest.raises(ConfigError):
            prepare(make_trainer({**OVERRIDES, **bad}), two)
    assert process_device(two, torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="one process per GPU"):
        process_device(Dist(rank=1, world_size=2, local_rank=torch.cuda.device_count()), torch.device("cuda"))


@pytest.mark.slow
def test_torchrun_writes_one_run_dir_from_rank_0(tmp_path, digit_folders):
    src, tgt = digit_folders
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dtn",
           "--quiet", "run", "tiny", "--device", "cpu", "--runs-dir", str(tmp_path), "--name", "ddp",
           "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "ddp"
    with open(run / "metrics.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == [1, 2, 3, 4], "each step logged once (rank 0 only)"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-000002.safetensors", "step-000002.state.pt", "step-000004.safetensors", "step-000004.state.pt"]
    assert (run / "results.json").is_file() and (run / "report.html").is_file()
    assert done.stdout.count("transfer accuracy") == 1, "only rank 0 prints"
