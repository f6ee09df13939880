"""avatars: DiceBear avatars are deterministic, keep their option vectors, re-render exactly, and respect licences."""
from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dicebear")
pytest.importorskip("resvg_py")

from dtn import data  # noqa: E402
from dtn.data import avatars  # noqa: E402
from dtn.errors import DataError  # noqa: E402

SIZE = 32  # rendering cost hardly depends on the size; small arrays keep the comparisons cheap


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 8 and a pool from 16 avatars, so chunk boundaries and the pool show at tiny n.
    Workers get their chunk's size in the job, so patching the parent is enough."""
    monkeypatch.setattr(avatars, "CHUNK", 8)
    monkeypatch.setattr(avatars, "_PARALLEL_MIN", 16)


@pytest.fixture(scope="module")
def twenty():
    return avatars.generate(20, seed=7, size=SIZE, workers=1)


def test_shapes_white_background_and_option_ranges(twenty):
    images, options = twenty
    vocab = avatars.vocabulary(avatars.DEFAULT_STYLES)
    assert images.shape == (20, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert options.shape == (20, len(vocab.categories)) and options.dtype == np.int16
    assert (images[:, 0, 0] == 255).all(), "the corners are the white background"
    for j, cat in enumerate(vocab.categories):
        assert ((options[:, j] >= 0) & (options[:, j] < len(cat.values))).all(), cat.name
    assert len({img.tobytes() for img in images}) == 20
    hair = vocab.index(f"{avatars.DEFAULT_STYLES[0]}.hair")
    assert len(set(options[:, hair])) > 5, "options are drawn, not fixed"


def test_same_seed_same_bytes(twenty):
    again = avatars.generate(20, seed=7, size=SIZE, workers=1)
    assert again[0].tobytes() == twenty[0].tobytes() and again[1].tobytes() == twenty[1].tobytes()


def test_small_n_is_a_prefix_of_large_n(small_chunks):
    images, options = avatars.generate(12, seed=7, size=SIZE, workers=1)   # chunks of 8: a ragged prefix
    more = avatars.generate(20, seed=7, size=SIZE, workers=1)
    np.testing.assert_array_equal(images, more[0][:12])
    np.testing.assert_array_equal(options, more[1][:12])


def test_different_seeds_differ(small_chunks):
    """The seed reaches every chunk."""
    a, _ = avatars.generate(10, seed=1, size=SIZE, workers=1)
    b, _ = avatars.generate(10, seed=2, size=SIZE, workers=1)
    assert (a != b).any(axis=(1, 2, 3)).mean() > 0.8


def test_workers_do_not_change_bytes(small_chunks):
    one = avatars.generate(20, seed=3, size=SIZE, workers=1)
    two = avatars.generate(20, seed=3, size=SIZE, workers=2)                 # 3 chunks on a spawn pool
    assert one[0].tobytes() == two[0].tobytes() and one[1].tobytes() == two[1].tobytes()


def test_rerendering_the_options_gives_the_same_pixels(twenty):
    images, options = twenty
    for i in (0, 13):
        np.testing.assert_array_equal(avatars.render_image(options[i], SIZE), images[i])
    svg = avatars.render_svg(options[0])
    assert svg.startswith("<svg") and "</svg>" in svg
    png = Image.open(io.BytesIO(avatars.render_png(options[0], SIZE))).convert("RGB")
    np.testing.assert_array_equal(np.asarray(png), images[0])


def test_describe_and_encode_are_inverse(twenty):
    _, options = twenty
    named = avatars.describe(options[4])
    assert named["style"] == avatars.DEFAULT_STYLES[0]
    assert named[f"{avatars.DEFAULT_STYLES[0]}.skinColor"].startswith("#")
    np.testing.assert_array_equal(avatars.encode(named), options[4])
    with pytest.raises(DataError, match="hair"):
        avatars.encode({**named, f"{avatars.DEFAULT_STYLES[0]}.hair": "no-such-hair"})
    with pytest.raises(DataError, match="entries"):
        avatars.render_svg(options[4][:-1])


def test_several_styles_mark_other_styles_options_unset():
    styles = ("adventurer", "lorelei")
    images, options = avatars.generate(10, seed=0, size=SIZE, styles=styles, workers=1)
    vocab = avatars.vocabulary(styles)
    style_of = np.array([styles[s] for s in options[:, 0]])
    assert set(style_of) == set(styles)
    for j, cat in enumerate(vocab.categories[1:], start=1):
        assert (options[style_of != cat.style, j] == -1).all()
        assert (options[style_of == cat.style, j] >= 0).all()
    k = int(np.flatnonzero(style_of == "lorelei")[0])
    np.testing.assert_array_equal(avatars.render_image(options[k], SIZE, vocab), images[k])


def test_licence_allow_list_and_attribution(monkeypatch):
    lic = avatars.style_licence("adventurer")
    assert lic.allowed and lic.needs_attribution and lic.licence == "CC BY 4.0"
    assert not avatars.style_licence("lorelei").needs_attribution          # CC0
    text = avatars.attribution(("adventurer",))
    assert "Lisa Wischofsky" in text and "CC BY 4.0" in text
    assert "Lisa Wischofsky" in data.get("avatars").licence                 # the registry (and model cards) carry it
    real = avatars._definition

    def fake(style):
        if style == "proprietary":
            return {"meta": {"license": {"name": "All rights reserved"}}, "components": {}, "colors": {}}
        return real(style)

    monkeypatch.setattr(avatars, "_definition", fake)
    assert not avatars.style_licence("proprietary").allowed
    with pytest.raises(DataError, match="'proprietary' is licensed 'All rights reserved'.*allow-list"):
        avatars.check_licences(("adventurer", "proprietary"))


def test_every_shipped_style_is_checked_programmatically():
    styles = avatars.available_styles()
    assert "adventurer" in styles and len(styles) > 20
    for style in styles:
        lic = avatars.style_licence(style)
        assert lic.licence, style
        assert lic.allowed == (lic.licence.rstrip(".").casefold() in avatars.ALLOWED_LICENCES)


def test_registry_split_caches_images_options_and_vocabulary(monkeypatch, tmp_path):
    monkeypatch.setenv("DTN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DTN_AVATARS_TRAIN_N", "6")
    split = data.load("avatars", "train")
    assert split.images.shape == (6, 96, 96, 3) and (split.labels == -1).all()
    vocab = split.extras["vocabulary"]
    assert split.extras["options"].shape == (6, len(vocab.categories))
    saved = json.loads(open(split.extras["vocabulary_path"]).read())
    assert [c["name"] for c in saved["categories"]] == vocab.names
    np.testing.assert_array_equal(avatars.render_image(split.extras["options"][5], 96), split.images[5])
    names = sorted(p.name for p in (tmp_path / "avatars").iterdir())
    assert any("-v1-adventurer-" in n and "-96px-n6-s0.npy" in n for n in names), names
    monkeypatch.setattr(avatars, "generate", lambda *a, **k: pytest.fail("the cache was not used"))
    again = data.load("avatars", "train")
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(split.images))


def test_bad_size_env_and_missing_package(monkeypatch):
    monkeypatch.setenv("DTN_AVATARS_TEST_N", "ten")
    with pytest.raises(DataError, match="DTN_AVATARS_TEST_N"):
        data.load("avatars", "test")
    monkeypatch.setitem(sys.modules, "resvg_py", None)      # import now fails as if it were not installed
    with pytest.raises(DataError, match=r'resvg-py.*pip install "dtn\[faces\]"'):
        avatars._require()
