"""bench/error_split.py: the (f right?, reader right?) split on a case with a known answer, and on a tiny run."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch


def test_split_counts_each_case_per_class_and_names_the_commonest_losses(load_bench):
    split = load_bench("error_split").error_split
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    f_pred = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])      # f wrong on one 0 and one 1
    reader = torch.tensor([0, 1, 1, 1, 1, 0, 1, 1])      # two 0s read as 1 although f was right; one 1 as 0
    out = split(labels, f_pred, reader)
    assert out["overall"] == {"both_right": 0.375, "f_right_reader_wrong": 0.375, "f_wrong_reader_right": 0.125,
                              "both_wrong": 0.125, "n": 8, "f_accuracy": 0.75, "transfer_accuracy": 0.5}
    assert out["per_class"]["0"]["f_right_reader_wrong"] == 0.5 and out["per_class"]["1"]["both_right"] == 0.5
    assert out["f_right_reader_wrong_commonest"][0] == {"label": 0, "read_as": 1, "count": 2}
    assert sum(c["count"] for c in out["f_right_reader_wrong_commonest"]) == 3


def test_main_on_a_tiny_run_writes_shares_that_add_up(tmp_path, tiny_run_dir, monkeypatch, load_bench):
    bench = load_bench("error_split")
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    out = tmp_path / "split.json"
    monkeypatch.setattr(sys, "argv", ["error_split.py", str(run), "--out", str(out)])
    bench.main()
    payload = json.loads(out.read_text())
    o = payload["overall"]
    assert o["n"] > 0
    assert sum(o[k] for k in ("both_right", "f_right_reader_wrong", "f_wrong_reader_right", "both_wrong")) == \
        pytest.approx(1.0, abs=1e-3)
    assert o["transfer_accuracy"] == pytest.approx(o["both_right"] + o["f_wrong_reader_right"], abs=1e-3)
