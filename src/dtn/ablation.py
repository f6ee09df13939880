"""The paper's Table 1 ablations (and a few more), as named config overrides, and the table they make.

Each row is one `dtn run` with the preset plus the row's overrides, in `<runs-dir>/<prefix>-<row>`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, apply_overrides, diff_configs
from .errors import ConfigError, RunError


@dataclass(frozen=True)
class Ablation:
    name: str
    overrides: dict[str, str]
    paper: float | None        # the paper's SVHN -> MNIST accuracy (%) for this row, when it has one
    note: str = ""


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("full", {}, 90.66),
    Ablation("no-tid", {"loss.beta": "0"}, 88.40),
    Ablation("no-const", {"loss.alpha": "0"}, 74.55),
    # L_READ's reader learns from a pretrained f's readings: without one, these rows turn it off too
    Ablation("g-without-f", {"train.f_mode": "joint", "loss.target_reader": "0"}, 36.90,
             "f's architecture trained with g from scratch"),
    Ablation("no-gan", {"loss.gan": "false"}, 34.70),
    Ablation("no-const-no-tid", {"loss.alpha": "0", "loss.beta": "0"}, 5.28),
    Ablation("no-pretraining", {"train.f_mode": "random", "loss.target_reader": "0"}, None, "f random and frozen"),
    Ablation("cosine", {"loss.const_distance": "cosine"}, None),
    Ablation("mse+cosine", {"loss.const_distance": "mse+cosine"}, None),
    Ablation("ce", {"loss.const_distance": "ce"}, None, "uses source labels during DTN training"),
    Ablation("binary-d", {"loss.discriminator": "binary", "nets.d_classes": "2"}, None),
    # the digits preset's own deviations, one at a time (no-op rows on presets that do not use them)
    Ablation("code-mse", {"loss.const_distance": "mse"}, None, "L_CONST on f's code, not its class distribution"),
    Ablation("unconditional-d", {"nets.d_conditional": "false"}, None, "D not told f's class"),
    Ablation("no-const-augment", {"loss.const_augment": "false"}, None, "f reads G(x) as drawn in L_CONST"),
    Ablation("no-g-ema", {"train.g_ema": "0"}, None, "evaluated from g itself, not its moving average"),
    Ablation("no-class-layout", {"loss.class_layout": "0"}, None, "no L_LAYOUT"),
    Ablation("no-target-reader", {"loss.target_reader": "0"}, None, "no L_READ"),
    Ablation("unrefined-reader", {"pretrain.reader_refine_steps": "0"}, None,
             "L_READ's reader not refined on all target images"),
    Ablation("shift-reader", {"pretrain.reader_augment": "shift"}, None,
             "L_READ's reader taught neither specks nor warped strokes"),
    Ablation("speckle-reader", {"pretrain.reader_augment": "speckle"}, None,
             "L_READ's reader taught specks but not warped strokes"),
    Ablation("reader-ensemble", {"pretrain.reader_augment": "speckle,elastic"}, None,
             "two L_READ readers (speckle-, warp-taught), read as one"),
    Ablation("f-steps-1500", {"pretrain.f_steps": "1500"}, None, "f pretrained 1,500 steps, not 4,000"),
    Ablation("self-training", {"pretrain.f_self_train": "3"}, None, "f self-trained on target images it labels"),
)}

PAPER_ROWS = ("full", "no-tid", "no-const", "g-without-f", "no-gan", "no-const-no-tid")
#: the first row that toggles one of the digits preset's own deviations (the rows after it do too)
FIRST_DEVIATION_ROW = "code-mse"


def ablation_rows_help() -> str:
    """`dtn ablate --help`: every row, from ABLATIONS itself so the help cannot drift from the rows."""
    names = list(ABLATIONS)
    cut = names.index(FIRST_DEVIATION_ROW)
    label = {n: f"{n} ({ABLATIONS[n].note})" if n == "ce" else n for n in names}
    return (f"Rows: {', '.join(label[n] for n in names[:cut])}; and the digits preset's own deviations, "
            f"one at a time: {', '.join(names[cut:])}. The paper's Table 1 rows: {', '.join(PAPER_ROWS)}.")


def ablation_config(base: Config, name: str) -> Config:
    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}")
    return apply_overrides(base, {**ABLATIONS[name].overrides, "name": f"{base.name}-{name}"})


TABLE_COLUMNS = ("ablation", "transfer acc. (ours)", "paper (SVHN)", "FLD", "f-consistency", "overrides")


def table_rows(results: dict[str, dict]) -> list[tuple[str, ...]]:
    """One row of formatted cells (TABLE_COLUMNS) per ablation: the Markdown table and the HTML report share them."""
    rows = []
    for name, res in results.items():
        a = ABLATIONS[name]
        paper = f"{a.paper:.2f} %" if a.paper is not None else "–"
        over = ", ".join(f"{k}={v}" for k, v in a.overrides.items()) or "(preset)"
        note = f" ({a.note})" if a.note else ""
        rows.append((f"{name}{note}", f"{100 * res['transfer_accuracy']:.2f} %", paper,
                     f"{res.get('fld', float('nan')):.2f}", f"{100 * res.get('f_consistency', float('nan')):.1f} %", over))
    return rows


def ablation_table(results: dict[str, dict], command: str) -> str:
    """Markdown: row, our accuracy, the paper's, FLD, f-consistency, the overrides."""
    lines = [f"Produced by `{command}`.", "", "| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    places = sorted({res["trained_on"] for res in results.values() if res.get("trained_on")})
    if places:
        lines += ["", "Trained on: " + "; ".join(places) + "."]
    return "\n".join(lines) + "\n"


def find_ablation_results(run_dir: Path) -> tuple[dict[str, dict], str] | None:
    """Ablation results near a run, for its report: (rows, where they came from, relative to the run), or None.

    First an `ablation*.json` written by `dtn ablate --out` in the run dir or its parent; else the
    finished sibling runs that `dtn ablate` leaves in its --runs-dir, named `<preset>-<row>` (the run's
    own name, less any row suffix, is the prefix: runs/ablate/digits-full finds runs/ablate/digits-*).
    """
    for folder in (run_dir, run_dir.parent):
        for path in sorted(folder.glob("ablation*.json")):
            payload = _read_json(path)
            if isinstance(payload, dict) and isinstance(payload.get("rows"), dict):
                rows = _known_rows(payload["rows"])
                if rows:
                    return rows, f"{os.path.relpath(path, run_dir)}, made by `{payload.get('command', 'dtn ablate')}`"
    prefix = next((run_dir.name[:-len(row) - 1] for row in sorted(ABLATIONS, key=len, reverse=True)
                   if run_dir.name.endswith("-" + row)), run_dir.name)
    found = {row: run_dir.parent / f"{prefix}-{row}" / "results.json" for row in ABLATIONS}
    rows = _known_rows({row: _read_json(path) for row, path in found.items() if path.is_file()})
    return (rows, f"the finished runs ../{prefix}-<row>/results.json") if len(rows) > 1 else None


def _known_rows(rows: dict) -> dict[str, dict]:
    """Rows this dtn knows, with a transfer accuracy (a newer dtn's rows or a partial result are left out)."""
    return {n: r for n, r in rows.items() if n in ABLATIONS and isinstance(r, dict) and "transfer_accuracy" in r}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable ablation results ({exc})") from None


#: settings a resumed row may change: where and how fast it runs, and how often it keeps checkpoints
RESUMABLE_CHANGES = frozenset({"train.threads", "train.device", "data.data_dir", "train.ckpt_every", "train.keep_last"})


def check_same_config(run_path: Path, cfg: Config) -> None:
    """A row found in --runs-dir is resumed only if it was trained with this row's config: after a preset
    changes, resuming would silently finish (or re-evaluate) the old model under the new name."""
    from .rundir import RunDir

    stored = RunDir.open(run_path).config()
    changed = {k: v for k, v in diff_configs(stored, cfg).items()
               if k not in RESUMABLE_CHANGES and not (k.startswith("nets.") and v[1] == 0)   # 0: filled from data
               and not (k == "train.precision" and v[1] == "auto")}                       # resolved when it ran
    if changed:
        listed = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in sorted(changed.items()))
        raise RunError(f"{run_path} was trained with another config ({listed}); choose another --runs-dir "
                       f"or remove it to train this row again")


def finished_results(run_path: Path, cfg: Config) -> dict | None:
    """A row that already ran to the end: its results, so that resuming an ablation trains only the rows
    left instead of re-evaluating every finished one (minutes each on a CPU)."""
    meta, results_path = _read_json(run_path / "run.json"), run_path / "results.json"
    if not isinstance(meta, dict) or meta.get("status") != "done" or not results_path.is_file():
        return None
    results = _read_json(results_path)
    return results if isinstance(results, dict) and results.get("steps") == cfg.train.steps else None


def run_ablations(base: Config, names: list[str], runs_dir: Path, out_prefix: Path | None, command: str,
                  collect: bool = False) -> dict:
    """Run (or resume) each row; with `out_prefix`, the table is rewritten after every row, so an
    interrupted ablation still leaves the rows it finished (rerunning the command resumes the rest).
    `collect`: train nothing, only gather the rows already finished (each row run as its own job, side by
    side on one GPU, then one table); the others are listed as not yet run."""
    from .run import LOG, run_dtn

    results, pending = {}, []
    for name in names:
        cfg = ablation_config(base, name)
        resume = (runs_dir / cfg.name / "config.toml").exists()
        if resume:
            check_same_config(runs_dir / cfg.name, cfg)
        finished = finished_results(runs_dir / cfg.name, cfg) if resume else None
        if finished is not None:
            LOG(f"{runs_dir / cfg.name}: finished at step {cfg.train.steps}, its results.json is reused")
            results[name] = finished
        elif collect:
            why = f"not finished at step {cfg.train.steps}" if resume else "no such run"
            LOG(f"{runs_dir / cfg.name}: {why}; --collect leaves it out")
            pending.append(name)
        else:
            results[name] = run_dtn(cfg, runs_dir, cfg.name, resume=resume)
        if out_prefix is not None:
            left = pending + [n for n in names if n not in results and n not in pending]
            write_ablation_results(results, out_prefix, command, pending=left)
    return results


def write_ablation_results(results: dict[str, dict], out_prefix: Path, command: str, pending: list[str]) -> None:
    """OUT.md (the table, with the rows still to run named under it) and OUT.json."""
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    table = ablation_table(results, command)
    if pending:
        table += f"\nNot yet run: {', '.join(pending)} (rerun the command to resume).\n"
    out_prefix.with_suffix(".md").write_text(table)
    payload = {"command": command, "rows": {n: {k: v for k, v in r.items() if k != "confusion"}
                                            for n, r in results.items()},
               "paper": {n: ABLATIONS[n].paper for n in results}, "pending": pending}
    out_prefix.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
