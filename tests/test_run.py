"""`dtn run` under failure: divergence stops before a bad checkpoint; SIGTERM saves one and resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtn.config import apply_overrides, tiny
from dtn.rundir import RunDir
from dtn.run import DivergenceError, run_dtn
from dtn.train import StepOutput, Trainer


@pytest.fixture
def folders(digit_folders):
    return digit_folders


def _cfg(folders, **over):
    src, tgt = folders
    return apply_overrides(tiny(), {"data.source": f"folder:{src}", "data.target": f"folder:{tgt}", **over})


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(folders, tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def poisoned(self):
        out = real_step(self)
        if self.step >= 3:
            out.values["tid"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    cfg = _cfg(folders, **{"train.steps": "6", "train.ckpt_every": "2", "train.log_every": "1"})
    with pytest.raises(DivergenceError, match="step 3: loss tid = nan"):
        run_dtn(cfg, tmp_path, "r")
    run = RunDir(tmp_path / "r")
    assert [s for s, _ in run.checkpoints()] == [2]


def test_nan_weights_are_caught_too(folders, tmp_path, monkeypatch):
    real_step = Trainer.train_step

    def poisoned(self) -> StepOutput:
        out = real_step(self)
        if self.step == 2:
            with torch.no_grad():
                next(self.g.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    cfg = _cfg(folders, **{"train.steps": "6", "train.ckpt_every": "1", "train.log_every": "1"})
    with pytest.raises(DivergenceError, match=r"step 2: g\."):
        run_dtn(cfg, tmp_path, "r")
    assert [s for s, _ in RunDir(tmp_path / "r").checkpoints()] == [1]


def test_sigterm_saves_a_checkpoint_and_resume_finishes(folders, tmp_path, wait_for_training):
    src, tgt = folders
    env = {**os.environ, "DTN_QUIET": "1", "DTN_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "dtn.cli", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "r",
            "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}",
            "--set", "train.steps=100000", "--set", "train.ckpt_every=100000", "--set", "train.eval_every=0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, tmp_path / "r" / "metrics.csv")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "SIGTERM at step" in err and "--resume" in err
    run = RunDir.open(tmp_path / "r")
    assert run.read_json("run.json")["status"] == "interrupted"
    [(step, _)] = run.checkpoints()
    assert step >= 3
    resumed = subprocess.run(args[:4] + ["--resume", "--runs-dir", str(tmp_path), "--name", "r",
                                         "--steps", str(step + 2)], env=env, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["steps"] == step + 2


def test_an_unwritable_runs_dir_fails_early_with_one_line(folders, capsys):
    from dtn.cli import main

    src, tgt = folders
    rc = main(["run", "tiny", "--runs-dir", "/proc/dtn-cannot-write-here", "--name", "r",
               "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot create run directory /proc/dtn-cannot-write-here/r" in err and err.count("\n") == 1


def test_too_little_disk_space_fails_before_training(folders, tmp_path, monkeypatch):
    import shutil

    from dtn.errors import RunError

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(RunError, match="not enough free disk space"):
        run_dtn(_cfg(folders), tmp_path, "r")
    assert RunDir(tmp_path / "r").checkpoints() == []


def test_a_run_says_how_many_targets_it_trains_on_with_target_min_confidence(folders, tmp_path, capsys):
    """With 10 classes every softmax peak is >= 0.1, so 0.1 keeps them all: the line names both counts."""
    cfg = _cfg(folders, **{"train.steps": "2", "train.target_min_confidence": "0.1"})
    run_dtn(cfg, tmp_path, "r", until="train")
    out = capsys.readouterr().out
    n = len(list((Path(folders[1]) / "train").rglob("*.png")))
    assert f"training on the {n:,} of {n:,}" in out and "confidence >= 0.1" in out


def test_a_run_trains_its_target_reader_once_keeps_it_and_resumes_with_it(folders, tmp_path, capsys):
    """loss.target_reader: the reader is trained once (reader.json says on how many targets), saved in the
    run dir and the cache; another run of the same f loads it from the cache, a resume from the run dir."""
    over = {"train.steps": "2", "loss.target_reader": "5", "pretrain.reader_steps": "3",
            "pretrain.reader_min_confidence": "0.1"}       # 10 classes: every softmax peak is >= 0.1
    run_dtn(_cfg(folders, **over), tmp_path, "a", until="train")
    facts = json.loads((tmp_path / "a" / "reader.json").read_text())
    n = len(list((Path(folders[1]) / "train").rglob("*.png")))
    assert facts["trained_on"] == facts["of"] == n and sum(facts["per_class"]) == n
    assert "target reader trained" in capsys.readouterr().out
    run_dtn(_cfg(folders, **over), tmp_path, "b", until="train")
    assert "target reader loaded from cache" in capsys.readouterr().out
    a, b = (RunDir(tmp_path / r).path / "reader.safetensors" for r in "ab")
    assert a.read_bytes() == b.read_bytes()
    run_dtn(_cfg(folders, **{**over, "train.steps": "3"}), tmp_path, "b", resume=True, until="train")
    out = capsys.readouterr().out
    assert "target reader" not in out, "a resumed run uses its own reader.safetensors"
    run_dtn(_cfg(folders, **{**over, "pretrain.reader_refine_steps": "2", "pretrain.reader_augment": "speckle"}),
            tmp_path, "c", until="train")
    assert "then refined on all of them for 2 steps" in capsys.readouterr().out, "a refined reader is cached apart"
    facts = json.loads((tmp_path / "c" / "reader.json").read_text())
    assert (facts["refine_steps"], facts["augment"]) == (2, "speckle")
    run_dtn(_cfg(folders, **{**over, "pretrain.reader_class_share": "0.5"}), tmp_path, "d", until="train")
    assert "most confidently as each class (share 0.5)" in capsys.readouterr().out, "a class-share reader is cached apart"
    facts = json.loads((tmp_path / "d" / "reader.json").read_text())
    assert facts["class_share"] == 0.5 and facts["trained_on"] < facts["of"]
    run_dtn(_cfg(folders, **{**over, "pretrain.reader_augment": "shift,speckle"}), tmp_path, "e", until="train")
    out = capsys.readouterr().out
    assert out.count("target reader loaded from cache") == 1 and out.count("target reader trained") == 1, \
        "several augmentations: one reader each, the shift one is run a's"
    e = RunDir(tmp_path / "e").path
    assert (e / "reader-shift.safetensors").read_bytes() == a.read_bytes()
    assert json.loads((e / "reader-speckle.json").read_text())["augment"] == "speckle"
    assert not (e / "reader.safetensors").exists()
    run_dtn(_cfg(folders, **{**over, "pretrain.reader_adversarial": "0.2"}), tmp_path, "f", until="train")
    assert "target reader trained" in capsys.readouterr().out, "an adversarially trained reader is cached apart"
    assert json.loads((tmp_path / "f" / "reader.json").read_text())["adversarial"] == 0.2


def test_a_second_run_into_a_run_directory_being_written_is_refused_untouched(folders, tmp_path):
    """Two processes given one name (bench runs started in the same second) once both took over the
    fresh run and interleaved their checkpoints and metrics; the second now stops before writing."""
    from dtn.errors import RunError
    from dtn.rundir import claim

    with claim(tmp_path / "r"):      # what the first process holds while it trains
        with pytest.raises(RunError, match="being written by another dtn process"):
            run_dtn(_cfg(folders), tmp_path, "r")
    assert not (tmp_path / "r" / "config.toml").exists()
    run_dtn(_cfg(folders, **{"train.steps": "2"}), tmp_path, "r", until="train")   # free again
    assert RunDir(tmp_path / "r").checkpoints()
