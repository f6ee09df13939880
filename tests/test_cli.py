"""The `dtn` command line, end to end on tiny data the tests write (plus the real data when present)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtn.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digit_folders) -> Path:
    """One tiny `dtn run` shared by the tests below (a few seconds)."""
    tmp = tmp_path_factory.mktemp("cli")
    src, tgt = digit_folders
    rc = main(["--quiet", "run", "tiny", "--runs-dir", str(tmp / "runs"), "--name", "t",
               "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"])
    assert rc == 0
    return tmp / "runs" / "t"


def test_run_writes_a_complete_run_dir(tiny_run: Path):
    for name in ("config.toml", "run.json", "metrics.csv", "results.json", "f.safetensors"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "checkpoints").glob("step-*.safetensors"))
    assert list((tiny_run / "samples").glob("step-*.png"))
    import json
    res = json.loads((tiny_run / "results.json").read_text())
    assert 0.0 <= res["transfer_accuracy"] <= 1.0 and res["steps"] == 4


def test_run_refuses_to_overwrite(tiny_run: Path, capsys):
    rc = main(["run", "tiny", "--runs-dir", str(tiny_run.parent), "--name", tiny_run.name])
    assert rc == 2
    assert "already holds a run" in capsys.readouterr().err


def test_transfer_npz_interface(tiny_run: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    for shape in ((5, 40, 24, 3), (3, 28, 28)):
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        np.savez(tmp_path / "in.npz", images=images)
        assert main(["transfer", "--run", str(tiny_run), "--input", str(tmp_path / "in.npz"),
                     "--output", str(tmp_path / "out.npz")]) == 0
        out = np.load(tmp_path / "out.npz")["images"]
        assert out.dtype == np.uint8 and out.shape == (shape[0], 32, 32)


def test_transfer_rejects_bad_npz(tiny_run: Path, tmp_path: Path, capsys):
    np.savez(tmp_path / "bad.npz", pictures=np.zeros((2, 8, 8), np.uint8))
    assert main(["transfer", "--run", str(tiny_run), "--input", str(tmp_path / "bad.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert "bad.npz" in capsys.readouterr().err
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 8, 8), np.float32))
    assert main(["transfer", "--run", str(tiny_run), "--input", str(tmp_path / "f.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert "uint8" in capsys.readouterr().err


def test_transfer_missing_run(tmp_path: Path, capsys):
    np.savez(tmp_path / "in.npz", images=np.zeros((2, 8, 8), np.uint8))
    assert main(["transfer", "--run", str(tmp_path / "nope"), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_continues_to_more_steps(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "runs" / "t"
    shutil.copytree(tiny_run, run)
    before = (run / "metrics.csv").read_text().splitlines()
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path / "runs"), "--name", "t", "--resume",
                 "--steps", "6"]) == 0
    import json
    assert json.loads((run / "results.json").read_text())["steps"] == 6
    after = (run / "metrics.csv").read_text().splitlines()
    assert after[:len(before)] == before, "rows up to the checkpoint are kept"
    steps = [int(line.split(",")[0]) for line in after[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 6, "no duplicated or missing steps"
    seconds = [float(line.split(",")[1]) for line in after[1:]]
    assert seconds == sorted(seconds), "the training clock continues across the resume"
    assert "steps = 6" in (run / "config.toml").read_text()


def test_dry_run_prints_config_and_marks_overrides(capsys):
    assert main(["run", "digits", "--dry-run", "--set", "loss.alpha=3"]) == 0
    out = capsys.readouterr().out
    assert "[loss]" in out and "alpha = 3.0" in out and "# loss.alpha = 3.0" in out


def test_unknown_config_key_lists_valid_ones(capsys):
    assert main(["run", "digits", "--dry-run", "--set", "loss.alhpa=3"]) == 2
    err = capsys.readouterr().err
    assert "loss.alhpa" in err and "alpha" in err


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion-mnist", "svhn", "synth-digits", "celeba-sample", "image-folder"):
        assert name in out


def test_data_show_synth_digits(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DTN_SYNTH_TRAIN_N", "300")
    out = tmp_path / "sheet.png"
    assert main(["data", "show", "synth-digits", "--n", "16", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.width >= 4 * 32 and img.height >= 4 * 32
    assert np.asarray(img).std() > 10


def test_data_info_real_mnist(real_data_dir: Path, capsys):
    assert main(["data", "info", "mnist", "--data-dir", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "60000 images" in out and "10000 images" in out and "MISMATCH" not in out


def test_data_info_refuses_corrupted_mnist(real_data_dir: Path, tmp_path: Path, capsys):
    copy = tmp_path / "mnist"
    shutil.copytree(real_data_dir / "mnist", copy)
    path = copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] ^= 0x01
    path.write_bytes(gzip.compress(bytes(raw)))
    assert main(["data", "info", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in err and "checksum mismatch" in err
    assert err.count("\n") == 1, "one line, no traceback"


def test_help_mentions_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("data", "run", "evaluate", "transfer"):
        assert cmd in out


def test_evaluate_reports_requested_metrics(tiny_run: Path, capsys):
    import json
    assert main(["--quiet", "evaluate", str(tiny_run), "--metrics", "transfer_accuracy,adaptation_accuracy",
                 "--adaptation-samples", "40"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert 0 <= result["transfer_accuracy"] <= 1 and 0 <= result["adaptation_accuracy"] <= 1
    assert result["step"] == 4 and "fld" not in result


def test_evaluate_takes_a_step_number_or_a_file_and_names_the_steps_it_has(tiny_run: Path, capsys):
    import json

    def evaluated(checkpoint: str) -> dict:
        assert main(["--quiet", "evaluate", str(tiny_run), "--metrics", "transfer_accuracy",
                     "--checkpoint", checkpoint]) == 0
        out = capsys.readouterr().out
        return json.loads(out[out.index("{"):])

    by_step = evaluated("2")
    assert by_step["step"] == 2 and by_step["checkpoint"].endswith("step-000002.safetensors")
    by_file = evaluated(by_step["checkpoint"])
    assert by_file["step"] == 2 and by_file["transfer_accuracy"] == by_step["transfer_accuracy"]
    assert main(["--quiet", "evaluate", str(tiny_run), "--checkpoint", "3"]) == 2
    assert "has no checkpoint at step 3; it has steps 2, 4" in capsys.readouterr().err


def test_evaluate_unknown_metric_lists_valid_ones(tiny_run: Path, capsys):
    assert main(["--quiet", "evaluate", str(tiny_run), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "adaptation_accuracy" in err


def test_python_api_matches_the_cli(tiny_run: Path, tmp_path: Path):
    from dtn import DTN

    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = DTN.load(tiny_run).transfer(images)
    np.savez(tmp_path / "in.npz", images=images)
    assert main(["transfer", "--run", str(tiny_run), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    assert out.dtype == np.uint8 and out.shape == (4, 32, 32)
    assert np.array_equal(out, np.load(tmp_path / "out.npz")["images"])


def test_data_info_on_a_folder_names_a_bad_file_or_skips_it(digit_folders, tmp_path: Path, capsys):
    src, _ = digit_folders
    folder = tmp_path / "imgs"
    shutil.copytree(src, folder)
    bad = folder / "train" / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["data", "info", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and err.count("\n") == 1
    assert main(["data", "info", str(folder), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.png" in out and "60 images" in out
