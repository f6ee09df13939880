"""Ablation rows map to valid configs, and the table shows ours beside the paper's figures."""
from __future__ import annotations

import json

import pytest

from dtn.ablation import ABLATIONS, PAPER_ROWS, ablation_config, ablation_table
from dtn.config import digits
from dtn.errors import ConfigError


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_row_builds_a_valid_config(name):
    cfg = ablation_config(digits(), name)
    assert cfg.name == f"digits-{name}"
    for key, value in ABLATIONS[name].overrides.items():
        section, sub = key.split(".")
        assert str(getattr(getattr(cfg, section), sub)).lower() == value.lower() or \
            float(getattr(getattr(cfg, section), sub)) == float(value)


def test_paper_rows_carry_the_paper_figures():
    assert [ABLATIONS[r].paper for r in PAPER_ROWS] == [90.66, 88.40, 74.55, 36.90, 34.70, 5.28]


def test_unknown_row_is_an_error_listing_valid_rows():
    with pytest.raises(ConfigError, match="no-tid"):
        ablation_config(digits(), "no-such-row")


def test_table_formats_ours_and_paper():
    table = ablation_table({"full": {"transfer_accuracy": 0.9123, "fld": 1.5, "f_consistency": 0.95},
                            "ce": {"transfer_accuracy": 0.5, "fld": 2.0, "f_consistency": 0.9}}, "dtn ablate x")
    assert "dtn ablate x" in table
    assert "| full | 91.23 % | 90.66 % |" in table
    assert "uses source labels" in table


def test_table_is_rewritten_after_every_row_and_names_the_rows_left(tmp_path, monkeypatch):
    """An ablation stopped after its first row still leaves that row's result and the rows it did not run."""
    import json

    import dtn.run
    from dtn.ablation import run_ablations

    calls = []

    def fake_run(cfg, runs_dir, name, resume=False):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"transfer_accuracy": 0.5, "fld": 1.0, "f_consistency": 0.9}

    monkeypatch.setattr(dtn.run, "run_dtn", fake_run)
    out = tmp_path / "res" / "ablation"
    with pytest.raises(KeyboardInterrupt):
        run_ablations(digits(), ["full", "no-tid", "no-gan"], tmp_path / "runs", out, "dtn ablate digits")
    payload = json.loads(out.with_suffix(".json").read_text())
    assert list(payload["rows"]) == ["full"] and payload["pending"] == ["no-tid", "no-gan"]
    table = out.with_suffix(".md").read_text()
    assert "| full | 50.00 %" in table and "Not yet run: no-tid, no-gan" in table


def test_ablate_help_lists_every_row():
    from dtn.ablation import ablation_rows_help

    text = ablation_rows_help()
    assert all(name in text for name in ABLATIONS) and "uses source labels" in text


def test_a_row_trained_with_another_config_is_not_resumed(tmp_path, monkeypatch):
    """After the preset changes, `dtn ablate` with the old --runs-dir must not finish (or re-evaluate) the
    old model under the new name: it stops and names what differs. Where it runs may change."""
    import dtn.run
    from dtn.ablation import run_ablations
    from dtn.config import apply_overrides
    from dtn.errors import RunError
    from dtn.rundir import RunDir

    calls = []
    monkeypatch.setattr(dtn.run, "run_dtn", lambda cfg, runs_dir, name, resume=False: calls.append((name, resume))
                        or {"transfer_accuracy": 0.5, "fld": 1.0, "f_consistency": 0.9})
    old = apply_overrides(ablation_config(digits(), "full"), {"loss.class_layout": "0", "train.threads": "1"})
    RunDir.create(tmp_path / "runs" / "digits-full", old)
    with pytest.raises(RunError, match=r"loss.class_layout 0.0 there, 30.0 now"):
        run_ablations(digits(), ["full"], tmp_path / "runs", None, "dtn ablate digits")
    assert calls == []
    RunDir.create(tmp_path / "again" / "digits-full", apply_overrides(ablation_config(digits(), "full"),
                                                                      {"train.threads": "1"}))
    run_ablations(apply_overrides(digits(), {"train.threads": "2"}), ["full"], tmp_path / "again", None, "x")
    assert calls == [("digits-full", True)]


def test_a_finished_row_is_reused_not_evaluated_again(tmp_path, monkeypatch):
    """Resuming an ablation trains only the rows left: a row whose run is done at the row's step count
    keeps its results.json; an unfinished one, or one finished at another step count, runs again."""
    import dtn.run
    from dtn.ablation import run_ablations
    from dtn.rundir import RunDir

    calls = []
    monkeypatch.setattr(dtn.run, "run_dtn", lambda cfg, runs_dir, name, resume=False: calls.append((name, resume))
                        or {"transfer_accuracy": 0.5, "fld": 1.0, "f_consistency": 0.9})
    runs = tmp_path / "runs"
    done = digits().train.steps
    for row, status, steps in (("full", "done", done), ("no-tid", "training", done), ("no-gan", "done", 400)):
        run = RunDir.create(runs / f"digits-{row}", ablation_config(digits(), row))
        run.write_json("results.json", {"transfer_accuracy": 0.9, "fld": 2.0, "f_consistency": 0.8, "steps": steps})
        run.set_status(status)
    results = run_ablations(digits(), ["full", "no-tid", "no-gan"], runs, None, "x")
    assert calls == [("digits-no-tid", True), ("digits-no-gan", True)]
    assert results["full"]["transfer_accuracy"] == 0.9 and results["no-tid"]["transfer_accuracy"] == 0.5


def test_a_row_resumes_only_with_its_own_config(tmp_path):
    """check_same_config: a changed setting refuses the resume, naming it; settings that only say how
    or where it runs, and "auto" precision (the run recorded what it resolved to), do not."""
    from dtn.ablation import check_same_config
    from dtn.config import apply_overrides, tiny
    from dtn.errors import RunError
    from dtn.rundir import RunDir
    stored = apply_overrides(tiny(), {"train.precision": "fp32"})
    RunDir.create(tmp_path / "row", stored)
    check_same_config(tmp_path / "row", apply_overrides(stored, {"train.precision": "auto", "train.threads": "2"}))
    with pytest.raises(RunError, match=r"loss.alpha 15.0 there, 3.0 now"):
        check_same_config(tmp_path / "row", apply_overrides(stored, {"loss.alpha": "3"}))
    with pytest.raises(RunError, match=r"train.precision 'fp32' there, 'bf16' now"):
        check_same_config(tmp_path / "row", apply_overrides(stored, {"train.precision": "bf16"}))


def test_the_table_names_the_whole_command_that_made_it(tmp_path, monkeypatch):
    """Run as `python -m dtn ablate ...` the table used to say only "dtn ablate"."""
    import dtn.run
    from dtn.cli import main

    monkeypatch.setattr(dtn.run, "run_dtn", lambda cfg, runs_dir, name, resume=False:
                        {"transfer_accuracy": 0.5, "fld": 1.0, "f_consistency": 0.9})
    out = tmp_path / "table"
    argv = ["ablate", "tiny", "--rows", "no-gan", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
            "--set", "train.steps=3"]
    assert main(argv) == 0
    expected = "dtn ablate tiny --rows no-gan --runs-dir " + str(tmp_path / "runs") + f" --out {out} --set train.steps=3"
    assert f"Produced by `{expected}`" in out.with_suffix(".md").read_text()
    assert json.loads(out.with_suffix(".json").read_text())["command"] == expected


def test_collect_gathers_finished_rows_and_trains_nothing(tmp_path, monkeypatch):
    """--collect: rows run as separate jobs (side by side on a GPU) become one table here; a row not
    finished is named as not yet run, never trained; with no finished row at all it is an error."""
    import dtn.run
    from dtn.cli import main
    from dtn.config import tiny
    from dtn.rundir import RunDir

    monkeypatch.setattr(dtn.run, "run_dtn", lambda *a, **k: pytest.fail("--collect trained a row"))
    runs, out = tmp_path / "runs", tmp_path / "table"
    for row, status in (("full", "done"), ("no-tid", "training")):
        run = RunDir.create(runs / f"tiny-{row}", ablation_config(tiny(), row))
        run.write_json("results.json", {"transfer_accuracy": 0.93, "fld": 2.0, "f_consistency": 0.8,
                                        "steps": tiny().train.steps, "trained_on": "cuda: NVIDIA H200, bf16"})
        run.set_status(status)
    argv = ["ablate", "tiny", "--rows", "full,no-tid,no-gan", "--runs-dir", str(runs), "--out", str(out), "--collect"]
    assert main(argv) == 0
    table = out.with_suffix(".md").read_text()
    assert "| full | 93.00 % |" in table and "Not yet run: no-tid, no-gan" in table
    assert "Trained on: cuda: NVIDIA H200, bf16." in table, "a table gathered from elsewhere says where its rows ran"
    assert json.loads(out.with_suffix(".json").read_text())["pending"] == ["no-tid", "no-gan"]
    assert main(["ablate", "tiny", "--rows", "no-gan", "--runs-dir", str(runs), "--collect"]) == 2
