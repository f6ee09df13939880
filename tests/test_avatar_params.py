"""Editable avatars: the parameter estimator learns option vectors, estimates render back to real
avatars (SVG, PNG, named options), it is cached once per machine, and `dtn transfer --avatar-svg`."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn import avatar_params as ap
from dtn.data.avatars import Category, Vocabulary
from dtn.errors import RunError

TINY = ap.EstimatorConfig(width=8, steps=30, batch=16)


# ----------------------------------------------------------------------------- a constructed case
def _two_categories() -> Vocabulary:
    """One style, two categories: the colour of the picture and where a dark bar is (or none)."""
    return Vocabulary(("s",), (Category("style", "", "style", "style", ("s",)),
                               Category("s.fillColor", "s", "color", "fill", ("#c83232", "#32c832", "#3232c8")),
                               Category("s.bar", "s", "component", "bar", ("none", "top", "bottom"))))


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16 px pictures drawn from option vectors of _two_categories()."""
    rng = np.random.default_rng(seed)
    fills = np.array([[200, 50, 50], [50, 200, 50], [50, 50, 200]], np.uint8)
    options = np.stack([np.zeros(n, int), rng.integers(0, 3, n), rng.integers(0, 3, n)], 1).astype(np.int16)
    images = np.empty((n, 16, 16, 3), np.uint8)
    for img, (_, fill, bar) in zip(images, options):
        img[:] = fills[fill]
        if bar:
            img[(2, 10)[bar - 1]:(6, 14)[bar - 1]] = 10
    return images, options


def test_the_estimator_learns_a_constructed_case_well_above_chance():
    vocab = _two_categories()
    images, options = _bars(256, seed=0)
    estimator = ap.train_estimator(images, options, vocab, 16, ap.EstimatorConfig(width=8, steps=60, batch=32))
    test_images, test_options = _bars(90, seed=1)
    scores = ap.score_estimator(estimator, test_images, test_options)
    assert scores["per_category"]["s.fillColor"] > 0.9 and scores["per_category"]["s.bar"] > 0.8, scores
    assert scores["exact_match"] > 0.7 and scores["majority_baseline"]["s.bar"] < 0.5
    assert ap.estimate_options(estimator, test_images).dtype == np.int16


def test_an_estimate_fills_only_the_categories_of_the_style_it_predicts():
    vocab = Vocabulary(("a", "b"), (Category("style", "", "style", "style", ("a", "b")),
                                    Category("a.x", "a", "component", "x", ("none", "x1")),
                                    Category("b.y", "b", "color", "y", ("#000000", "#ffffff", "#ff0000"))))
    estimator = ap.ParamEstimator(vocab, 16, 8).eval()
    images = np.random.default_rng(0).integers(0, 256, (40, 20, 20, 3), dtype=np.uint8)   # resized to 16
    est = ap.estimate_options(estimator, images)
    assert est.shape == (40, 3)
    assert ((est[:, 0] == 0) == (est[:, 1] >= 0)).all() and ((est[:, 0] == 1) == (est[:, 2] >= 0)).all()


def test_options_of_the_wrong_shape_are_refused():
    from dtn.errors import DataError

    images, options = _bars(8, seed=0)
    with pytest.raises(DataError, match=r"\(8, 3\)"):
        ap.train_estimator(images, options[:, :2], _two_categories(), 16, TINY)


# ----------------------------------------------------------------------------- real avatars
@pytest.fixture(scope="module")
def avatars_module():
    pytest.importorskip("dicebear")
    pytest.importorskip("resvg_py")
    from dtn.data import avatars

    return avatars


def test_rendering_estimates_gives_real_avatars(avatars_module, tmp_path: Path):
    avatars = avatars_module
    images, options = avatars.generate(6, seed=3, size=32, workers=1)
    vocab = avatars.vocabulary(avatars.DEFAULT_STYLES)
    svgs, pixels = ap.render_options(options, 32, vocab)
    np.testing.assert_array_equal(pixels, images)            # true options -> the very same avatars
    assert all(svg.startswith("<svg") and svg.rstrip().endswith("</svg>") for svg in svgs)

    estimator = ap.ParamEstimator(vocab, 32, 8).eval()        # untrained: any estimate must still render
    estimated = ap.estimate_options(estimator, images)
    ap.write_avatar_files(tmp_path / "out", ["a", "sub/b"], estimated[:2], vocab, 40)
    for stem, row in zip(["a", "sub/b"], estimated):
        base = tmp_path / "out" / stem
        assert base.with_name(base.name + ".svg").read_text().startswith("<svg")
        with Image.open(base.with_name(base.name + ".png")) as png:
            assert png.format == "PNG" and png.size == (40, 40)
            assert np.asarray(png.convert("RGB"))[0, 0].tolist() == [255, 255, 255]
        named = json.loads(base.with_name(base.name + ".json").read_text())
        np.testing.assert_array_equal(avatars.encode(named, vocab), row)
        png_bytes = avatars.svg_to_png(base.with_name(base.name + ".svg").read_text(), 40)
        assert np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB")).shape == (40, 40, 3)


def test_parallel_rendering_keeps_the_order(avatars_module, monkeypatch):
    avatars = avatars_module
    _, options = avatars.generate(6, seed=4, size=16, workers=1)
    vocab = avatars.vocabulary(avatars.DEFAULT_STYLES)
    one = ap.render_options(options, 16, vocab, workers=1)
    monkeypatch.setattr(ap, "RENDER_CHUNK", 2)
    monkeypatch.setattr(ap, "_PARALLEL_MIN", 4)
    two = ap.render_options(options, 16, vocab, workers=2)                 # 3 chunks on a spawn pool
    assert one[0] == two[0] and np.array_equal(one[1], two[1])


@pytest.fixture
def tiny_avatars(monkeypatch, avatars_module):
    """Avatar splits of 64 / 32 and a seconds-long estimator, for anything that trains the default one."""
    monkeypatch.setenv("DTN_AVATARS_TRAIN_N", "64")
    monkeypatch.setenv("DTN_AVATARS_TEST_N", "32")
    monkeypatch.setattr(ap, "DEFAULT_ESTIMATOR", TINY)


def test_the_estimator_trains_once_then_comes_from_the_cache(tiny_avatars):
    said: list[str] = []
    first, scores = ap.get_estimator(16, say=said.append)
    assert any("training the avatar parameter estimator" in line for line in said)
    assert scores["n"] == 32 and set(scores["per_category"]) >= {"adventurer.hair", "adventurer.skinColor"}
    path = ap.estimator_path(16, ("adventurer",))
    assert path.is_file()
    said.clear()
    again, cached_scores = ap.get_estimator(16, say=said.append)
    assert not said and cached_scores == scores
    assert all((a == b).all() for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(RunError, match=str(path.name)):
        ap.load_estimator(path, _two_categories(), 16, TINY)                  # other categories: refused


# ----------------------------------------------------------------------------- dtn transfer --avatar-svg
@pytest.fixture(scope="module")
def avatar_run(tmp_path_factory, digit_folders, session_cache_dir, avatars_module) -> Path:
    """A tiny run whose target is the avatars domain (64 / 32 avatars), as `dtn run faces` makes."""
    from dtn.cli import main

    tmp = tmp_path_factory.mktemp("avatar-run")
    src, _ = digit_folders
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTN_CACHE_DIR", str(session_cache_dir))
        mp.setenv("DTN_AVATARS_TRAIN_N", "64")
        mp.setenv("DTN_AVATARS_TEST_N", "32")
        mp.delenv("DTN_DATA_DIR", raising=False)
        assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp), "--name", "a", "--steps", "2",
                     "--source", f"folder:{src}", "--target", "avatars"]) == 0
    return tmp / "a"


def _photos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, shape in (("p.jpg", (40, 30, 3)), ("x/q.png", (24, 24, 3))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
    return root


def test_transfer_writes_an_editable_avatar_per_input(avatar_run, tiny_avatars, tmp_path: Path, capsys):
    from dtn.cli import main

    photos = _photos(tmp_path / "in")
    assert main(["--quiet", "transfer", "--run", str(avatar_run), "--input", str(photos), "--output",
                 str(tmp_path / "out"), "--avatar-svg", str(tmp_path / "av"), "--avatar-size", "48"]) == 0
    written = sorted(p.relative_to(tmp_path / "av").as_posix() for p in (tmp_path / "av").rglob("*") if p.is_file())
    assert written == ["p.json", "p.png", "p.svg", "x/q.json", "x/q.png", "x/q.svg"]
    assert (tmp_path / "out" / "x" / "q.png").is_file()
    assert Image.open(tmp_path / "av" / "p.png").size == (48, 48)
    assert json.loads((tmp_path / "av" / "x" / "q.json").read_text())["style"] == "adventurer"
    assert "2 editable avatars" in capsys.readouterr().out


def test_rendered_avatars_are_images_at_the_run_size(avatar_run, tiny_avatars):
    from dtn import DTN

    model = DTN.load(avatar_run, device="cpu")
    faces = np.random.default_rng(1).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    out = ap.rendered_avatars(model, faces)
    size = model.cfg.nets.image_size
    assert out.shape == (3, size, size, 3) and out.dtype == np.uint8
    assert (out[:, 0, 0] > 240).all(), "white background in the corners"


def test_a_run_whose_target_is_not_avatars_is_a_clear_error(tiny_run_dir: Path, tmp_path: Path, capsys):
    from dtn.cli import main

    photos = _photos(tmp_path / "in")
    assert main(["transfer", "--run", str(tiny_run_dir), "--input", str(photos), "--output", str(tmp_path / "out"),
                 "--avatar-svg", str(tmp_path / "av")]) == 2
    err = capsys.readouterr().err
    assert "not 'avatars'" in err and "dtn run faces" in err and err.count("\n") == 1
    assert not (tmp_path / "av").exists() and not (tmp_path / "out").exists()


def test_the_avatar_folder_may_not_be_the_input_folder(tiny_run_dir: Path, tmp_path: Path, capsys):
    from dtn.cli import main

    photos = _photos(tmp_path / "in")
    assert main(["transfer", "--run", str(tiny_run_dir), "--input", str(photos), "--output", str(tmp_path / "out"),
                 "--avatar-svg", str(photos)]) == 2
    assert "is the input folder" in capsys.readouterr().err


def test_help_explains_avatar_svg(capsys):
    from dtn.cli import main

    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--avatar-svg DIR" in text and "editable" in text and "target is avatars" in text
