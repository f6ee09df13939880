"""Experiment (issue #5): does giving the procedural stroke fonts a larger share of synth-digits make f
read MNIST better? f's MNIST accuracy is the ceiling the transfer accuracy follows.

    python bench/font_share.py [--shares default,0.5] [--n 100000]

For each share, generates the synth-digits train split (seed 0, as the cached split) with that fraction
of pictures drawn in a procedural font (stroke, stroke-alt, segment; "default" = the generator's uniform
choice over all 28 fonts, 6 of them procedural), pretrains f exactly as `dtn run digits` does (digits
preset, seed 0) and scores it on MNIST test, overall and per digit. Writes bench/results/font_share.json.
The share is imposed by wrapping the generator's scene drawing in this process (one worker), so the
library itself is unchanged.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import dtn.data.synth_digits as sd
from dtn.config import preset
from dtn.domain import Domain, load_domain
from dtn.pretrain import accuracy, pretrain_f
from machine import RESULTS, machine_info, write_result

PROCEDURAL = ("stroke", "segment")


def with_font_share(share: float | None):
    """A replacement for synth_digits._draw_scene giving procedural fonts `share` of the pictures."""
    original = sd._draw_scene
    names = [name for name, _ in sd._glyph_bank(sd.font_paths())]
    procedural = np.array([i for i, name in enumerate(names) if name.startswith(PROCEDURAL)])
    ttf = np.array([i for i, name in enumerate(names) if not name.startswith(PROCEDURAL)])

    def draw(rng: np.random.Generator, n: int, n_fonts: int):
        scene = original(rng, n, n_fonts)
        if share is not None:
            pick = np.random.default_rng(int(rng.integers(1 << 30)))
            scene.font = np.where(pick.random(n) < share, pick.choice(procedural, n), pick.choice(ttf, n))
        return scene
    return draw, len(procedural), len(names)


def f_on_mnist(share: float | None, n: int) -> dict:
    draw, n_procedural, n_fonts = with_font_share(share)
    original, sd._draw_scene = sd._draw_scene, draw
    try:
        t0 = time.time()
        images, labels = sd.generate(n, 0, workers=1, progress=False)
    finally:
        sd._draw_scene = original
    source = Domain(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels),
                    sd.NAME, "train")
    generated = time.time() - t0
    cfg = preset("digits")
    f = pretrain_f(cfg.nets, cfg.pretrain, source, 0, torch.bfloat16)
    mnist = load_domain("mnist", "test", cfg.nets.image_size, cfg.nets.source_channels)
    with torch.no_grad():
        pred = torch.cat([f.classify(mnist.batch(torch.arange(i, min(i + 1000, len(mnist))))[0]).argmax(1)
                          for i in range(0, len(mnist), 1000)])
    per_digit = [float((pred[mnist.labels == k] == k).float().mean()) for k in range(10)]
    return {"procedural_share": share if share is not None else round(n_procedural / n_fonts, 3),
            "share_setting": "default (uniform over fonts)" if share is None else share,
            "f_mnist_test_accuracy": accuracy(f.classify, mnist), "per_digit": [round(a, 4) for a in per_digit],
            "generate_seconds": round(generated, 1), "total_seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shares", default="default,0.5", help="comma-separated: default or a fraction in [0, 1]")
    p.add_argument("--n", type=int, default=100_000, help="train pictures (default: the cached split's size)")
    args = p.parse_args()
    rows = []
    for item in args.shares.split(","):
        share = None if item == "default" else float(item)
        rows.append(f_on_mnist(share, args.n))
        print(rows[-1], flush=True)
    out = write_result(RESULTS / "font_share.json", {
        "command": "python bench/font_share.py " + " ".join(sys.argv[1:]),
        "question": "does a larger share of procedural stroke fonts in synth-digits make f read MNIST better?",
        "rows": rows, "machine": machine_info()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
