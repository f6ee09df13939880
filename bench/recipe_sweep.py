"""Several digits recipes side by side over several seeds, evaluated every K steps: the tool behind the
recipe choices.

    python bench/recipe_sweep.py [--only NAME,...] [--seeds 0,1,2] [--budget-seconds S] [--out FILE]

A recipe is a preset plus overrides (train.steps included). Each (recipe, seed) pair pretrains f with
that seed as `dtn run` does (f is cached per seed and f recipe, so recipes that share an f recipe share
it), trains the DTN with the same seed, evaluates every --eval-every steps on a fixed 2,000-image subset
of the synth-digits test split, and at the end on the whole test split. One evaluation LeNet for all.
Pairs run seed-major (every recipe's first seed, then the second, ...), and no new pair starts after
--budget-seconds, so a sweep cut short still compares every recipe. Meant for a GPU (a 1,000-step
graphed run takes about 10 s on an H200); on the 2-core CPU one pair takes 10-15 minutes.
Writes JSON after every pair: per recipe the per-seed final accuracy, the mean and the spread.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dtn.config import apply_overrides, preset
from dtn.pretrain import accuracy, eval_classifier
from dtn.run import autocast_dtype, evaluate, load_domains, train_f
from dtn.train import Trainer, pick_device

# name -> (preset, overrides)
RECIPES: dict[str, tuple[str, dict[str, str]]] = {
    "faithful": ("digits-faithful", {}),
    "digits": ("digits", {}),
    "faithful+dcond": ("digits-faithful", {"nets.d_conditional": "true"}),
    "adapted": ("digits-faithful", {"pretrain.f_self_train": "3"}),
    "adapted+dcond": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true"}),
    "adapted+dcond-2k": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                             "train.steps": "2000"}),
    "adapted-2k": ("digits-faithful", {"pretrain.f_self_train": "3", "train.steps": "2000"}),
    "adapted+dcond+d128": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                               "nets.d_width": "128"}),
    "adapted+dcond+a100": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                               "loss.alpha": "100"}),
    "faithful+dcond-2k": ("digits-faithful", {"nets.d_conditional": "true", "train.steps": "2000"}),
    "adapted+dcond+mse+kl": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                                 "loss.const_distance": "mse+kl"}),
    "adapted+dcond+kl": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                             "loss.const_distance": "kl"}),
    "adapted+dcond+a25": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                              "loss.alpha": "25"}),
    "adapted+dcond+d128-2k": ("digits-faithful", {"pretrain.f_self_train": "3", "nets.d_conditional": "true",
                                                  "nets.d_width": "128", "train.steps": "2000"}),
    "faithful+dcond+mse+kl": ("digits-faithful", {"nets.d_conditional": "true",
                                                  "loss.const_distance": "mse+kl"}),
    # older single-knob comparisons on digits-faithful
    "no-tv": ("digits-faithful", {"loss.gamma": "0"}),
    "batch256": ("digits-faithful", {"train.batch_size": "256"}),
    "paper-nets": ("digits-faithful", {"nets.g_width": "512", "nets.d_width": "128"}),
    "alpha15": ("digits-faithful", {"loss.alpha": "15"}),
    "lr-half": ("digits-faithful", {"optim.lr_g": "1.5e-4", "optim.lr_d": "1e-4"}),
}
DEFAULT = ["faithful", "adapted", "faithful+dcond", "adapted+dcond", "adapted+dcond-2k", "adapted-2k",
           "adapted+dcond+d128"]
F_SECTIONS = ("nets", "pretrain", "data")


def recipe_config(name: str, seed: int, device_name: str, common: dict[str, str] | None = None):
    preset_name, overrides = RECIPES[name]
    return apply_overrides(preset(preset_name), {**(common or {}), **overrides, "train.seed": str(seed),
                                                 "train.device": device_name})


def f_key(cfg) -> str:
    """What f depends on: its nets, its pretraining recipe, the data and the seed (not the DTN's options)."""
    parts = {s: getattr(cfg, s) for s in F_SECTIONS}
    parts["nets"] = {k: v for k, v in vars(cfg.nets).items() if not k.startswith("d_")}
    return json.dumps({k: str(v) for k, v in parts.items()}, sort_keys=True) + f"seed={cfg.train.seed}"


def run_pair(cfg, f, shared: dict, eval_every: int, device) -> dict:
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, f, shared["domains"].source_train, shared["domains"].target_train, device)
    curve, t0 = [], time.time()
    for _ in range(cfg.train.steps):
        out = trainer.train_step()
        if trainer.step % eval_every == 0 or trainer.step == cfg.train.steps:
            m = evaluate(trainer, shared["clf"], shared["eval_s"], shared["eval_t"], ("transfer_accuracy", "f_consistency"))
            row = {"step": trainer.step, "seconds": round(time.time() - t0, 1),
                   **{k: round(float(v), 4) for k, v in m.items() if isinstance(v, float)},
                   **{k: round(v, 4) for k, v in out.items().items()}}
            curve.append(row)
    final = evaluate(trainer, shared["clf"], shared["domains"].source_test, shared["domains"].target_test,
                     ("transfer_accuracy", "f_consistency"))
    per_class = [round(row[i] / max(1, sum(row)), 4) for i, row in enumerate(final["confusion"])]
    return {"train_seconds": round(time.time() - t0, 1), "curve": curve,
            "final_full_test": {"transfer_accuracy": round(final["transfer_accuracy"], 4),
                                "f_consistency": round(final["f_consistency"], 4), "per_class_accuracy": per_class},
            "best_on_subset": max(curve, key=lambda r: r["transfer_accuracy"])}


def summarise(recipe: dict) -> dict:
    acc = [r["final_full_test"]["transfer_accuracy"] for r in recipe["seeds"].values()]
    return {"n_seeds": len(acc), "mean": round(statistics.mean(acc), 4), "min": min(acc), "max": max(acc),
            "spread_points": round(100 * (max(acc) - min(acc)), 2), "goal_90_mean_met": statistics.mean(acc) >= 0.90}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma-separated recipe names (default: {','.join(DEFAULT)}; "
                                              f"all: {','.join(RECIPES)})")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--budget-seconds", type=float, default=float("inf"), help="start no new pair after this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every recipe (a recipe's own overrides win), e.g. train.threads=2")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "recipe_sweep.json"))
    args = p.parse_args()
    device = pick_device(args.device)
    names = [n for n in args.only.split(",") if n] or DEFAULT
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    common = dict(kv.split("=", 1) for kv in args.set)
    t_start = time.time()
    base = recipe_config(names[0], seeds[0], str(device), common)
    domains = load_domains(base)
    clf, _ = eval_classifier(base.pretrain, domains.target_train.to(device), autocast_dtype=autocast_dtype(base))
    clf.eval()
    shared = {"clf": clf, "domains": domains,
              "eval_s": domains.source_test.subset(2000, seed=2), "eval_t": domains.target_test.subset(2000, seed=2)}
    result = {"command": "python bench/recipe_sweep.py " + " ".join(sys.argv[1:]),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "setup_seconds": round(time.time() - t_start, 1),
              "recipes": {n: {"preset": RECIPES[n][0], "overrides": RECIPES[n][1], "seeds": {}} for n in names},
              "f": {}, "skipped_for_budget": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fs: dict[str, torch.nn.Module] = {}
    for seed in seeds:
        for name in names:
            if time.time() - t_start > args.budget_seconds:
                result["skipped_for_budget"].append(f"{name} seed {seed}")
                continue
            cfg = recipe_config(name, seed, str(device), common)
            key = f_key(cfg)
            if key not in fs:
                t0 = time.time()
                f, facts = train_f(cfg, domains, device)
                fs[key] = f.eval()
                result["f"][f"{cfg.name} seed {seed}"] = {
                    "seconds": round(time.time() - t0, 1), "self_training_rounds": len(facts),
                    "on_source_test": round(accuracy(f.classify, domains.source_test.subset(5000).to(device)), 4),
                    "on_target_test": round(accuracy(f.classify, domains.target_test.to(device)), 4)}
            row = run_pair(cfg, copy.deepcopy(fs[key]), shared, args.eval_every, device)
            result["recipes"][name]["seeds"][str(seed)] = row
            result["recipes"][name]["summary"] = summarise(result["recipes"][name])
            print(name, seed, row["final_full_test"]["transfer_accuracy"], "best subset",
                  row["best_on_subset"]["step"], row["best_on_subset"]["transfer_accuracy"], f"{row['train_seconds']}s",
                  flush=True)
            result["elapsed_seconds"] = round(time.time() - t_start, 1)
            out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({n: r.get("summary") for n, r in result["recipes"].items()}, indent=1))


if __name__ == "__main__":
    main()
