"""bench/tid_probe.py on a finished tiny run: each variant trains fresh g and D through the run's f,
records its loss curve with L_CONST off, and the variant's overrides reach the Trainer."""
from __future__ import annotations

import json


def test_each_variant_records_its_own_loss_terms(tmp_path, tiny_run_dir, load_bench):
    bench = load_bench("tid_probe")
    out = tmp_path / "probe.json"
    result = bench.main([str(tiny_run_dir), "--steps", "3", "--threads", "1", "--out", str(out),
                         "--variant", "loss.gamma=0,train.warmup_steps=10", "--variant", "loss.gamma=0.05"])
    assert json.loads(out.read_text()) == result
    plain, with_tv = result["variants"]
    assert plain["overrides"] == {"loss.gamma": "0", "train.warmup_steps": "10"}
    assert [row["step"] for row in plain["curve"]] == [3]
    assert "tv" not in plain["curve"][0] and "gang" not in plain["curve"][0], "no L_TV, still in the warm-up"
    assert with_tv["curve"][0]["tv"] > 0 and "tid" in with_tv["curve"][0]
    for v in result["variants"]:
        assert (tmp_path / v["image"]).stat().st_size > 0
