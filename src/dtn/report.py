"""Pictures of a run: image grids (a source row above its transferred row), and `dtn report`, one
self-contained HTML page per run (RUN/report.html) that shows

  the iteration sweep   the fixed source batch (top row) and its transfer at each evaluation step
  held-out identities   identity_grid.png (face | avatar pairs) and the identity retrieval numbers
  curves                D and G loss terms and the evaluation metrics from metrics.csv (matplotlib, Agg)
  ablations             paper Table 1 rows, when the run dir or its parent holds them
  numbers               results.json (and f.json), the confusion matrix
  config                config.toml as the run resolved it

Every image is inlined as a base64 PNG data URI and the page has no script, stylesheet or font links:
it can be mailed or attached to an issue and opens offline.

The sweep re-uses the samples/step-*.png grids the run wrote at each evaluation (the same 16 source
test images every time) rather than re-rendering from checkpoints: checkpoints are pruned to the last
train.keep_last, every sample grid is kept, and cutting PNGs needs no model, so the report costs about a
second and `dtn run` writes it at the end of every run.
"""
from __future__ import annotations

import base64
import html
import io
import math
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DtnError, RunError
from .nets import to_images
from .rundir import RunDir, column_kind
from .weights import atomic_write

PAD, SCALE = 2, 2  # layout of the sample grids on disk; sample_rows() cuts them back into rows
_SAMPLE = re.compile(r"step-(\d+)\.png$")


def grid(rows: list[np.ndarray], pad: int = PAD, scale: int = SCALE) -> Image.Image:
    """rows: uint8 arrays (N, H, W, C), C in {1, 3}, same N, H, W. Returns one RGB picture."""
    rows = [np.repeat(r, 3, axis=-1) if r.shape[-1] == 1 else r for r in rows]
    n, h, w, _ = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = r[j]
    img = Image.fromarray(out)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(path: Path, source: torch.Tensor, transferred: torch.Tensor) -> None:
    """Source images (float [-1, 1]) in the top row, their transfers below."""
    picture = grid([to_images(source).cpu().numpy(), to_images(transferred).cpu().numpy()])
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))  # a kill never leaves half a PNG


def pairs_grid(source: torch.Tensor, transferred: torch.Tensor, per_row: int = 8) -> Image.Image:
    """Pairs side by side, per_row pairs a row: x | G(x) | x | G(x) ... (float [-1, 1], same N; white
    cells fill a last row that is short).
    The identity grid of a faces run: a face and its avatar next to each other, where the eye compares."""
    faces, outs = to_images(source).cpu().numpy(), to_images(transferred).cpu().numpy()
    if faces.shape[-1] != outs.shape[-1]:
        faces, outs = (np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in (faces, outs))
    if len(faces) == 0 or len(faces) != len(outs):
        raise ValueError(f"pairs_grid: needs as many transfers as sources, at least one; got {len(faces)}, {len(outs)}")
    blank = (-len(faces)) % per_row                                  # white cells fill the last row
    faces, outs = (np.concatenate([a, np.full((blank, *a.shape[1:]), 255, np.uint8)]) for a in (faces, outs))
    both = np.stack([faces, outs], 1).reshape(-1, per_row * 2, *faces.shape[1:])   # rows of x, G(x), x, ...
    return grid(list(both))


def save_pairs_grid(path: Path, source: torch.Tensor, transferred: torch.Tensor, per_row: int = 8) -> None:
    picture = pairs_grid(source, transferred, per_row)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- the sweep
def sample_rows(path: Path, n_rows: int = 2) -> list[Image.Image]:
    """Cut a grid written by save_grid back into its rows, each with the padding around it."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise RunError(f"{path}: unreadable sample grid ({exc.__class__.__name__}); the run may be half-written") from None
    cell = (img.height // SCALE - PAD) // n_rows  # one image row plus the padding above it, unscaled
    if cell <= PAD or (n_rows * cell + PAD) * SCALE != img.height:
        raise RunError(f"{path}: {img.width}x{img.height} is not a {n_rows}-row dtn sample grid")
    return [img.crop((0, i * cell * SCALE, img.width, ((i + 1) * cell + PAD) * SCALE)) for i in range(n_rows)]


def sweep(run: RunDir) -> list[tuple[str, Image.Image]]:
    """[("source", row), ("step 100", row), ...]: the fixed source batch, then its transfer at each step."""
    samples = sorted((int(m.group(1)), p) for p in (run.path / "samples").glob("step-*.png")
                     if (m := _SAMPLE.search(p.name)))
    out: list[tuple[str, Image.Image]] = []
    for step, path in samples:
        source, transferred = sample_rows(path)
        out += [("source", source)] if not out else []
        out.append((f"step {step:,}", transferred))
    return out


# ----------------------------------------------------------------------------- curves
def numeric_rows(run: RunDir) -> list[dict[str, float]]:
    """metrics.csv as numbers. An empty cell (a column not measured at that step) is left out, and so are
    the missing cells of a short last line (a run killed mid-write); anything else unreadable is an error."""
    out = []
    path = run.path / "metrics.csv"
    for i, row in enumerate(run.read_metrics(), start=2):
        if None in row:
            raise RunError(f"{path}: line {i} has more cells than the header; the file is damaged")
        parsed = {}
        for key, text in row.items():
            if text in (None, ""):
                continue
            try:
                parsed[key] = float(text)
            except ValueError:
                raise RunError(f"{path}: line {i}: {key} = {text!r} is not a number") from None
        if "step" in parsed:
            out.append(parsed)
    return out


def curve_panels(rows: list[dict[str, float]]) -> list[tuple[str, list[str], bool]]:
    """(title, columns, log y-axis) per plot: D loss, G loss terms, metrics in [0, 1], then any other metric alone."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    by_kind = {kind: [c for c in columns if column_kind(c) == kind] for kind in ("d_loss", "g_loss", "metric")}
    values = {c: [r[c] for r in rows if c in r] for c in columns}
    fractions = [c for c in by_kind["metric"] if all(0.0 <= v <= 1.0 for v in values[c])]
    panels = [("D loss", by_kind["d_loss"], False),
              ("G loss terms", by_kind["g_loss"], all(v > 0 for c in by_kind["g_loss"] for v in values[c])),
              (", ".join(fractions) + " (fractions)", fractions, False)]
    panels += [(c, [c], all(v > 0 for v in values[c])) for c in by_kind["metric"] if c not in fractions]
    return [p for p in panels if p[1]]


def plot_png(rows: list[dict[str, float]], title: str, columns: list[str], log: bool) -> bytes:
    """One matplotlib figure as PNG bytes. Figure() directly, not pyplot: no global state, no GUI backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for c in columns:
        pts = [(r["step"], r[c]) for r in rows if c in r and math.isfinite(r[c])]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=c, marker="o" if len(pts) < 25 else None, ms=3)
    ax.set(title=title, xlabel="step", yscale="log" if log else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- the page
def write_report(path: Path, out: Path | None = None) -> Path:
    """Write RUN/report.html (or `out`); a missing, half-written or other-version run is a RunError."""
    run = RunDir.open(Path(path))
    page = render_report(run)
    out = Path(out) if out is not None else run.path / "report.html"
    atomic_write(out, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out


def render_report(run: RunDir) -> str:
    cfg, rows = run.config(), numeric_rows(run)
    meta = run.read_json("run.json")
    last = f"step {int(rows[-1]['step']):,} of {cfg.train.steps:,}" if rows else "no step logged yet"
    summary = (f"{_esc(cfg.data.source)} &rarr; {_esc(cfg.data.target)}; status <b>{_esc(meta.get('status', '?'))}</b>, "
               f"{last}; dtn {_esc(meta.get('dtn_version', '?'))}")
    body = [f"<h1>dtn run {_esc(run.path.name)}</h1>", f"<p>{summary}</p>",
            _sweep_section(run), _identity_section(run), _curves_section(rows), _ablation_section(run), _numbers_section(run),
            f"<h2>Config</h2><p>{_esc(run.config_path.name)}, as this run resolved it.</p>"
            f"<pre>{_esc(run.config_path.read_text())}</pre>"]
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dtn report: "
            f"{_esc(run.path.name)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #ddd}"
        "th,td:first-child{text-align:left}table.sweep{width:100%;table-layout:fixed}table.sweep th{width:6.5em;white-space:nowrap}"
        "table.sweep img{max-width:100%;height:auto}table.sweep td,table.sweep th{border:0;padding:0 8px 0 0}img{display:block}"
        ".plots{display:flex;flex-wrap:wrap;gap:8px}pre{background:#f6f6f6;padding:8px;font-size:12px}"
        "p.none{color:#777;font-style:italic}")


def _esc(text) -> str:
    """For element text (the config keeps its quotes readable); attribute values use html.escape(quote=True)."""
    return html.escape(str(text), quote=False)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _sweep_section(run: RunDir) -> str:
    rows = sweep(run)
    head = "<h2>Iteration sweep</h2>"
    if not rows:
        return head + '<p class="none">No samples yet: samples/ gets a grid at every evaluation (train.eval_every).</p>'
    cells = "".join(f"<tr><th>{_esc(label)}</th><td>{_img(_png(img), label)}</td></tr>" for label, img in rows)
    return (head + "<p>The same source test images (top row) transferred by G at each evaluation step "
            f"(from samples/).</p><table class=\"sweep\">{cells}</table>")


def _identity_section(run: RunDir) -> str:
    """identity_grid.png (a run whose source test split holds held-out identities, e.g. faces) beside
    the identity retrieval numbers it illustrates; nothing for other runs."""
    path = run.path / "identity_grid.png"
    if not path.is_file():
        return ""
    try:
        with Image.open(path) as img:
            img.load()
            png = _png(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise RunError(f"{path}: unreadable identity grid ({exc.__class__.__name__}); rerun `dtn evaluate` "
                       "or the run's final evaluation") from None
    results = run.read_json("results.json") if (run.path / "results.json").is_file() else {}
    numbers = ""
    if "identity_median_rank" in results:
        numbers = (f" Identity retrieval over all {results['identity_n']:,} held-out faces "
                   f"({_esc(results.get('identity_distance', '?'))} distance between f(G(x)) and f(y)): median rank "
                   f"{results['identity_median_rank']:g} (percentile {results['identity_median_rank_percentile']:.2e}; "
                   f"the paper: 16 of 100,001 = 1.60e-04), recall@1 {100 * results['identity_recall_at_1']:.2f} %, "
                   f"recall@10 {100 * results['identity_recall_at_10']:.2f} %.")
    if "pixel_fd" in results:
        numbers += (f" Pixel Fréchet distance of G(x) to the target test images: {results['pixel_fd']:.2f}"
                    + (f" (the source images unchanged: {results['pixel_fd_source']:.2f})" if "pixel_fd_source" in results
                       else "") + "; retrieval alone cannot tell kept identity from g fooling f, this can.")
    return ("<h2>Held-out identities</h2><p>Held-out source test images (a fixed, seeded choice), each followed by "
            f"its transfer G(x) (from identity_grid.png).{numbers}</p>" + _img(png, "held-out faces and their transfers"))


def _curves_section(rows: list[dict[str, float]]) -> str:
    head = "<h2>Losses and metrics</h2>"
    if not rows:
        return head + '<p class="none">No metrics yet: metrics.csv gets a row every train.log_every steps.</p>'
    plots = "".join(_img(plot_png(rows, title, cols, log), title) for title, cols, log in curve_panels(rows))
    return head + f"<p>From metrics.csv (losses averaged over each logging interval).</p><div class=\"plots\">{plots}</div>"


def _ablation_section(run: RunDir) -> str:
    from .ablation import TABLE_COLUMNS, find_ablation_results, table_rows

    found = find_ablation_results(run.path)
    if found is None:
        return ""
    results, where = found
    return (f"<h2>Ablations</h2><p>From {_esc(where)}.</p>" + _table(TABLE_COLUMNS, table_rows(results)))


def _numbers_section(run: RunDir) -> str:
    head = "<h2>Results</h2>"
    if not (run.path / "results.json").is_file():
        return head + '<p class="none">No results.json yet: it is written after the final evaluation.</p>'
    results = run.read_json("results.json")
    parts = [head, _table(("results.json", ""), _number_rows(results))]
    if (run.path / "f.json").is_file():
        parts.append(_table(("f.json (pretrained f)", ""), _number_rows(run.read_json("f.json"))))
    confusion = results.get("confusion")
    if confusion:
        parts.append("<p>Confusion matrix on the source test set: rows the source label, columns the evaluation "
                     "classifier's reading of G(x).</p>")
        parts.append(_table(("",) + tuple(str(j) for j in range(len(confusion[0]))),
                            [(str(i),) + tuple(str(v) for v in row) for i, row in enumerate(confusion)]))
    return "".join(parts)


def _number_rows(obj: dict) -> list[tuple[str, str]]:
    """Scalars only, accuracies and consistencies as percentages."""
    out = []
    for key, value in obj.items():
        if isinstance(value, float) and ("accuracy" in key or "consistency" in key or "recall" in key):
            out.append((key, f"{100 * value:.2f} %"))
        elif isinstance(value, float):
            out.append((key, f"{value:.4g}"))
        elif isinstance(value, (int, str, bool)):
            out.append((key, str(value)))
    return out


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# ----------------------------------------------------------------------------- looking at it in a browser
def find_chromium() -> tuple[str, str] | None:
    """(chromium, chromedriver) from PATH, or None: the browser test and the README screenshot need both."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def headless_chromium(width: int = 1200, height: int = 2400):
    """A Selenium driver for the system's headless Chromium showing pages at width x height CSS pixels,
    browser console logged at ALL levels.
    The chromedriver path is passed explicitly, so Selenium Manager never runs (it would go online)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise DtnError("opening the report in a browser needs selenium: pip install selenium "
                       "(part of the dev extra)") from None
    found = find_chromium()
    if found is None:
        raise DtnError("chromium and chromedriver are not on PATH (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    try:
        # The window size includes headless Chromium's simulated frame; make the page itself width x height.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()
