"""Class subsets (data.classes / --classes) and class-balanced source sampling (data.balanced)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dtn.data.base import Split
from dtn.data.classes import parse_classes, select_classes
from dtn.data.idx import FASHION_MNIST
from dtn.domain import Domain, load_domain
from dtn.errors import DataError


def fashion_split(labels: list[int]) -> Split:
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2)
    return Split(images, np.array(labels, np.int64), "fake", "train", FASHION_MNIST.class_names,
                 {"paths": [f"p{i}" for i in range(len(labels))], "tag": "kept"})


def test_subset_relabels_in_the_order_asked():
    s = select_classes(fashion_split([0, 1, 2, 1, 9, 2]), parse_classes("Pullover, trouser"))
    assert list(s.labels) == [1, 0, 1, 0] and s.class_names == ("Pullover", "Trouser")
    assert list(s.images[:, 0, 0, 0]) == [1, 2, 3, 5]
    assert s.extras["paths"] == ["p1", "p2", "p3", "p5"] and s.extras["tag"] == "kept"


def test_names_match_parts_case_and_indices():
    s = select_classes(fashion_split([0, 9, 5]), ("t-shirt", "9"))
    assert list(s.labels) == [0, 1] and s.class_names == ("T-shirt/top", "Ankle boot")
    assert parse_classes("") == ()
    with pytest.raises(DataError, match="'hat' is not a class; classes: T-shirt/top, Trouser"):
        select_classes(fashion_split([0]), ("hat",))
    with pytest.raises(DataError, match="listed twice"):
        parse_classes("trouser,Trouser")
    with pytest.raises(DataError, match="no images of the classes"):
        select_classes(fashion_split([0, 1]), ("bag",))


def _folder(root: Path, classes: list[str]) -> Path:
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (20 * k, 0, 0)).save(root / split / name / f"{i}.png")
    return root


def test_source_and_target_share_the_subset_labels(tmp_path):
    """Folder class indices differ (sorted names of each folder), the subset makes them agree."""
    src = _folder(tmp_path / "src", ["Dress", "Pullover", "Trouser"])
    tgt = _folder(tmp_path / "tgt", ["Bag", "Coat", "Pullover", "Trouser"])
    k = parse_classes("trouser,pullover")
    s = load_domain(f"folder:{src}", "train", 8, 3, classes=k)
    t = load_domain(f"folder:{tgt}", "train", 8, 1, classes=k)
    assert len(s) == len(t) == 6
    assert sorted(s.labels.tolist()) == sorted(t.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    red = s.images[:, 0, 0, 0]                                  # Pullover is red 20, Trouser red 40
    assert set(red[s.labels == 0].tolist()) == {40} and set(red[s.labels == 1].tolist()) == {20}


def _domain(labels: list[int], balanced: bool = False) -> Domain:
    n = len(labels)
    return Domain(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.tensor(labels), "d", "train", balanced)


def test_balanced_sampling_draws_classes_equally():
    labels = [0] * 180 + [1] * 20 + [-1] * 50
    counts = {}
    for balanced in (False, True):
        _, y = _domain(labels, balanced).sample(6000, torch.Generator().manual_seed(0))
        counts[balanced] = torch.bincount(y + 1, minlength=3).tolist()   # -1, 0, 1
    assert counts[True][0] == 0, "unlabelled images are never drawn when balancing"
    assert abs(counts[True][1] - 3000) < 200 and abs(counts[True][2] - 3000) < 200
    assert counts[False][2] < 700                                      # ~8 % without balancing


def test_balanced_covers_every_image_of_a_class():
    d = _domain([0] * 5 + [1] * 3, balanced=True)
    d.images[:, 0, 0, 0] = torch.arange(8, dtype=torch.uint8)
    x, _ = d.sample(2000, torch.Generator().manual_seed(1))
    seen = ((x[:, 0, 0, 0] + 1) * 127.5).round().long().unique().tolist()
    assert seen == list(range(8))


def test_unbalanced_sampling_is_unchanged_and_flags_travel():
    d = _domain(list(range(10)) * 3)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _, y = d.sample(64, g1)
    assert torch.equal(y, d.labels[torch.randint(len(d), (64,), generator=g2)])
    b = d.with_balance(True)
    assert b.balanced and not d.balanced and b.to(torch.device("cpu")).balanced and b.subset(5).balanced
    with pytest.raises(DataError, match="balanced sampling needs class labels"):
        _domain([-1, -1], balanced=True).sample(4, torch.Generator())
