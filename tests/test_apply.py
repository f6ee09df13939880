"""`dtn transfer` on image files and folders, devices and batch sizes (the .npz interface is in test_cli.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dtn import DTN
from dtn.cli import main
from dtn.errors import ConfigError


def _save(path: Path, array: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Nested images of several formats, modes and sizes, plus files a folder walk must ignore."""
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    _save(root / "x" / "y" / "a.jpg", rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), quality=95)
    _save(root / "b.png", rng.integers(0, 256, (20, 50, 4), dtype=np.uint8))          # RGBA
    _save(root / "x" / "c.webp", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), lossless=True)
    _save(root / "d.BMP", rng.integers(0, 256, (17, 23), dtype=np.uint8))              # grey, upper-case suffix
    _save(root / ".hidden.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


EXPECTED = {"x/y/a.png": (30, 40), "b.png": (50, 20), "x/c.png": (32, 32), "d.png": (23, 17)}   # name: (w, h)


def _outputs(root: Path) -> dict[str, Image.Image]:
    return {p.relative_to(root).as_posix(): Image.open(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_transfer_keeps_relative_names_and_sizes(tiny_run_dir: Path, photo_folder: Path, tmp_path: Path,
                                                        capsys):
    out = tmp_path / "out"
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                 "--output", str(out)]) == 0
    assert "4 images" in capsys.readouterr().out
    images = _outputs(out)
    assert set(images) == set(EXPECTED)
    assert all(img.size == (32, 32) and img.mode == "L" for img in images.values()), "the model's size by default"
    out2 = tmp_path / "out2"
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                 "--output", str(out2), "--keep-size"]) == 0
    assert {k: img.size for k, img in _outputs(out2).items()} == EXPECTED


def test_a_folder_image_transfers_exactly_as_in_an_npz(tiny_run_dir: Path, photo_folder: Path, tmp_path: Path):
    """One decoder (data/image_folder.py) and one resize: the PNG equals the .npz route and the Python API."""
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder / "x" / "c.webp"),
                 "--output", str(tmp_path / "c.png")]) == 0
    pixels = np.asarray(Image.open(photo_folder / "x" / "c.webp").convert("RGB"))
    np.savez(tmp_path / "in.npz", images=pixels[None])
    assert main(["transfer", "--run", str(tiny_run_dir), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    via_npz = np.load(tmp_path / "out.npz")["images"][0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), via_npz)
    assert np.array_equal(DTN.load(tiny_run_dir).transfer([pixels])[0], via_npz)


def test_a_single_file_into_a_folder(tiny_run_dir: Path, photo_folder: Path, tmp_path: Path):
    assert main(["--quiet", "transfer", "--model", str(tiny_run_dir), "--input", str(photo_folder / "b.png"),
                 "--output", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "b.png").size == (32, 32)


def test_bad_images_stop_the_run_or_are_skipped_and_counted(tiny_run_dir: Path, photo_folder: Path,
                                                            tmp_path: Path, capsys):
    (photo_folder / "x" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photo_folder / "text.jpg").write_text("hello")
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                 "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--skip-bad" in err and ("broken.png" in err or "text.jpg" in err)
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                 "--output", str(tmp_path / "b"), "--skip-bad", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split(":")[0] for line in skipped) == ["skipped text.jpg", "skipped x/broken.png"]
    assert "4 images" in captured.out and "skipped 2" in captured.out
    assert set(_outputs(tmp_path / "b")) == set(EXPECTED)


def test_two_inputs_with_one_output_name_are_refused_before_writing(tiny_run_dir: Path, photo_folder: Path,
                                                                    tmp_path: Path, capsys):
    _save(photo_folder / "x" / "y" / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                 "--output", str(tmp_path / "o")]) == 2
    assert "would both be written" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_empty_folder_or_missing_input_is_one_line(tiny_run_dir: Path, tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nope"):
        assert main(["transfer", "--run", str(tiny_run_dir), "--input", str(path), "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dtn: error: ") and err.count("\n") == 1


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(tiny_run_dir: Path, photo_folder: Path, tmp_path: Path,
                                                       monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        DTN.load(tiny_run_dir, device="cuda")
    assert main(["transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder), "--output",
                 str(tmp_path / "o"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "--device cpu" in err and err.count("\n") == 1
    assert DTN.load(tiny_run_dir, device="auto").device.type == "cpu"
    with pytest.raises(ConfigError, match="valid: auto, cpu"):
        DTN.load(tiny_run_dir, device="tpu")


def test_batch_size_does_not_change_the_images(tiny_run_dir: Path):
    images = np.random.default_rng(3).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    model = DTN.load(tiny_run_dir, device="cpu")
    one, all_at_once = model.transfer(images, batch=1), model.transfer(images, batch=256)
    assert one.shape == all_at_once.shape == (7, 32, 32)
    assert np.abs(one.astype(int) - all_at_once.astype(int)).max() <= 1


def test_python_api_picks_a_checkpoint(tiny_run_dir: Path):
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert DTN.load(tiny_run_dir).step == 4 and DTN.load(tiny_run_dir, checkpoint=2).step == 2
    latest = DTN.load(tiny_run_dir, checkpoint=4).transfer(images)
    assert np.array_equal(latest, DTN.load(tiny_run_dir).transfer(images))


def test_an_output_folder_inside_the_input_is_not_read_again(tiny_run_dir: Path, photo_folder: Path):
    for _ in range(2):
        assert main(["--quiet", "transfer", "--run", str(tiny_run_dir), "--input", str(photo_folder),
                     "--output", str(photo_folder / "out")]) == 0
    assert set(_outputs(photo_folder / "out")) == set(EXPECTED)


def test_a_run_that_averaged_g_transfers_with_the_average(digit_folders, tmp_path: Path):
    """train.g_ema: evaluation used the moving average, so DTN.load (and export, select) must too."""
    from dtn.weights import load_tensors

    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "ema", "--set", "train.g_ema=0.5",
                 "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]) == 0
    ckpt = sorted((tmp_path / "ema" / "checkpoints").glob("*.safetensors"))[-1]
    tensors = load_tensors(ckpt)
    model = DTN.load(tmp_path / "ema", device="cpu")
    loaded = model.g.state_dict()
    assert all(torch.equal(loaded[k], tensors["g_ema." + k]) for k in loaded)
    assert any(not torch.equal(tensors["g." + k], tensors["g_ema." + k]) for k in loaded if "weight" in k)


def test_a_run_that_aligned_codes_transfers_with_the_alignment(digit_folders, tmp_path: Path):
    """nets.g_code_align: the map g was trained behind travels with g's weights, so DTN.load transfers as
    training evaluated, and not as g reading f(x) raw."""
    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp_path), "--name", "al", "--set", "nets.g_code_align=true",
                 "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]) == 0
    model = DTN.load(tmp_path / "al", device="cpu")
    assert not torch.equal(model.g.align_scale, torch.ones_like(model.g.align_scale))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    aligned = model.transfer_tensor(x)
    with torch.no_grad():
        assert torch.allclose(aligned, model.g(model.g.align(model.f(x))), atol=1e-5)
        model.g.align_shift += 3.0          # a tiny run's g barely reads its input; a large move shows it is read
    assert (model.transfer_tensor(x) - aligned).norm() > 0.01 * aligned.norm()
