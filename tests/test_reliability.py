"""Crash safety of `dtn train`: SIGKILL at random moments, resumed each time, costs at most one
checkpoint interval and ends bit-identical to an uninterrupted run; SIGINT saves a checkpoint and
exits cleanly.

The killed runs are forked children of the test process that run the CLI entry point `main(argv)`:
a fork inherits the imported torch, so each start costs ~0.3 s instead of ~4 s for a fresh
`python -m dtn.cli`, and twenty kills fit in a few seconds of start-up. SIGKILL on a forked child is
the same crash as on any process (no handler, no flush, no atexit). The SIGINT test below and the
SIGTERM test in test_run.py use real `python -m dtn.cli` subprocesses.
"""
from __future__ import annotations

import csv
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dtn.cli import main
from dtn.rundir import RunDir
from dtn.weights import load_tensors

STEPS = 200          # ~25 ms a step with a checkpoint every CKPT_EVERY steps: ~5 s of training in all
CKPT_EVERY = 3
KILLS = 20
KILL_SEED = 20240909
LOSS_COLUMNS = ("const", "tid", "gang", "g_total", "d")


def _train_argv(runs: Path, name: str, folders: tuple[Path, Path], resume: bool) -> list[str]:
    src, tgt = folders
    return ["--quiet", "train", "tiny", "--runs-dir", str(runs), "--name", name, *(["--resume"] if resume else []),
            "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}",
            "--set", f"train.steps={STEPS}", "--set", f"train.ckpt_every={CKPT_EVERY}",
            "--set", "train.eval_every=0", "--set", "train.log_every=1", "--set", "train.threads=1",
            "--set", "train.keep_last=2"]


def _child(argv: list[str], log: str) -> None:
    """Run the CLI in a forked child, its output appended to `log`; exit with main's return code."""
    with open(log, "a", buffering=1) as fh:
        sys.stdout = sys.stderr = fh
        os._exit(main(argv))


def _start(argv: list[str], log: Path) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(log)))
    proc.start()
    return proc


def _launch_argv(runs: Path, folders) -> list[str]:
    """--resume once the run directory is complete (config.toml and run.json), as a user would."""
    complete = (runs / "r" / "config.toml").is_file() and (runs / "r" / "run.json").is_file()
    return _train_argv(runs, "r", folders, resume=complete)


def _metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_checkpoints(run: Path) -> int:
    """Every complete checkpoint reads back (weights via safetensors, state weights_only); the newest step."""
    if not (run / "checkpoints").is_dir():
        return 0
    ckpts = RunDir(run).checkpoints()
    for step, path in ckpts:
        assert load_tensors(path), f"{path} is empty"
        state = torch.load(path.with_name(path.name.replace(".safetensors", ".state.pt")), weights_only=True)
        assert state["step"] == step, f"{path}: state file holds step {state['step']}"
    return ckpts[-1][0] if ckpts else 0


def _temp_files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob("*.tmp"))


def _kill_and_resume(runs: Path, folders, log: Path, span: float = 1.2) -> list[tuple[float, int, int]]:
    """KILLS launches, each SIGKILLed after a seeded random delay (0 to `span` s from the fork, so kills
    land in start-up, data loading, pretraining, training steps and checkpoint writes alike). `span`
    follows the measured length of an uninterrupted run, so a busy machine still gets kills in training."""
    rng = random.Random(KILL_SEED)
    history, last_ckpt = [], 0
    for _ in range(KILLS):
        delay = rng.uniform(0.0, span)
        proc = _start(_launch_argv(runs, folders), log)
        time.sleep(delay)
        proc.kill()
        proc.join(30)
        assert proc.exitcode in (-signal.SIGKILL, 0), f"child exited with {proc.exitcode}; see {log}"
        rows = _metric_rows(runs / "r")
        reached = int(rows[-1]["step"]) if rows else 0
        ckpt = _check_checkpoints(runs / "r")
        assert ckpt >= last_ckpt, f"newest checkpoint went from step {last_ckpt} back to {ckpt}"
        assert reached - ckpt <= CKPT_EVERY, f"killed at step {reached} but resume starts at {ckpt}"
        history.append((round(delay, 3), reached, ckpt))
        last_ckpt = ckpt
    return history


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(digit_folders, tmp_path, monkeypatch):
    """The uninterrupted reference runs first, in this process: it also pays for torch's lazy imports
    (dynamo on the first Adam, scipy for FLD) that the forked children then inherit. The killed run
    uses a cold cache of its own, so kills also land in classifier and f pretraining."""
    monkeypatch.setenv("DTN_QUIET", "1")
    runs, log = tmp_path / "runs", tmp_path / "children.log"
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache-ref"))
    started = time.monotonic()
    assert main(_train_argv(runs, "ref", digit_folders, resume=False)) == 0
    # 1.2 s on a quiet machine; on a busy one (a slower reference run) proportionally longer, so that
    # kills still land in training rather than all in start-up
    span = max(1.2, (time.monotonic() - started) / 6)
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path / "cache"))
    history = _kill_and_resume(runs, digit_folders, log, span)
    assert sum(1 for _, reached, _ in history if 0 < reached < STEPS) >= KILLS // 4, \
        f"too few kills landed during training: {history}"
    print("kills (delay s, last logged step, resumed from):", history)
    final = _start(_launch_argv(runs, digit_folders), log)
    final.join(120)
    assert final.exitcode == 0, log.read_text()[-2000:]
    assert _temp_files(runs / "r") == [], "a resumed run leaves no temp files behind"

    got, want = RunDir(runs / "r").checkpoints()[-1], RunDir(runs / "ref").checkpoints()[-1]
    assert got[0] == want[0] == STEPS
    a, b = load_tensors(got[1]), load_tensors(want[1])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run (kills: {history})"
    rows, ref_rows = _metric_rows(runs / "r"), _metric_rows(runs / "ref")
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for r, ref in zip(rows, ref_rows):
        assert {k: r.get(k) for k in LOSS_COLUMNS} == {k: ref.get(k) for k in LOSS_COLUMNS}, f"step {r['step']}"


def test_sigint_saves_a_checkpoint_and_exits_cleanly(digit_folders, tmp_path, wait_for_training):
    """A real `python -m dtn.cli` process: Ctrl-C during training saves a checkpoint, prints one line
    naming the step and the resume command, exits with 2; `--resume` then finishes the run."""
    src, tgt = digit_folders
    env = {**os.environ, "DTN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "dtn.cli", "train", "tiny", "--runs-dir", str(tmp_path), "--name", "r",
            "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}", "--set", "train.threads=1",
            "--set", "train.steps=100000", "--set", "train.ckpt_every=100000", "--set", "train.eval_every=0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, tmp_path / "r" / "metrics.csv")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.startswith("dtn: error: SIGINT at step") and err.count("\n") == 1 and "--resume" in err, err
    run = RunDir.open(tmp_path / "r")
    assert run.read_json("run.json")["status"] == "interrupted"
    [(step, _)] = run.checkpoints()
    assert main(["--quiet", "train", "tiny", "--resume", "--runs-dir", str(tmp_path), "--name", "r",
                 "--steps", str(step + 2)]) == 0
    assert run.checkpoints()[-1][0] == step + 2


def test_pretrain_then_train_equals_one_train(digit_folders, tmp_path):
    """g and D start from the same weights whether f was just pretrained in this process or loaded
    (`dtn pretrain` then `dtn train`, or a resume before the first checkpoint): the bug this found
    was g/D initialised from a global RNG that f's pretraining had or had not advanced."""
    def argv(cmd: str, name: str) -> list[str]:
        return ["--quiet", cmd, *_train_argv(tmp_path, name, digit_folders, resume=False)[2:]] + \
            ["--set", "train.steps=3"]

    assert main(argv("train", "one")) == 0
    assert main(argv("pretrain", "two")) == 0
    torch.rand(7)  # whatever else the process does with the global RNG in between
    assert main(argv("train", "two")) == 0
    a = load_tensors(RunDir(tmp_path / "one").checkpoints()[-1][1])
    b = load_tensors(RunDir(tmp_path / "two").checkpoints()[-1][1])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_between_config_and_run_json_is_taken_over(digit_folders, tmp_path):
    """config.toml is written before run.json; a kill in between leaves a run that is not complete
    (so not resumable) but holds nothing trained: starting it again takes it over."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text("name = 'r'\n")
    (tmp_path / "r" / "checkpoints").mkdir()
    (tmp_path / "r" / "checkpoints" / "step-000003.safetensors.abcd1234.tmp").write_bytes(b"half")
    assert main(_train_argv(tmp_path, "r", digit_folders, resume=False) + ["--set", "train.steps=1"]) == 0
    run = RunDir.open(tmp_path / "r")
    assert [s for s, _ in run.checkpoints()] == [1] and _temp_files(run.path) == []


# ----------------------------------------------------------------------------- read-only folders, full disks

def _refuse_writes_below(monkeypatch, folder: Path) -> str:
    """Make `folder` read-only for this process. A non-root user gets chmod 555; as root (these tests
    run as root, and chmod does not stop root's writes) os.open/open/mkdir are patched to fail with
    EACCES below the folder, which is what the kernel does for a read-only folder."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return "chmod 555"
    import builtins
    import errno
    import io

    root = os.path.abspath(folder)

    def below(path) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and \
            (os.path.abspath(os.fsdecode(path)) + os.sep).startswith(root + os.sep)

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    monkeypatch.setattr(os, "open", lambda p, flags, *a, **k: refuse(p) if flags & writes and below(p)
                        else real_os_open(p, flags, *a, **k))
    fake_open = (lambda f, mode="r", *a, **k: refuse(f) if set(mode) & set("wax+") and below(f)
                 else real_open(f, mode, *a, **k))
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: refuse(p) if below(p) else real_mkdir(p, *a, **k))
    return "simulated"


def test_a_read_only_runs_dir_or_run_dir_fails_before_training_with_one_line(digit_folders, tmp_path, monkeypatch,
                                                                              capsys):
    """New run in a read-only --runs-dir, and --resume of a run whose folder became read-only: one
    `dtn: error:` line naming the folder, exit 2, nothing trained (see _refuse_writes_below for root)."""
    argv = _train_argv(tmp_path / "runs", "r", digit_folders, resume=False) + ["--set", "train.steps=2"]
    assert main(argv) == 0
    capsys.readouterr()
    _refuse_writes_below(monkeypatch, tmp_path / "runs")
    assert main(_train_argv(tmp_path / "runs", "new", digit_folders, resume=False)) == 2
    err = capsys.readouterr().err
    assert err == f"dtn: error: cannot create run directory {tmp_path / 'runs' / 'new'}: Permission denied\n"
    assert main(["--quiet", "train", "tiny", "--resume", "--runs-dir", str(tmp_path / "runs"), "--name", "r",
                 "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dtn: error: cannot write {tmp_path / 'runs' / 'r'}") and err.count("\n") == 1, err
    monkeypatch.undo()
    assert [s for s, _ in RunDir(tmp_path / "runs" / "r").checkpoints()] == [2]


def test_a_full_disk_while_checkpointing_stops_with_one_line_and_keeps_earlier_checkpoints(digit_folders, tmp_path,
                                                                                            monkeypatch, capsys):
    import errno

    import dtn.rundir

    real, calls = dtn.rundir.save_tensors, []

    def fill_up(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata)

    monkeypatch.setattr(dtn.rundir, "save_tensors", fill_up)
    argv = _train_argv(tmp_path, "r", digit_folders, resume=False) + ["--set", "train.steps=4",
                                                                     "--set", "train.ckpt_every=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dtn: error: cannot write checkpoint") and "No space left on device" in err, err
    assert err.count("\n") == 1
    assert [s for s, _ in RunDir(tmp_path / "r").checkpoints()] == [2] and _temp_files(tmp_path / "r") == []
