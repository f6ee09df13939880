"""`dtn export` bundles: what they hold, that they transfer exactly like the run, and that altered ones are refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from dtn import DTN
from dtn.bundle import BundleError, export_bundle
from dtn.cli import main
from dtn.errors import RunError


@pytest.fixture(scope="module")
def bundle(tiny_run_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert main(["export", str(tiny_run_dir), "--out", str(out)]) == 0
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    shutil.copytree(bundle, tmp_path / "b")
    return tmp_path / "b"


def test_a_bundle_holds_f_g_config_card_and_checksums(bundle: Path):
    assert sorted(p.name for p in bundle.iterdir()) == ["config.toml", "manifest.json", "model_card.md",
                                                        "weights.safetensors"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "dtn-model-bundle" and manifest["format_version"] == 1 and manifest["step"] == 4
    assert set(manifest["files"]) == {"weights.safetensors", "config.toml", "model_card.md"}
    assert all(len(meta["sha256"]) == 64 for meta in manifest["files"].values())
    with safe_open(str(bundle / "weights.safetensors"), "pt") as fh:
        assert {k.split(".")[0] for k in fh.keys()} == {"f", "g"}, "no D, no optimizer state"
    card = (bundle / "model_card.md").read_text()
    for needle in ("## Data", "licence", "transfer accuracy", "dtn run", "dtn evaluate", "## Intended use and limits"):
        assert needle in card, needle


def test_a_bundle_transfers_exactly_like_its_run(tiny_run_dir: Path, bundle: Path, tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 36, 3), dtype=np.uint8)
    assert np.array_equal(DTN.load(bundle).transfer(images), DTN.load(tiny_run_dir).transfer(images))
    np.savez(tmp_path / "in.npz", images=images)
    for flag, path, out in (("--run", tiny_run_dir, "a.npz"), ("--model", bundle, "b.npz")):
        assert main(["transfer", flag, str(path), "--input", str(tmp_path / "in.npz"),
                     "--output", str(tmp_path / out)]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


@pytest.mark.parametrize("damage, message", [
    ("flip a weight byte", "does not match its sha256"),
    ("delete the card", "missing model_card.md"),
    ("another format version", "format version 2"),
    ("no manifest", "manifest.json is missing"),
])
def test_an_altered_bundle_is_refused_with_one_line(bundle: Path, tmp_path: Path, capsys, damage, message):
    b = _copy(bundle, tmp_path)
    if damage == "flip a weight byte":
        raw = bytearray((b / "weights.safetensors").read_bytes())
        raw[-5] ^= 0x01
        (b / "weights.safetensors").write_bytes(bytes(raw))
    elif damage == "delete the card":
        (b / "model_card.md").unlink()
    elif damage == "another format version":
        manifest = json.loads((b / "manifest.json").read_text())
        manifest["format_version"] = 2
        (b / "manifest.json").write_text(json.dumps(manifest))
    else:
        (b / "manifest.json").unlink()
    with pytest.raises(BundleError, match=message):
        DTN.load(b)
    np.savez(tmp_path / "in.npz", images=np.zeros((2, 8, 8), np.uint8))
    assert main(["transfer", "--model", str(b), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_export_picks_a_step_or_the_selected_one(tiny_run_dir: Path, tmp_path: Path, capsys):
    assert export_bundle(tiny_run_dir, tmp_path / "s2", step=2)["step"] == 2
    assert DTN.load(tmp_path / "s2").step == 2
    with pytest.raises(RunError, match="no checkpoint at step 3; it has steps 2, 4"):
        export_bundle(tiny_run_dir, tmp_path / "s3", step=3)
    with pytest.raises(RunError, match="dtn select"):
        export_bundle(tiny_run_dir, tmp_path / "best", best=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    (run / "select.json").write_text(json.dumps({"chosen_step": 2}))
    assert main(["export", str(run), "--best", "--out", str(tmp_path / "best")]) == 0
    assert "step 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "best" / "manifest.json").read_text())["checkpoint_choice"] == "best (dtn select)"


def test_export_refuses_a_folder_that_holds_files(tiny_run_dir: Path, tmp_path: Path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_run_dir), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
