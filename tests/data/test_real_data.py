"""Smoke tests on the real offline data sets ($DTN_DATA_DIR or ../shared/datasets); skipped when absent.

Full decodes of the photo sets take several seconds, so they are marked slow; the identity split and
the clothing table are checked on the CSVs alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtn.data import celeba, clothing, idx


def need(root: Path, name: str) -> Path:
    if not (root / name).is_dir():
        pytest.skip(f"{root / name} is absent")
    return root


@pytest.mark.parametrize("source", [idx.MNIST, idx.FASHION_MNIST], ids=lambda s: s.name)
def test_idx_datasets(real_data_dir, source):
    root = need(real_data_dir, source.name)
    assert all(check.ok for check in source.check(root)), [c.describe() for c in source.check(root)]
    for split, n in (("train", 60000), ("test", 10000)):
        data = source.load(split, root)
        assert data.images.shape == (n, 28, 28, 1) and data.images.dtype == np.uint8
        assert data.labels.dtype == np.int64 and data.labels.min() == 0 and data.labels.max() == 9
        assert set(np.unique(data.labels)) == set(range(10))
        assert len(data.class_names) == 10


def test_celeba_identity_split(real_data_dir):
    root = need(real_data_dir, "celeba-sample")
    index = celeba.read_index(root)
    assert len(index.files) == 20000 and len(index.class_names) == 4000
    train_ids = {index.class_names[i] for i in index.labels[:index.n_train]}
    test_ids = {index.class_names[i] for i in index.labels[index.n_train:]}
    assert train_ids.isdisjoint(test_ids)
    assert len(test_ids) >= 1000 and test_ids == set(index.test_identities)
    assert train_ids | test_ids == set(index.class_names)
    assert celeba.read_index(root).test_identities == index.test_identities, "deterministic"


@pytest.mark.slow
def test_celeba_load(real_data_dir):
    root = need(real_data_dir, "celeba-sample")
    test = celeba.SOURCE.load("test", root)
    assert test.images.shape == (5000, 96, 96, 3) and test.images.dtype == np.uint8
    train = celeba.SOURCE.load("train", root)
    assert len(train) == 15000
    assert set(train.labels.tolist()).isdisjoint(test.labels.tolist())


def test_clothing_table(real_data_dir):
    root = need(real_data_dir, "clothing")
    index = clothing.read_index(root)
    assert len(index.paths) == 4393
    assert set(np.unique(index.labels)) == {0, 1, 2, 3, 4, 6, 7}
    assert np.bincount(index.labels, minlength=10)[0] == 1292
    assert index.kids.sum() == 331
    assert 0.12 < index.test.mean() < 0.18
    assert all((root / "clothing" / p).is_file() for p in index.paths[::97])


@pytest.mark.slow
def test_clothing_load(real_data_dir):
    root = need(real_data_dir, "clothing")
    everything = clothing.SOURCE.load("all", root)
    assert everything.images.shape == (4393, 64, 64, 3) and everything.images.dtype == np.uint8
    train, test = clothing.SOURCE.load("train", root), clothing.SOURCE.load("test", root)
    assert len(train) + len(test) == 4393
    assert set(train.extras["paths"]).isdisjoint(test.extras["paths"])
