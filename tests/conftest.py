"""Shared fixtures: tests never write to the user's cache, and find the real data sets if present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch

# The tests use tiny tensors: extra intra-op threads only add overhead, and on a machine whose cores
# are busy (a training run beside the tests) OpenMP oversubscription makes them 5-10x slower.
torch.set_num_threads(int(os.environ.get("DTN_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
# Read before any fixture runs: the autouse fixture below removes DTN_DATA_DIR from the environment
# so that tests building their own trees are not affected by the developer's setting.
_ENV_DATA_DIR = os.environ.get("DTN_DATA_DIR")


@pytest.fixture
def wait_for_training():
    """wait(proc, metrics_csv, rows): until the run has logged more than `rows` metric rows. Fails, with
    the run's stderr, if it exits first or takes over 5 minutes (a loaded CI machine is slow, but a
    signal sent before training starts tests nothing)."""
    import subprocess
    import time

    def wait(proc: subprocess.Popen, metrics: Path, rows: int = 3, timeout: float = 300.0) -> None:
        deadline = time.time() + timeout
        while not (metrics.exists() and len(metrics.read_text().splitlines()) > rows):
            if proc.poll() is not None:
                pytest.fail(f"the run exited ({proc.returncode}) before training: {proc.stderr.read()[-2000:]}")
            if time.time() > deadline:
                proc.kill()
                pytest.fail(f"the run logged no {rows} steps in {timeout:.0f} s")
            time.sleep(0.1)

    return wait


@pytest.fixture
def load_bench():
    """Import a bench/ script by name (bench/ is not a package): load_bench("time_to_90")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"dtn_bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def find_real_data_dir() -> Path | None:
    """$DTN_DATA_DIR, else ../shared/datasets next to the repository; None when neither exists."""
    candidates = [Path(_ENV_DATA_DIR).expanduser()] if _ENV_DATA_DIR else []
    candidates.append(REPO_ROOT.parent / "shared" / "datasets")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dtn-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, session_cache_dir: Path) -> None:
    monkeypatch.setenv("DTN_CACHE_DIR", str(session_cache_dir))
    monkeypatch.delenv("DTN_DATA_DIR", raising=False)


@pytest.fixture
def real_data_dir() -> Path:
    """The folder holding the real data sets (mnist/, fashion-mnist/, ...), or skip."""
    path = find_real_data_dir()
    if path is None:
        where = f"$DTN_DATA_DIR={_ENV_DATA_DIR}" if _ENV_DATA_DIR else "$DTN_DATA_DIR (unset)"
        pytest.skip(f"real data sets not found: neither {where} nor {REPO_ROOT.parent / 'shared' / 'datasets'} exists")
    return path



def make_digit_folder(root: Path, n_per_class: int, channels: int, size: int, seed: int) -> Path:
    """A folder dataset with train/ and test/ splits and one sub-folder per class 0..9.
    Class k is a bright horizontal bar at row 2k+4 (so a classifier can learn it)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_per_class), ("test", max(2, n_per_class // 2))):
        for k in range(10):
            d = root / split / str(k)
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
                img[2 * k + 4: 2 * k + 7] = 230
                Image.fromarray(img[..., 0] if channels == 1 else img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digit_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A labelled RGB 32 px source folder and a grey 28 px target folder, train/ and test/ each."""
    tmp = tmp_path_factory.mktemp("digit-folders")
    return make_digit_folder(tmp / "src", 6, 3, 32, 0), make_digit_folder(tmp / "tgt", 6, 1, 28, 1)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, digit_folders, session_cache_dir: Path) -> Path:
    """One tiny `dtn run` on the digit folders (checkpoints at steps 2 and 4), shared by the apply,
    export and select tests: read it, or copy it before changing it. (Session fixtures run before the
    autouse cache fixture, so the cache is redirected here too.)"""
    from dtn.cli import main

    tmp = tmp_path_factory.mktemp("tiny-run")
    src, tgt = digit_folders
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTN_CACHE_DIR", str(session_cache_dir))
        mp.delenv("DTN_DATA_DIR", raising=False)
        assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp), "--name", "t",
                     "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]) == 0
    return tmp / "t"


class ReadsBrightness(torch.nn.Module):
    """A stand-in for f's head: class 1 for bright images, class 0 for dark ones, the surer the further
    the mean brightness is from grey (times `sharpness`); classes beyond 2 are never read."""
    training = False

    def __init__(self, sharpness: float = 1.0, classes: int = 2) -> None:
        super().__init__()
        self.sharpness, self.classes = sharpness, classes

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def classify(self, x):
        m = self.sharpness * x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m] + [torch.full_like(m, -9.0)] * (self.classes - 2), 1)


@pytest.fixture
def reads_brightness():
    """The ReadsBrightness stand-in for f's head (a class; call it with sharpness / classes)."""
    return ReadsBrightness
