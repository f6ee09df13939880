"""synth-digits: the procedural source domain is deterministic, varied, and loads through the registry."""
from __future__ import annotations

import numpy as np
import pytest

from dtn import data
from dtn.data import synth_digits
from dtn.errors import DataError


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return synth_digits.generate(300, seed=7, workers=1)


def test_shape_dtype_and_label_range(small):
    images, labels = small
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (300,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9


def test_other_size():
    images, labels = synth_digits.generate(5, seed=0, size=28)
    assert images.shape == (5, 28, 28, 3) and labels.shape == (5,)


def test_same_seed_same_bytes(small):
    images, labels = synth_digits.generate(300, seed=7, workers=1)
    assert images.tobytes() == small[0].tobytes()
    assert labels.tobytes() == small[1].tobytes()


def test_prefix_is_stable(small):
    """Chunks are seeded by index, so a shorter run is a prefix of a longer one."""
    images, labels = synth_digits.generate(100, seed=7, workers=1)
    np.testing.assert_array_equal(images, small[0][:100])
    np.testing.assert_array_equal(labels, small[1][:100])


def test_workers_do_not_change_bytes():
    n = synth_digits._PARALLEL_MIN + 40  # large enough for the process pool, ragged last chunk
    one = synth_digits.generate(n, seed=3, workers=1)
    two = synth_digits.generate(n, seed=3, workers=2)
    assert one[0].tobytes() == two[0].tobytes()
    assert one[1].tobytes() == two[1].tobytes()


def test_different_seed_different_images(small):
    images, _ = synth_digits.generate(300, seed=8, workers=1)
    assert not np.array_equal(images, small[0])
    # Not just a few pixels: nearly every picture differs.
    same = (images == small[0]).all(axis=(1, 2, 3))
    assert same.mean() < 0.01


def test_labels_roughly_uniform():
    _, labels = synth_digits.generate(3000, seed=11, workers=1)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 0.7 * 300 and counts.max() < 1.3 * 300


def test_images_are_not_constant(small):
    images, _ = small
    std = images.reshape(len(images), -1).std(axis=1)
    assert (std > 3).mean() > 0.97
    assert images.std() > 30
    # Pictures differ from each other, not one template recoloured.
    assert len({img.tobytes() for img in images}) == len(images)


def test_several_fonts_found():
    names = synth_digits.font_names()
    assert len(names) >= 6  # matplotlib's bundled TTFs alone give many more
    assert any(name.startswith("stroke") for name in names)


def test_split_size_env(monkeypatch):
    monkeypatch.delenv("DTN_SYNTH_TEST_N", raising=False)
    assert synth_digits.split_size("test") == 26_032
    monkeypatch.setenv("DTN_SYNTH_TEST_N", "123")
    assert synth_digits.split_size("test") == 123
    for bad in ("nope", "0", "-5"):
        monkeypatch.setenv("DTN_SYNTH_TEST_N", bad)
        with pytest.raises(DataError, match="DTN_SYNTH_TEST_N"):
            synth_digits.split_size("test")


def test_source_loads_through_registry_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DTN_SYNTH_TEST_N", "64")
    source = data.get("synth-digits")
    assert source.generated and source.fetch is None and source.splits == ("train", "test")
    assert not any(check.exists for check in source.check(tmp_path))

    first = data.load("synth-digits", "test")
    assert first.images.shape == (64, 32, 32, 3) and first.labels.dtype == np.int64
    images_path, labels_path = synth_digits.cache_paths("test")
    assert images_path.parent == tmp_path / "synth-digits"
    assert images_path.name == (f"test-v{synth_digits.GENERATOR_VERSION}-f{synth_digits.fonts_digest()}"
                                f"-n64-s1.npy")
    assert images_path.is_file() and labels_path.is_file()
    checks = {c.path: c for c in source.check(tmp_path)}
    assert checks[images_path].ok and checks[labels_path].ok

    # The second load reads the (memory-mapped) cache and gets the same bytes.
    mtime = images_path.stat().st_mtime_ns
    second = data.load("synth-digits", "test")
    assert images_path.stat().st_mtime_ns == mtime
    assert isinstance(second.images, np.memmap) or isinstance(second.images.base, np.memmap)
    assert np.asarray(second.images).tobytes() == np.asarray(first.images).tobytes()
    np.testing.assert_array_equal(second.labels, first.labels)
    # And it is exactly what generate() makes for the test seed.
    images, labels = synth_digits.generate(64, seed=synth_digits.SPLIT_SEEDS["test"])
    assert images.tobytes() == np.asarray(second.images).tobytes()


def test_train_and_test_streams_differ(tmp_path, monkeypatch):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DTN_SYNTH_TRAIN_N", "32")
    monkeypatch.setenv("DTN_SYNTH_TEST_N", "32")
    train = data.load("synth-digits", "train")
    test = data.load("synth-digits", "test")
    train_set = {img.tobytes() for img in np.asarray(train.images)}
    assert not any(img.tobytes() in train_set for img in np.asarray(test.images))
