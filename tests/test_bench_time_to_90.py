"""bench/time_to_90.py on a finished tiny run: the clock at the first evaluation at the goal, and what a
fresh machine would add when the run loaded its f from the cache."""
from __future__ import annotations

import json
import shutil

from dtn.rundir import RunDir


def test_time_to_goal_counts_setup_and_adds_a_cached_f(tmp_path, tiny_run_dir, load_bench):
    bench = load_bench("time_to_90")
    run_path = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_path)
    run = RunDir.open(run_path)
    evals = [r for r in run.read_metrics() if r.get("transfer_accuracy") not in ("", None)]
    goal = min(float(r["transfer_accuracy"]) for r in evals)          # the first evaluation reaches it
    results = run.read_json("results.json")
    setup = results["total_seconds"] - results["train_seconds"]

    fresh = bench.time_to_goal(run, goal)
    assert fresh["step_at_goal"] == int(evals[0]["step"])
    assert abs(fresh["seconds_to_goal"] - (setup + float(evals[0]["seconds"]))) < 0.11
    assert fresh["f_loaded_from_cache"] is None and fresh["seconds_to_goal_with_f_trained"] == fresh["seconds_to_goal"]

    (run_path / "f.json").write_text(json.dumps({"seconds": 500.0, "loaded_from_cache": "f-x.safetensors"}))
    cached = bench.time_to_goal(RunDir.open(run_path), goal)
    assert cached["f_loaded_from_cache"] == "f-x.safetensors"
    assert abs(cached["seconds_to_goal_with_f_trained"] - (cached["seconds_to_goal"] + 500.0)) < 0.11
    assert cached["goal_met_with_f_trained"] is (cached["seconds_to_goal"] + 500.0 <= bench.GOAL_SECONDS)

    never = bench.time_to_goal(RunDir.open(run_path), 1.01)
    assert never["seconds_to_goal"] is None and never["shortfall_points"] > 0 and not never["goal_met"]
