"""`dtn select`: label-free checkpoint choice, its signals and rule, and keep-best pruning."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from dtn.cli import main
from dtn.config import tiny
from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.nets import Encoder
from dtn.rundir import RunDir
from dtn.select import SIGNALS, checkpoint_signals, choose, pick_signals, rank_average, ranks
from dtn.train import Trainer


def test_select_on_a_tiny_run_writes_select_json_and_picks_a_checkpoint(tiny_run_dir: Path, tmp_path: Path,
                                                                        capsys):
    run = tmp_path / "t"
    shutil.copytree(tiny_run_dir, run)
    assert main(["--quiet", "select", str(run), "--samples", "20"]) == 0
    result = json.loads((run / "select.json").read_text())
    steps = [s for s, _ in RunDir.open(run).checkpoints()]
    assert [r["step"] for r in result["checkpoints"]] == steps == [2, 4]
    assert result["chosen_step"] in steps and (run / result["chosen_checkpoint"]).is_file()
    assert set(result["signals"]) == {"feature_fd", "pixel_fd"}
    for row in result["checkpoints"]:
        assert all(math.isfinite(row[k]) for k in ("feature_fd", "pixel_fd", "code_fd"))
        assert 0 <= row["f_agreement"] <= 1 and 0 <= row["d_real"] <= 1
    assert f"chosen step {result['chosen_step']}" in capsys.readouterr().out


def test_unknown_signal_lists_the_valid_ones(tiny_run_dir: Path, capsys):
    with pytest.raises(ConfigError, match="feature_fd, pixel_fd, code_fd, f_agreement, d_real"):
        pick_signals("code_fd,nope")
    assert main(["select", str(tiny_run_dir), "--signals", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_ranks_share_ties_put_nan_last_and_a_tie_goes_to_the_later_step():
    assert ranks([3.0, 1.0, 1.0, float("nan")], higher_is_better=False) == [3.0, 1.5, 1.5, 4.0]
    assert ranks([0.2, 0.9, 0.5], higher_is_better=True) == [3.0, 1.0, 2.0]
    rows = [{"step": 100, "a": 1.0, "b": 0.5}, {"step": 200, "a": 2.0, "b": 0.9}]
    fd, agree = pick_signals("code_fd")[0], pick_signals("f_agreement")[0]
    scores = rank_average([{"step": r["step"], "code_fd": r["a"], "f_agreement": r["b"]} for r in rows], (fd, agree))
    assert scores == [1.5, 1.5] and rows[choose(rows, scores)]["step"] == 200


# --------------------------------------------------------------------------- do the signals point the right way?
ROWS = 32   # image height; class k is a bright bar on rows 3k+1 .. 3k+3


def bars(labels: torch.Tensor, channels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((len(labels), channels, ROWS, ROWS), generator=g) * 0.4 - 1.0
    for i, k in enumerate(labels.tolist()):
        x[i, :, 3 * k + 1: 3 * k + 4] = 1.0
    return x


class RowF(nn.Module):
    """A stand-in for a pretrained f: the code is the row profile, the head reads the bar's row, and
    the "second block" (up to the second ReLU) keeps the bright pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Identity(), nn.ReLU(), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, [3 * k + 2 for k in range(10)]]


class GoodG(nn.Module):
    """Draws a grey bar image from the row profile: what a well-trained g does here."""

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.where(code > 0, 1.0, -0.8)[:, None, :, None].expand(-1, 1, ROWS, ROWS).contiguous()


class RandomG(nn.Module):
    """A broken g: noise that ignores the code."""

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.rand((len(code), 1, ROWS, ROWS), generator=g) * 2 - 1


class BarD(nn.Module):
    """Ternary D logits (G(s), G(t), real): the brighter the brightest row, the more real it looks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = 4 * x.mean(dim=(1, 3)).amax(1)
        return torch.stack([torch.zeros_like(real), torch.zeros_like(real), real], 1)


def test_a_good_g_beats_a_broken_g_on_every_signal_and_is_chosen():
    labels = torch.arange(200) % 10
    source, target = bars(labels, 3, seed=1), bars(labels.flip(0), 1, seed=2)
    rows = []
    for step, g in ((1, GoodG()), (2, RandomG())):
        rows.append({"step": step, **checkpoint_signals(RowF(), g, BarD(), source, target, code_dim=ROWS, batch=64)})
    good, bad = rows
    for name in ("feature_fd", "pixel_fd", "code_fd"):
        assert good[name] < bad[name], name
    assert good["f_agreement"] > 0.95 > 0.3 > bad["f_agreement"]
    assert good["d_real"] > bad["d_real"]
    for signals in (pick_signals(None), SIGNALS):
        assert rows[choose(rows, rank_average(rows, signals))]["step"] == 1, "the broken g must not win"


class ClassBarD(BarD):
    """A conditional D: real only when the bar of the class it is told is bright."""

    num_conditions = 10

    def __init__(self) -> None:
        super().__init__()
        self.told: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        if cls is None:
            raise ValueError("a conditional D needs the class of each image")
        self.told.append(cls)
        right = x.mean(dim=(1, 3)).gather(1, (3 * cls + 2)[:, None]).squeeze(1) > 0
        real = torch.where(right, 4.0, -4.0)
        return torch.stack([torch.zeros_like(real), torch.zeros_like(real), real], 1)


def test_a_conditional_d_is_told_the_class_f_reads_in_x():
    """The default digits preset trains a conditional D: d_real asks it about G(x) given f's reading of
    x, as training does (it used to call D without a class and fail)."""
    labels = torch.arange(100) % 10
    source, target = bars(labels, 3, seed=1), bars(labels.flip(0), 1, seed=2)
    d = ClassBarD()
    good = checkpoint_signals(RowF(), GoodG(), d, source, target, code_dim=ROWS, batch=32)
    assert torch.equal(torch.cat(d.told), labels)
    assert good["d_real"] > 0.95
    bad = checkpoint_signals(RowF(), RandomG(), ClassBarD(), source, target, code_dim=ROWS, batch=32)
    assert bad["d_real"] < 0.5


def test_select_runs_on_a_run_with_a_conditional_d(tmp_path: Path, digit_folders):
    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "c",
                 "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}",
                 "--set", "nets.d_conditional=true"]) == 0
    assert main(["--quiet", "select", str(tmp_path / "c"), "--samples", "20"]) == 0
    result = json.loads((tmp_path / "c" / "select.json").read_text())
    assert all(0 <= row["d_real"] <= 1 for row in result["checkpoints"])


# --------------------------------------------------------------------------- keep-best
def test_the_selected_checkpoint_survives_keep_last_pruning(tmp_path: Path):
    cfg = tiny()
    src = Domain(torch.zeros((16, 3, 32, 32), dtype=torch.uint8), torch.zeros(16, dtype=torch.long), "s", "train")
    tgt = Domain(torch.zeros((16, 1, 32, 32), dtype=torch.uint8), torch.full((16,), -1), "t", "train")
    trainer = Trainer(cfg, Encoder(cfg.nets).eval(), src, tgt, torch.device("cpu"))
    run = RunDir.create(tmp_path / "r", cfg)
    trainer.step = 1
    run.save_checkpoint(trainer, keep_last=1)
    run.write_json("select.json", {"chosen_step": 1})
    for step in (2, 3, 4, 5):
        trainer.step = step
        run.save_checkpoint(trainer, keep_last=1)
    assert [s for s, _ in run.checkpoints()] == [1, 5]
    assert run.pick_checkpoint(best=True)[0] == 1
