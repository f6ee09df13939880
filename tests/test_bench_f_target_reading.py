"""bench/f_target_reading.py: f's precision per class on the target, and among its confident readings."""
from __future__ import annotations

import torch


def test_precision_recall_and_confident_precision_on_a_known_case(load_bench):
    report = load_bench("f_target_reading").reading_report
    labels = torch.tensor([0, 0, 1, 1])
    # f reads: 0 (sure), 1 (unsure, wrong), 1 (sure), 1 (sure)
    probs = torch.tensor([[0.995, 0.005], [0.4, 0.6], [0.001, 0.999], [0.005, 0.995]])
    out = report(labels, probs)
    assert out["accuracy"] == 0.75
    assert out["per_class"]["1"] == {"precision": 0.6667, "recall": 1.0, "read_as_this_by_true_class": [1, 2]}
    assert out["per_class"]["0"]["recall"] == 0.5
    assert out["confidence_thresholds"]["0.99"] == {"kept": 0.75, "precision": 1.0}
    assert out["confidence_thresholds"]["0.5"] == {"kept": 1.0, "precision": 0.75}
