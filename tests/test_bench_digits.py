"""bench/digits.py (and bench/faces.py): a stop signal or a refused run ends it with one line that says how to go on,
not a traceback; and run names carry the process id, so runs started in one second differ."""
from __future__ import annotations

import os
import sys

import pytest

from dtn.run import StopRequested


def test_a_stopped_run_ends_with_one_line_naming_its_resume(load_bench, monkeypatch, tmp_path):
    bench = load_bench("digits")

    def stopped(cfg, runs_dir, name, resume=False):
        raise StopRequested(f"SIGTERM at step 399: checkpoint saved in {runs_dir / name}")

    monkeypatch.setattr(bench, "run_dtn", stopped)
    monkeypatch.setattr(sys, "argv", ["digits.py", "--preset", "tiny", "--seed", "3", "--tag", "t3",
                                      "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    message = str(stop.value.code)
    name = "t3-s3-"
    assert message.startswith("bench/digits.py: SIGTERM at step 399: checkpoint saved in ")
    assert f"python bench/digits.py --runs-dir {tmp_path} --resume {name}" in message and "--tag t3" in message
    assert message.count("\n") == 0


def test_run_names_differ_by_process(load_bench):
    machine = load_bench("machine")
    assert machine.run_name("x", 2).endswith(f"-{os.getpid()}") and machine.run_name("x", 2).startswith("x-s2-")


def test_a_stopped_faces_bench_run_names_its_resume_and_resuming_continues_that_run(load_bench, monkeypatch, tmp_path):
    """bench/faces.py (hours at full size on a CPU) stops with one line that keeps its --out and --grid;
    --resume NAME continues that run directory with its own stored config, not a fresh one."""
    from dtn.config import apply_overrides, tiny
    from dtn.rundir import RunDir

    bench = load_bench("faces")
    calls = []

    def stopped(cfg, runs_dir, name, resume=False):
        calls.append((cfg, name, resume))
        raise StopRequested(f"SIGTERM at step 7: checkpoint saved in {runs_dir / name}")

    monkeypatch.setattr(bench, "run_dtn", stopped)
    out = tmp_path / "f.json"
    with pytest.raises(SystemExit) as stop:
        bench.main(["--preset", "tiny", "--runs-dir", str(tmp_path), "--out", str(out)])
    message, name = str(stop.value.code), calls[0][1]
    assert message.startswith("bench/faces.py: SIGTERM at step 7") and message.count("\n") == 0
    assert f"--resume {name} --out {out} --grid {out.with_suffix('.png')}" in message
    stored = apply_overrides(tiny(), {"loss.alpha": "7"})
    RunDir.create(tmp_path / name, stored)
    with pytest.raises(SystemExit):
        bench.main(["--runs-dir", str(tmp_path), "--resume", name, "--out", str(out)])
    cfg, again, resume = calls[1]
    assert again == name and resume and cfg.loss.alpha == 7.0
