"""Malformed inputs to the loaders, `dtn data info` and `dtn transfer`: one named error, a skip, or a
valid load, never a traceback. A quick slice of bench/fuzz.py (one case of every kind) plus
hypothesis-driven damage to valid files; the full bench (`python bench/fuzz.py`) runs over 1,000."""
from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dtn.apply import read_npz_images
from dtn.data.idx import parse_idx
from dtn.data.image_folder import BadImage, open_image
from dtn.data.svhn import svhn_source
from dtn.errors import DataError

REPO = Path(__file__).resolve().parents[1]
PROPERTY = settings(max_examples=60, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _load_bench():
    spec = importlib.util.spec_from_file_location("dtn_bench_fuzz", REPO / "bench" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load_bench()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return fuzz.make_tiny_run(tmp_path_factory.mktemp("fuzz-run"))


def test_one_case_of_every_kind_ends_in_a_named_error_a_skip_or_a_valid_load(tmp_path, tiny_run):
    summary = fuzz.run_fuzz(seed=1, work=tmp_path, subprocesses=False, per_kind=1, run_dir=tiny_run)
    problems = [f"{c['kind']} ({c['note']}): {c['message']}\n{c['detail']}"
                for c in summary["crashes"] + summary["vague_errors"]]
    assert not problems, "\n".join(problems)
    assert len(summary["by_kind"]) >= 60, sorted(summary["by_kind"])
    assert summary["totals"]["skipped"] > 0 and summary["totals"]["error"] > 0
    assert not (tmp_path / "PICKLE-RAN-CODE").exists()


def test_a_real_process_prints_one_line_for_a_hostile_npz(tmp_path, tiny_run):
    """`python -m dtn.cli transfer` on an .npz whose object array would run code when unpickled."""
    marker = tmp_path / "marker"
    np.savez(tmp_path / "evil.npz", images=np.array([fuzz.Evil(marker)], dtype=object))
    proc = subprocess.run([sys.executable, "-m", "dtn.cli", "--quiet", "transfer", "--run", str(tiny_run),
                           "--input", str(tmp_path / "evil.npz"), "--output", str(tmp_path / "out.npz"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DTN_QUIET": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("dtn: error: ") and "evil.npz" in proc.stderr and "object" in proc.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- hypothesis: damaged bytes

def _damage(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, mask in flips:
        out[pos % len(out)] ^= mask
    return bytes(out[:cut] if cut is not None else out)


DAMAGE = dict(flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), max_size=6),
              cut=st.one_of(st.none(), st.integers(0, 4000)))


@PROPERTY
@given(data=st.binary(max_size=64), header=st.booleans())
def test_parse_idx_returns_consistent_arrays_or_a_data_error(data, header):
    raw = (b"\x00\x00\x08\x03" + bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]) + data) if header else data
    try:
        arr = parse_idx(raw, "x.idx")
    except DataError as exc:
        assert "x.idx" in str(exc)
        return
    assert arr.dtype == np.uint8 and arr.size == len(raw) - 4 - 4 * arr.ndim


@pytest.fixture(scope="module")
def valid_npz() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.random.default_rng(0).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8))
    return buf.getvalue()


@PROPERTY
@given(**DAMAGE)
def test_a_damaged_npz_is_a_data_error_or_valid_images(tmp_path, valid_npz, flips, cut):
    path = tmp_path / "in.npz"
    path.write_bytes(_damage(valid_npz, flips, cut))
    try:
        images = read_npz_images(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert images.dtype == np.uint8 and images.ndim in (3, 4)


@pytest.fixture(scope="module")
def valid_images() -> dict[str, bytes]:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    out = {}
    for fmt, ext in (("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("BMP", ".bmp"), ("GIF", ".png")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[f"{fmt}{ext}"] = buf.getvalue()
    return out


@PROPERTY
@given(which=st.sampled_from(["PNG.png", "JPEG.jpg", "WEBP.webp", "BMP.bmp", "GIF.png"]), **DAMAGE)
def test_a_damaged_image_is_a_bad_image_or_decodes(tmp_path, valid_images, which, flips, cut):
    path = tmp_path / which
    path.write_bytes(_damage(valid_images[which], flips, cut))
    try:
        img = open_image(path)
    except BadImage as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert img.size[0] * img.size[1] >= 1


def test_a_mat_file_that_crashes_scipy_is_a_clean_error(tmp_path):
    """One byte in the tag of X's data (its type becomes 0x0202) makes scipy 1.17's loadmat segfault;
    an unverified .mat is therefore parsed in a throwaway process first."""
    data = bytearray(fuzz.mat_bytes(fuzz.svhn_vars(fuzz.Context(np.random.default_rng(2), tmp_path))))
    name_tag = data.index(b"\x01\x00\x01\x00X\x00\x00\x00")
    data[name_tag + 8 + 1] = 2
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(bytes(data))
    with pytest.raises(DataError, match="test_32x32.mat"):
        svhn_source(verify=False).load("test", tmp_path)
