"""faces and fashion presets, `dtn run --source/--target` for any pair, class subsets, unlabelled targets."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dtn.cli import main
from dtn.config import PRESETS, from_dict, load_toml, preset

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["faces", "fashion"])
def test_presets_validate(name):
    cfg = preset(name).validate()
    assert cfg.nets.image_size == 64 and cfg.nets.num_classes == 0
    assert name in PRESETS


def test_faces_uses_the_papers_face_weights():
    cfg = preset("faces")
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.gamma) == (100.0, 1.0, 0.05)
    assert (cfg.data.source, cfg.data.target, cfg.nets.target_channels) == ("celeba-sample", "avatars", 3)
    fashion = preset("fashion")
    assert (fashion.data.source, fashion.data.target, fashion.data.balanced) == ("clothing", "fashion-mnist", True)


def test_faces_editable_is_the_measured_best_recipe():
    """The preset must be the config its README row measured (bench/results/exp_faces_best_recipe_2000.json),
    up to the name and what a run resolves from the machine and the data (threads, precision, the number
    of identities)."""
    measured = json.loads((REPO / "bench" / "results" / "exp_faces_best_recipe_2000.json").read_text())

    def comparable(cfg):
        return replace(cfg, name="", nets=replace(cfg.nets, num_classes=0),
                       train=replace(cfg.train, threads=0, precision="auto"))

    cfg = preset("faces-editable").validate()
    assert comparable(cfg) == comparable(from_dict(measured["config"]))
    assert (cfg.data.source, cfg.data.target) == ("celeba-sample", "avatars")


def test_presets_are_listed_in_run_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "faces " in out and "fashion " in out and "--source NAME" in out and "--classes" in out


@pytest.mark.parametrize("name", ["faces", "fashion"])
def test_dry_run_prints_the_config(name, capsys):
    assert main(["run", name, "--dry-run", "--classes", "trouser,pullover"] if name == "fashion"
                else ["run", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f'name = "{name}"' in out and "nets.num_classes = 0: taken from the data" in out
    if name == "fashion":
        assert 'classes = "trouser,pullover"' in out and "balanced = true" in out
    else:
        assert 'target = "avatars"' in out and "alpha = 100.0" in out


def test_source_target_flags_map_onto_the_config(capsys):
    assert main(["run", "tiny", "--dry-run", "--source", "mnist", "--target", "synth-digits"]) == 0
    out = capsys.readouterr().out
    assert 'source = "mnist"' in out and 'target = "synth-digits"' in out
    assert "nets.target_channels = 0: taken from the data" in out
    assert main(["run", "tiny", "--dry-run", "--target", "avatars", "--set", "nets.target_channels=3"]) == 0
    assert "target_channels = 0" not in capsys.readouterr().out       # --set wins over the data


def test_any_two_folders_run_with_channels_and_classes_from_the_data(tmp_path, digit_folders):
    src, tgt = digit_folders                                            # RGB 32 px source, grey 28 px target
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "pair",
                 "--source", f"folder:{src}", "--target", f"folder:{tgt}"]) == 0
    cfg = load_toml(tmp_path / "pair" / "config.toml")
    assert (cfg.nets.source_channels, cfg.nets.target_channels, cfg.nets.num_classes) == (3, 1, 10)
    results = json.loads((tmp_path / "pair" / "results.json").read_text())
    assert 0 <= results["transfer_accuracy"] <= 1 and results["skipped_metrics"] == {}
    assert results["target_kept_to_classes_by_labels"] == [], "no --classes: no curation by target labels"
    assert results["trained_on"].startswith("cpu: ") and results["trained_on"].endswith(f", {cfg.train.precision}")


def test_class_subset_and_balanced_sampling_in_a_run(tmp_path, digit_folders):
    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "two",
                 "--source", f"folder:{src}", "--target", f"folder:{tgt}", "--classes", "3,7", "--balanced"]) == 0
    cfg = load_toml(tmp_path / "two" / "config.toml")
    assert cfg.nets.num_classes == 2 and cfg.data.classes == "3,7" and cfg.data.balanced
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["n_source_test"] == 6                               # 3 test images of each of the 2 classes
    assert len(results["confusion"]) == 10                              # at least 10x10, as for digits
    assert results["target_kept_to_classes_by_labels"] == ["3", "7"], "the curation by target labels is recorded"
    from dtn.bundle import model_card
    from dtn.rundir import RunDir
    card = model_card(RunDir.open(tmp_path / "two"), cfg, results["steps"], "last")
    assert "kept to the classes 3, 7 by their labels" in card and "labels kept it to the classes asked" in card


def test_an_unlabelled_target_skips_label_metrics(tmp_path, digit_folders, monkeypatch):
    pytest.importorskip("dicebear")
    pytest.importorskip("resvg_py")
    monkeypatch.setenv("DTN_AVATARS_TRAIN_N", "24")
    monkeypatch.setenv("DTN_AVATARS_TEST_N", "16")
    src, _ = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "av",
                 "--source", f"folder:{src}", "--target", "avatars"]) == 0
    assert load_toml(tmp_path / "av" / "config.toml").nets.target_channels == 3
    results = json.loads((tmp_path / "av" / "results.json").read_text())
    assert "transfer_accuracy" not in results and "fld" not in results
    assert "no class labels" in results["skipped_metrics"]["transfer_accuracy"]
    assert "pixel_fd is computed in its place" in results["skipped_metrics"]["fld"]
    assert results["pixel_fd"] > 0 and results["pixel_fd_source"] > 0   # folder digits and avatars: both RGB 32 px
    assert 0 <= results["f_consistency"] <= 1
    assert (tmp_path / "av" / "samples").is_dir()


def test_a_self_trained_f_records_its_rounds(tmp_path, digit_folders):
    """pretrain.f_self_train: f.json says how many target images each round pseudo-labelled and, the
    folders being labelled, how many rightly (read for that line only)."""
    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "st", "--source", f"folder:{src}",
                 "--target", f"folder:{tgt}", "--set", "pretrain.f_self_train=2",
                 "--set", "pretrain.f_self_train_steps=2"]) == 0
    facts = json.loads((tmp_path / "st" / "f.json").read_text())["self_training"]
    assert [r["round"] for r in facts] == [1, 2]
    assert all(r["pseudo_labelled"] > 0 and 0 <= r["pseudo_labels_right_diagnostic_only"] <= 1 for r in facts)
