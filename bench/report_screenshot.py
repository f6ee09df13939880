"""Regenerate docs/report.png: `dtn report` of a real run, photographed by headless Chromium.

    python bench/report_screenshot.py runs/bench/digits-s0-1795642758

The report is written into a temporary folder (the run dir is left as it is). When --ablation names a
`dtn ablate --out` JSON (default bench/results/ablation_digits.json), a copy goes beside the report's
run so that the page shows the ablation table too, as it would for a run in the ablation's runs dir.
Needs selenium and the system chromium + chromedriver (Debian: apt-get install chromium chromium-driver).
"""
from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from dtn.report import headless_chromium, write_report

ROOT = Path(__file__).resolve().parents[1]


def screenshot(page: Path, width: int, height: int) -> Image.Image:
    with headless_chromium(width, height) as driver:
        driver.get(page.resolve().as_uri())
        time.sleep(0.5)  # let the data-URI images decode before the picture is taken
        return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")


def save_small(img: Image.Image, out: Path, max_bytes: int) -> int:
    """PNG as it is if it fits max_bytes, else palette-quantized (plots and digits survive 256 colours)."""
    for candidate in (img, img.quantize(256, method=Image.Quantize.MEDIANCUT)):
        buf = io.BytesIO()
        candidate.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return buf.tell()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run directory")
    p.add_argument("--ablation", type=Path, default=ROOT / "bench/results/ablation_digits.json",
                   help="ablation JSON to show beside it (pass '' for none)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/report.png")
    p.add_argument("--size", default="1200x2400", help="browser window WIDTHxHEIGHT (default 1200x2400)")
    p.add_argument("--max-kb", type=int, default=600)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / args.run.name
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
        if str(args.ablation) not in ("", "."):
            shutil.copy(args.ablation, Path(tmp) / args.ablation.name)
        page = write_report(run)
        n = save_small(screenshot(page, width, height), args.out, args.max_kb * 1024)
    print(f"wrote {args.out}: {width}x{height}, {n / 1024:.0f} KB")


if __name__ == "__main__":
    main()
