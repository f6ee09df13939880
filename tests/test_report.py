"""`dtn report`: one self-contained page per run (sweep, curves, ablations, numbers, config), checked as
text and in headless Chromium; `--tensorboard` mirrors the metrics.csv rows."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from dtn.cli import main
from dtn.config import tiny
from dtn.report import find_chromium, headless_chromium, sweep, write_report
from dtn.rundir import RunDir

SECTIONS = ("Iteration sweep", "Losses and metrics", "Results", "Config")


def _run_args(folders, runs_dir: Path, name: str) -> list[str]:
    src, tgt = folders
    return ["--quiet", "run", "tiny", "--runs-dir", str(runs_dir), "--name", name,
            "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digit_folders) -> Path:
    """One tiny `dtn run` (4 steps, samples at 2 and 4) shared by the tests below; it writes report.html."""
    runs = tmp_path_factory.mktemp("report") / "runs"
    assert main(_run_args(digit_folders, runs, "t")) == 0
    return runs / "t"


def _images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_dtn_run_writes_a_self_contained_report(tiny_run: Path):
    page = (tiny_run / "report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page, section
    srcs = _images(page)
    assert len(srcs) >= 3 + 2  # source row + 2 steps, and at least two plots
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", page)
    assert 'name = "tiny"' in page and "transfer_accuracy" in page


def test_report_command_writes_the_page_and_out_goes_elsewhere(tiny_run: Path, tmp_path: Path, capsys):
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "r.html")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'r.html'}"
    assert (tmp_path / "r.html").read_text().count("<h2>") == len(SECTIONS)


def test_sweep_is_the_source_row_then_one_row_per_sample_step(tiny_run: Path):
    rows = sweep(RunDir.open(tiny_run))
    assert [label for label, _ in rows] == ["source", "step 2", "step 4"]
    with Image.open(tiny_run / "samples" / "step-000004.png") as grid:
        width, height = grid.size
    assert all(img.size == (width, (height + 4) // 2) for _, img in rows)  # each row keeps its padding


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("no run.json", "not a complete dtn run"),
    ("other version", "run format 99"),
    ("truncated sample", "unreadable sample grid"),
    ("garbled metrics", "is not a number"),
    ("extra cells", "more cells than the header"),
])
def test_a_broken_run_is_one_line(tiny_run: Path, tmp_path: Path, capsys, damage: str, message: str):
    run = tmp_path / "r"
    if damage != "missing":
        shutil.copytree(tiny_run, run)
    if damage == "no run.json":
        (run / "run.json").unlink()
    elif damage == "other version":
        (run / "run.json").write_text(json.dumps({"dtn_version": "9.0", "format": 99}))
    elif damage == "truncated sample":
        path = run / "samples" / "step-000004.png"
        path.write_bytes(path.read_bytes()[:60])
    elif damage == "garbled metrics":
        with open(run / "metrics.csv", "a") as fh:
            fh.write("5,1.0,abc\n")
    elif damage == "extra cells":
        with open(run / "metrics.csv", "a") as fh:
            fh.write("5" + ",1.0" * 30 + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_run_with_no_metrics_yet_still_gets_a_page(tmp_path: Path):
    run = RunDir.create(tmp_path / "fresh", tiny())
    page = write_report(run.path).read_text()
    assert "No samples yet" in page and "No metrics yet" in page and "No results.json yet" in page
    assert "no step logged yet" in page and "<h2>Config</h2>" in page


def test_ablation_table_from_sibling_runs_and_from_ablate_out_json(tiny_run: Path, tmp_path: Path):
    run = tmp_path / "runs" / "tiny-full"
    shutil.copytree(tiny_run, run)
    sibling = tmp_path / "runs" / "tiny-no-tid"
    sibling.mkdir()
    (sibling / "results.json").write_text(json.dumps({"transfer_accuracy": 0.5, "fld": 3.0, "f_consistency": 0.9}))
    page = write_report(run).read_text()
    assert "<h2>Ablations</h2>" in page and "../tiny-&lt;row&gt;/results.json" in page
    assert "<td>no-tid</td><td>50.00 %</td><td>88.40 %</td>" in page

    (tmp_path / "runs" / "ablation_tiny.json").write_text(json.dumps(
        {"command": "dtn ablate tiny --out x", "rows": {"no-gan": {"transfer_accuracy": 0.25}}}))
    page = write_report(run).read_text()
    assert "ablation_tiny.json, made by `dtn ablate tiny --out x`" in page
    assert "<td>no-gan</td><td>25.00 %</td><td>34.70 %</td>" in page


def test_tensorboard_without_the_package_is_one_line_before_training(digit_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    assert main(_run_args(digit_folders, tmp_path, "tb") + ["--tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err and err.count("\n") == 1
    assert not (tmp_path / "tb" / "metrics.csv").exists()


def test_tensorboard_mirrors_the_metrics_csv_rows(digit_folders, tmp_path):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        pytest.skip(f"tensorboard is not installed ({exc}); pip install tensorboard to run this test")
    assert main(_run_args(digit_folders, tmp_path, "tb") + ["--tensorboard"]) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    rows = RunDir.open(tmp_path / "tb").read_metrics()
    tags = events.Tags()["scalars"]
    assert {"g_loss/const", "g_loss/tid", "metric/transfer_accuracy", "metric/fld", "time/seconds"} <= set(tags)
    assert [e.step for e in events.Scalars("g_loss/const")] == [int(r["step"]) for r in rows]
    got = [e.value for e in events.Scalars("metric/transfer_accuracy")]
    assert got == pytest.approx([float(r["transfer_accuracy"]) for r in rows if r["transfer_accuracy"]])


def test_the_report_renders_in_headless_chromium(tiny_run: Path):
    if find_chromium() is None:
        pytest.skip("chromium and chromedriver are not on PATH (Debian: apt-get install chromium chromium-driver)")
    with headless_chromium(1200, 1600) as driver:
        driver.get((tiny_run / "report.html").resolve().as_uri())
        sizes = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
            ".then(() => done(Array.from(document.images).map(i => [i.alt, i.naturalWidth])));")
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        title = driver.title
    assert title == "dtn report: t"
    assert not severe, severe
    assert len(sizes) >= 5 and all(width > 0 for _, width in sizes), sizes
