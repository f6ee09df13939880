"""precision.py: train.precision auto picks bf16 only where the device computes it natively, and a run
records what it used."""
from __future__ import annotations

import pytest
import torch

from dtn.config import apply_overrides, tiny
from dtn.precision import resolve_precision
from dtn.rundir import RunDir
from dtn.run import run_dtn


def _cpu_bf16(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                       (False, True, "bf16"), (True, True, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch, avx512_bf16, amx, expected):
    _cpu_bf16(monkeypatch, avx512_bf16, amx)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32", "asked: kept"


def test_a_run_records_the_precision_auto_chose(digit_folders, tmp_path, monkeypatch, capsys):
    _cpu_bf16(monkeypatch, False, False)                     # an AVX2-only CPU
    src, tgt = digit_folders
    cfg = apply_overrides(tiny(), {"data.source": f"folder:{src}", "data.target": f"folder:{tgt}",
                                   "train.precision": "auto", "train.device": "cpu"})
    run_dtn(cfg, tmp_path, "auto", until="train")
    assert RunDir(tmp_path / "auto").config().train.precision == "fp32"
    assert "precision: fp32 (cpu has no native bf16" in capsys.readouterr().out
    _cpu_bf16(monkeypatch, False, True)                      # an AMX CPU
    run_dtn(apply_overrides(cfg, {"train.steps": "2"}), tmp_path, "amx", until="train")
    assert RunDir(tmp_path / "amx").config().train.precision == "bf16"


@pytest.mark.parametrize("precision,native,expected", [("bf16", True, True), ("bf16", False, False),
                                                        ("auto", True, True), ("fp32", True, False)])
def test_transfer_uses_bf16_only_where_the_run_did_and_the_device_computes_it(monkeypatch, precision, native,
                                                                              expected):
    from dtn.apply import DTN
    from dtn.nets import Encoder, Generator
    _cpu_bf16(monkeypatch, False, native)
    cfg = apply_overrides(tiny(), {"train.precision": precision})
    model = DTN(cfg, Encoder(cfg.nets), Generator(cfg.nets))
    assert model.bf16 is expected
    out = model.transfer_tensor(torch.rand(2, cfg.nets.source_channels, 32, 32) * 2 - 1)
    assert out.dtype == torch.float32 and out.shape == (2, cfg.nets.target_channels, 32, 32)


@pytest.mark.parametrize("native,expected", [(False, "fp32"), (True, "bf16")])
def test_evaluate_runs_a_bf16_run_in_fp32_where_bf16_is_emulated(tiny_run_dir, tmp_path, monkeypatch, native,
                                                                 expected):
    import shutil

    import dtn.train
    from dtn.apply import evaluate_run
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    toml = run / "config.toml"
    assert 'precision = "fp32"' in toml.read_text()
    toml.write_text(toml.read_text().replace('precision = "fp32"', 'precision = "bf16"'))
    _cpu_bf16(monkeypatch, False, native)
    used = []

    class SpyTrainer(dtn.train.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used.append(self.precision)

    monkeypatch.setattr(dtn.train, "Trainer", SpyTrainer)
    result = evaluate_run(run, names=("transfer_accuracy",))
    assert result["precision"] == expected and used == [expected]
    assert 0 <= result["transfer_accuracy"] <= 1


@pytest.mark.parametrize("precision,native,warned", [("bf16", False, True), ("bf16", True, False),
                                                     ("fp32", False, False)])
def test_training_in_emulated_bf16_is_warned_about(monkeypatch, capsys, precision, native, warned):
    from dtn.run import with_precision_for
    _cpu_bf16(monkeypatch, False, native)
    cfg = with_precision_for(apply_overrides(tiny(), {"train.precision": precision}), torch.device("cpu"))
    assert cfg.train.precision == precision, "a resume keeps the recorded precision"
    out = capsys.readouterr().out
    assert ("warning: training in bf16 on a cpu without native bf16" in out) is warned
    if warned:
        assert "--set train.precision=fp32" in out
