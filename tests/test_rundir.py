"""Run directories: refusing bad or hostile files with one clear error, atomic checkpoints, pruning."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dtn.config import tiny
from dtn.domain import Domain
from dtn.errors import RunError
from dtn.nets import Encoder
from dtn.rundir import RunDir
from dtn.train import Trainer


def _trainer(seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    cfg = tiny()
    src = Domain(torch.randint(0, 255, (32, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (32,)), "s", "train")
    tgt = Domain(torch.randint(0, 255, (32, 1, 32, 32), dtype=torch.uint8), torch.full((32,), -1), "t", "train")
    return Trainer(cfg, Encoder(cfg.nets).eval(), src, tgt, torch.device("cpu"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_state_file_whose_pickle_runs_code_is_refused_without_running_it(tmp_path: Path):
    run = RunDir.create(tmp_path / "r", tiny())
    tr = _trainer()
    tr.train_step()
    ckpt = run.save_checkpoint(tr)
    marker = tmp_path / "marker.txt"
    state = ckpt.with_name(ckpt.name.replace(".safetensors", ".state.pt"))
    with open(state, "wb") as fh:
        pickle.dump({"step": 1, "payload": _Evil(marker)}, fh)
    with pytest.raises(RunError, match="state.pt"):
        run.load_checkpoint(_trainer())
    assert not marker.exists(), "unpickling ran code"


def test_weights_that_are_not_safetensors_are_refused(tmp_path: Path):
    run = RunDir.create(tmp_path / "r", tiny())
    tr = _trainer()
    tr.train_step()
    ckpt = run.save_checkpoint(tr)
    ckpt.write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match="safetensors"):
        run.load_checkpoint(_trainer())


def test_missing_and_half_written_runs_get_one_line_errors(tmp_path: Path):
    with pytest.raises(RunError, match="does not exist"):
        RunDir.open(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.toml").write_text("name = 'x'\n")
    with pytest.raises(RunError, match="not a complete dtn run"):
        RunDir.open(tmp_path / "half")


def test_a_run_from_another_format_version_is_refused(tmp_path: Path):
    run = RunDir.create(tmp_path / "r", tiny())
    run.write_json("run.json", {"dtn_version": "9.9", "format": 99, "status": "done"})
    with pytest.raises(RunError, match="format 99"):
        RunDir.open(run.path)


def test_keep_last_prunes_old_checkpoints_and_leaves_no_temp_files(tmp_path: Path):
    run = RunDir.create(tmp_path / "r", tiny())
    tr = _trainer()
    for _ in range(5):
        tr.train_step()
        run.save_checkpoint(tr, keep_last=2)
    assert [s for s, _ in run.checkpoints()] == [4, 5]
    assert not list((run.path / "checkpoints").glob("*.tmp"))


def test_a_checkpoint_without_its_state_file_does_not_count(tmp_path: Path):
    run = RunDir.create(tmp_path / "r", tiny())
    tr = _trainer()
    tr.train_step()
    ckpt = run.save_checkpoint(tr)
    ckpt.with_name(ckpt.name.replace(".safetensors", ".state.pt")).unlink()
    assert run.checkpoints() == []
    with pytest.raises(RunError, match="no complete checkpoint"):
        run.load_checkpoint(_trainer())


def test_atomically_written_files_are_readable_by_others(tmp_path: Path):
    """mkstemp creates 0600 files; a report or weights file shared with a colleague must not be."""
    from dtn.weights import atomic_write

    target = tmp_path / "report.html"
    atomic_write(target, lambda tmp: Path(tmp).write_text("<html></html>"))
    assert target.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob("*.tmp"))


def test_inference_weights_prefer_the_moving_average_of_g():
    import torch
    from dtn.rundir import inference_weights

    plain = {"f.w": torch.zeros(1), "g.w": torch.ones(1), "d.w": torch.full((1,), 2.0)}
    assert inference_weights(plain) is plain
    averaged = inference_weights({**plain, "g_ema.w": torch.full((1,), 5.0)})
    assert set(averaged) == {"f.w", "g.w", "d.w"} and float(averaged["g.w"]) == 5.0


def test_a_claimed_run_directory_refuses_a_second_writer_until_released(tmp_path):
    from dtn.rundir import claim

    path = tmp_path / "runs" / "same-name"
    with claim(path):
        with pytest.raises(RunError, match=r"same-name is being written by another dtn process .*--name"):
            with claim(path):
                pass
    with claim(path):            # released when the first writer's block ended
        assert (path / ".lock").is_file()


def test_a_killed_writer_leaves_its_run_directory_free(tmp_path):
    """The claim is the kernel's lock: SIGKILL leaves no stale lock that would refuse the resume."""
    import signal
    import subprocess
    import sys

    from dtn.rundir import claim

    path = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dtn.rundir import claim\n"
                               f"with claim({str(path)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="being written by another dtn process"):
            with claim(path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with claim(path):
        pass
