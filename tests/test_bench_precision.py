"""bench/precision.py: times both precisions on one Trainer and records what auto picks on this machine."""
from __future__ import annotations

import json

import torch

from dtn.config import digits
from dtn.precision import resolve_precision


def test_both_precisions_are_timed_and_auto_is_recorded(load_bench, tmp_path):
    bench = load_bench("precision")
    out = tmp_path / "p.json"
    result = bench.main(["--preset", "tiny", "--steps", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["auto_picks"] == resolve_precision("auto", torch.device("cpu")) == result["auto_picks"]
    assert all(len(v) == 1 and v[0] > 0 for v in saved["seconds_per_step"].values())
    assert saved["faster"] == min(saved["median_seconds_per_step"], key=saved["median_seconds_per_step"].get)
    assert saved["machine"]["cpu_capability"] and "auto_picks_the_faster" in saved


def test_the_speed_benchmarks_build_the_digits_trainer_with_its_readers(load_bench):
    reader = load_bench("train_step").random_reader(digits())
    assert reader is not None and not any(p.requires_grad for p in reader.parameters())
