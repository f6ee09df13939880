"""Several digits recipes side by side, evaluated every K steps: the tool behind the recipe choices.

    python bench/recipe_sweep.py [--steps 4000] [--eval-every 250] [--only NAME,...] [--out FILE]

Each named recipe is the `digits` preset plus overrides. All recipes share one pretrained f (seed 0),
one evaluation LeNet and the same fixed evaluation subset (2,000 synth-digits test images), so the
curves differ only by the recipe. At the end each recipe is evaluated on the full synth test split.
Meant for a GPU (a 4,000-step recipe takes about a minute on an H200); on the 2-core CPU use --steps
1000 and one recipe at a time. Writes JSON incrementally, so a stopped sweep keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dtn.config import apply_overrides, preset
from dtn.pretrain import accuracy, eval_classifier, pretrain_f
from dtn.run import autocast_dtype, evaluate, load_domains
from dtn.train import Trainer, pick_device

RECIPES: dict[str, dict[str, str]] = {
    "default": {},
    "no-tv": {"loss.gamma": "0"},
    "batch256": {"train.batch_size": "256"},
    "paper-nets": {"nets.g_width": "512", "nets.d_width": "128"},
    "alpha15": {"loss.alpha": "15"},
    "lr-half": {"optim.lr_g": "1.5e-4", "optim.lr_d": "1e-4"},
}


def run_recipe(name: str, overrides: dict, steps: int, eval_every: int, shared: dict, device) -> dict:
    cfg = apply_overrides(preset("digits"), {**overrides, "train.steps": str(steps)})
    torch.manual_seed(0)
    trainer = Trainer(cfg, shared["f"], shared["domains"].source_train, shared["domains"].target_train, device)
    curve, t0 = [], time.time()
    for _ in range(steps):
        out = trainer.train_step()
        if trainer.step % eval_every == 0 or trainer.step == steps:
            m = evaluate(trainer, shared["clf"], shared["eval_s"], shared["eval_t"], ("transfer_accuracy", "f_consistency"))
            row = {"step": trainer.step, "seconds": round(time.time() - t0, 1), **{k: round(float(v), 4) for k, v in m.items() if isinstance(v, float)},
                   **{k: round(v, 4) for k, v in out.items().items()}}
            curve.append(row)
            print(name, row, flush=True)
    final = evaluate(trainer, shared["clf"], shared["domains"].source_test, shared["domains"].target_test,
                     ("transfer_accuracy", "f_consistency"))
    return {"overrides": overrides, "steps": steps, "curve": curve,
            "final_full_test": {k: float(v) for k, v in final.items() if isinstance(v, float)},
            "best_on_subset": max(curve, key=lambda r: r["transfer_accuracy"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    p.add_argument("--f-steps", type=int, default=0, help="f pretraining steps (default: the preset's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "recipe_sweep.json"))
    args = p.parse_args()
    device = pick_device(args.device)
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    cfg = preset("digits")
    if args.f_steps:
        cfg = apply_overrides(cfg, {"pretrain.f_steps": str(args.f_steps)})
    t0 = time.time()
    domains = load_domains(cfg)
    f = pretrain_f(cfg.nets, cfg.pretrain, domains.source_train.to(device), 0, autocast_dtype(cfg)).eval()
    clf, _ = eval_classifier(cfg.pretrain, domains.target_train.to(device), autocast_dtype=autocast_dtype(cfg))
    clf.eval()
    result = {"command": "python bench/recipe_sweep.py " + " ".join(sys.argv[1:]),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "f_on_synth_test": accuracy(f.classify, domains.source_test.subset(5000).to(device)),
              "f_on_mnist_test": accuracy(f.classify, domains.target_test.to(device)),
              "setup_seconds": round(time.time() - t0, 1), "recipes": {}}
    print({k: v for k, v in result.items() if k != "recipes"}, flush=True)
    shared = {"f": f, "clf": clf, "domains": domains,
              "eval_s": domains.source_test.subset(2000, seed=2), "eval_t": domains.target_test.subset(2000, seed=2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        result["recipes"][name] = run_recipe(name, RECIPES[name], args.steps, args.eval_every, shared, device)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
