"""Editable avatars, measured: the parameter estimator's accuracy, and the identity retrieval of a faces
run with and without the avatar-parameter step (G(x) vs the real avatar rendered from G(x)'s estimated
options).

    python bench/avatar_params.py RUN [--n N] [--device auto]     # a run whose target is avatars
    python bench/avatar_params.py --size 64                       # the estimator alone, no run

Trains the estimator first if this machine has none cached (avatar_params.get_estimator: the avatars
train split, 4,000 steps of 128; see the README for its time), scores it on the avatars test split,
then for RUN ranks each held-out face among all held-out faces by d(f(A), f(y)), A = G(x) and
A = render(estimate(G(x))), with the run's own f (metrics/retrieval.py, the `identity_retrieval` metric
`dtn run faces` reports). Writes bench/results/avatar_params.json and, for RUN, avatar_params.png
(rows: face | G(x) | rendered avatar).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from dtn import avatar_params as ap
from dtn.apply import DTN, resolve_device
from dtn.data import avatars
from dtn.domain import load_domain
from dtn.metrics.retrieval import identity_retrieval
from dtn.nets import from_images

RESULTS = Path(__file__).resolve().parent / "results"


def say(line: str) -> None:
    print(f"avatar_params: {line}", file=sys.stderr, flush=True)


def heldout_faces(model: DTN, n: int | None) -> np.ndarray:
    """The run's source test split (held-out identities for `dtn run faces`) as uint8 (N, S, S, C):
    the images the run's identity_retrieval ranks, optionally a fixed subset of n."""
    cfg = model.cfg
    domain = load_domain(cfg.data.source, "test", cfg.nets.image_size, cfg.nets.source_channels,
                         cfg.data.data_dir or None)
    if n:
        domain = domain.subset(n, seed=0)
    return domain.images.permute(0, 2, 3, 1).contiguous().numpy()


def retrieval(model: DTN, faces: np.ndarray, rendered: np.ndarray, transferred: np.ndarray) -> dict:
    """identity_retrieval of G(x) and of the rendered avatars, the same f, faces and distance."""
    def floats(images: np.ndarray) -> torch.Tensor:
        return from_images(torch.from_numpy(images)).to(model.device)

    with torch.inference_mode():
        source = floats(faces)
        return {"G(x)": identity_retrieval(model.f, source, floats(transferred)),
                "rendered_avatar": identity_retrieval(model.f, source, floats(rendered))}


def grid(faces: np.ndarray, transferred: np.ndarray, rendered: np.ndarray, path: Path, n: int = 16) -> None:
    """Three rows of n: held-out faces, G(x), the avatars rendered from G(x)'s estimated options."""
    from PIL import Image

    rows = [np.concatenate(list(images[:n]), axis=1) for images in (faces, transferred, rendered)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="run directory or bundle whose target is avatars (omit: estimator only)")
    parser.add_argument("--size", type=int, default=64, help="estimator image size without RUN (default 64, faces)")
    parser.add_argument("--n", type=int, default=None, help="held-out faces to rank (default: the whole split)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"estimator training steps (default {ap.DEFAULT_ESTIMATOR.steps}: the one "
                        "`dtn transfer --avatar-svg` uses; another number trains and caches another estimator)")
    parser.add_argument("--out", default=str(RESULTS / "avatar_params.json"))
    args = parser.parse_args()

    start = time.perf_counter()
    result: dict = {"command": "python bench/avatar_params.py " + " ".join(sys.argv[1:]),
                    "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
                    "avatar_styles": list(avatars.current_styles()), "attribution": avatars.attribution(),
                    "avatars_env": avatars.env_overrides()}
    model = DTN.load(args.run, device=args.device) if args.run else None
    if model is not None:
        ap.require_avatar_target(model.cfg, args.run)
    size = model.cfg.nets.image_size if model else args.size
    device = model.device if model else resolve_device(args.device)
    cfg = replace(ap.DEFAULT_ESTIMATOR, steps=args.steps) if args.steps else ap.DEFAULT_ESTIMATOR
    estimator, scores = ap.get_estimator(size, cfg=cfg, device=device, say=say)
    result["estimator"] = {"path": str(ap.estimator_path(size, tuple(avatars.current_styles()), cfg)),
                           "image_size": size, "config": asdict(cfg), "test": scores}
    say(f"estimator on {scores['n']:,} test avatars: mean category accuracy "
        f"{100 * scores['mean_category_accuracy']:.1f} %, exact match {100 * scores['exact_match']:.1f} %")
    if model is not None:
        faces = heldout_faces(model, args.n)
        t0 = time.perf_counter()
        transferred = model.transfer(faces)
        rendered = ap.rendered_avatars(model, faces, estimator)
        result["run"] = {"path": str(args.run), "step": model.step, "n_faces": len(faces),
                         "render_seconds": round(time.perf_counter() - t0, 1)}
        result["identity_retrieval"] = retrieval(model, faces, rendered, transferred)
        grid(faces, transferred, rendered, Path(args.out).with_suffix(".png"))
        say(json.dumps(result["identity_retrieval"], indent=1))
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
