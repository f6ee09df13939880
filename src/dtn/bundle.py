"""Model bundles (`dtn export RUN --out DIR`): one folder with what `DTN.load` needs to transfer
images, and nothing that only training needs.

    DIR/
      weights.safetensors   f and g of one checkpoint (no D, no optimizer or RNG state: transfer never
                            uses them, and a smaller file is easier to ship)
      config.toml           the run's resolved config; `nets` rebuilds f and g (data.data_dir, a local
                            path, is cleared)
      model_card.md         data and its licences, metrics with the commands that produced them,
                            intended use and limits
      manifest.json         {"format": "dtn-model-bundle", "format_version": 1, "step": ...,
                             "files": {name: {"sha256": ..., "bytes": ...}}}

The manifest is written last, so an interrupted export has none and is refused. Loading checks the
format version and every listed file's sha256 before reading any of them: a changed weights file is
refused with one line instead of quietly producing different images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from . import __version__
from .config import Config, load_toml, to_toml
from .errors import DataError, RunError
from .rundir import RunDir, inference_weights
from .weights import atomic_write, load_tensors, save_tensors

BUNDLE_FORMAT = "dtn-model-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
CONFIG = "config.toml"
CARD = "model_card.md"
BUNDLE_MODULES = ("f", "g")   # G = g o f; D only judges during training


class BundleError(RunError):
    """A model bundle is incomplete, altered, or of another format version."""


def is_bundle(path: Path) -> bool:
    """A folder with a manifest or bundle weights and no run.json (a run directory has run.json)."""
    path = Path(path)
    return path.is_dir() and not (path / "run.json").exists() and \
        ((path / MANIFEST).exists() or (path / WEIGHTS).exists())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- export
def export_bundle(run_path: Path, out: Path, step: int | None = None, best: bool = False) -> dict:
    """Write a bundle of one checkpoint of a run: the latest, `step`, or (best) the one `dtn select`
    chose. Returns the manifest. Refuses an --out that already holds files."""
    run = RunDir.open(Path(run_path))
    step, ckpt = run.pick_checkpoint(step, best)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists and is not an empty folder; choose a new --out")
    tensors = {k: v for k, v in inference_weights(load_tensors(ckpt)).items() if k.split(".", 1)[0] in BUNDLE_MODULES}
    missing = [m for m in BUNDLE_MODULES if not any(k.startswith(m + ".") for k in tensors)]
    if missing:
        raise RunError(f"{ckpt}: holds no weights for {', '.join(missing)}")
    cfg = run.config()
    choice = "best (dtn select)" if best else ("latest" if step == run.checkpoints()[-1][0] else "asked for")
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, out / WEIGHTS, metadata={"step": str(step), "dtn_version": __version__})
    bundle_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=""))
    atomic_write(out / CONFIG, lambda tmp: Path(tmp).write_text(to_toml(bundle_cfg)))
    card = model_card(run, cfg, step, choice)
    atomic_write(out / CARD, lambda tmp: Path(tmp).write_text(card))
    manifest = {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "dtn_version": __version__,
        "step": step, "checkpoint_choice": choice, "run": run.path.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                  for name in (WEIGHTS, CONFIG, CARD)},
    }
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest


# ----------------------------------------------------------------------------- load
def read_manifest(path: Path) -> dict:
    """The manifest, after checking the format and version (no file contents are read here)."""
    if not (path / MANIFEST).is_file():
        raise BundleError(f"{path} is not a complete dtn model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / MANIFEST}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: {MANIFEST} does not describe a dtn model bundle")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path} is a bundle of format version {manifest.get('format_version')} (written by dtn "
                          f"{manifest.get('dtn_version', '?')}); this dtn {__version__} reads version {BUNDLE_VERSION}")
    return manifest


def verify_bundle(path: Path) -> dict:
    """Check every file the manifest lists (present, same sha256) and that the needed ones are listed."""
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: {MANIFEST} has no file list")
    for name in (WEIGHTS, CONFIG, CARD):
        if name not in files:
            raise BundleError(f"{path}: {MANIFEST} does not list {name}")
    for name, meta in files.items():
        if Path(name).name != name or name.startswith("."):
            raise BundleError(f"{path}: {MANIFEST} lists {name!r}, which is not a plain file name")
        if not (path / name).is_file():
            raise BundleError(f"bundle {path} is missing {name}")
        actual = sha256_file(path / name)
        if not isinstance(meta, dict) or actual != meta.get("sha256"):
            raise BundleError(f"bundle {path}: {name} does not match its sha256 in {MANIFEST} (the file was "
                              "changed or damaged); export the bundle again")
    return manifest


def read_bundle(path: Path) -> tuple[Config, dict[str, torch.Tensor], int | None]:
    """(config, f and g tensors, step) of a verified bundle."""
    path = Path(path)
    manifest = verify_bundle(path)
    cfg = load_toml(path / CONFIG)
    return cfg, load_tensors(path / WEIGHTS), manifest.get("step")


# ----------------------------------------------------------------------------- model card
def _dataset_facts(name: str) -> tuple[str, str]:
    """(description, licence) of a dataset name or folder, as the registry records them."""
    from . import data

    try:
        src = data.get(name)
    except DataError as exc:   # e.g. a folder that is not on this machine
        return f"`{name}` (not available here: {exc})", "unknown: check the images' own licence"
    return src.description, src.licence or "not recorded"


def _pct(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) else "-"


def _metrics_section(run: RunDir, step: int) -> list[str]:
    """Measured numbers with the command that produced each file."""
    lines = ["## Metrics", ""]
    if (run.path / "results.json").is_file():
        res = run.read_json("results.json")
        lines += [f"From `results.json`, written by `dtn run` at the end of training (step {res.get('steps')}, "
                  f"on all {res.get('n_source_test', '?')} source test images):", "",
                  "| metric | value | meaning |", "|---|---|---|",
                  f"| transfer accuracy | {_pct(res.get('transfer_accuracy'))} | the evaluation classifier "
                  "(trained on target labels) reads G(x) as x's label |",
                  f"| f-consistency | {_pct(res.get('f_consistency'))} | f's head on G(x) agrees with x's label |",
                  f"| FLD | {res.get('fld', float('nan')):.2f} | Fréchet distance to the target test set "
                  "on the evaluation classifier's features (lower is better) |",
                  f"| source baseline | {_pct(res.get('source_baseline_accuracy'))} | the evaluation "
                  "classifier on the raw source images |", ""]
        if res.get("uses_source_labels_in_dtn"):
            lines += ["L_CONST used source labels (`ce`) during DTN training: not unsupervised.", ""]
        if res.get("target_kept_to_classes_by_labels"):
            lines += [f"The target images were kept to the classes {', '.join(res['target_kept_to_classes_by_labels'])} "
                      "by their labels (`data.classes`): a curation that read target labels.", ""]
        if res.get("steps") != step:
            lines += [f"This bundle holds step {step}, not step {res.get('steps')}: those numbers describe "
                      "another checkpoint.", ""]
    else:
        lines += ["No `results.json`: the run was not evaluated (`dtn run` writes it at the end).", ""]
    where = f"{run.path.parent.name}/{run.path.name}"
    lines += [f"Measure this checkpoint: `dtn evaluate {where} --checkpoint "
              f"{where}/checkpoints/step-{step:06d}.safetensors`.", ""]
    if (run.path / "select.json").is_file():
        sel = run.read_json("select.json")
        row = next((r for r in sel.get("checkpoints", []) if r.get("step") == step), None)
        if row:
            signals = ", ".join(f"{k} {row[k]:.4g}" for k in sel.get("recorded", sel.get("signals", {}))
                                if isinstance(row.get(k), float))
            lines += [f"Label-free selection signals of this step (`dtn select {where}`, "
                      f"chosen step {sel.get('chosen_step')}): {signals}.", ""]
    return lines


def target_labels_use(cfg: Config) -> str:
    """Where a run read the target's labels (the model card's data table)."""
    if cfg.data.classes:
        return "labels kept it to the classes asked (data.classes); none in training; labels in evaluation"
    return "no labels in training; labels only in evaluation"


def model_card(run: RunDir, cfg: Config, step: int, choice: str) -> str:
    """model_card.md: what the model does, on which data under which licences, how well, and its limits."""
    n = cfg.nets
    (src_desc, src_lic), (tgt_desc, tgt_lic) = _dataset_facts(cfg.data.source), _dataset_facts(cfg.data.target)
    restricted = [name for name, lic in ((cfg.data.source, src_lic), (cfg.data.target, tgt_lic))
                  if "non-commercial" in lic.lower()]
    f_facts = run.read_json("f.json") if (run.path / "f.json").is_file() else {}
    lines = [
        f"# dtn model: {cfg.data.source} → {cfg.data.target}", "",
        f"A Domain Transfer Network (Taigman, Polyak, Wolf, ICLR 2017), G = g ∘ f, exported by dtn {__version__} "
        f"from run `{run.path.name}`, checkpoint step {step} ({choice}).", "",
        "```python", "from dtn import DTN", "model = DTN.load(\"this-folder\")",
        "out = model.transfer(images)   # uint8 numpy in, uint8 numpy out", "```", "",
        f"Input: uint8 images of any size, resized to {n.image_size}×{n.image_size} with {n.source_channels} "
        f"channel(s). Output: {n.image_size}×{n.image_size} images with {n.target_channels} channel(s) in the "
        f"style of {cfg.data.target}.", "",
        "## Data", "",
        "| role | dataset | description | licence |", "|---|---|---|---|",
        f"| source (labels pretrain f) | `{cfg.data.source}` | {src_desc} | {src_lic} |",
        f"| target ({target_labels_use(cfg)}) | `{cfg.data.target}` | {tgt_desc} | {tgt_lic} |",
        "",
    ]
    if f_facts:
        lines += [f"f (pretrained on the source labels) reads {_pct(f_facts.get('source_test_accuracy'))} of the "
                  f"source test set and {_pct(f_facts.get('target_test_accuracy'))} of the target test set.", ""]
    lines += _metrics_section(run, step)
    lines += [
        "## Licence", "",
        "dtn's code is MIT. These weights were trained on the data above and its terms apply to them; the "
        "bundle contains no training images.",
        (f"Use: non-commercial research only, because {', '.join(restricted)} allow(s) only that." if restricted
         else "Check the dataset licences above before any redistribution."), "",
        "## Intended use and limits", "",
        f"- Intended: research on and demonstrations of unsupervised domain transfer; turning images that look "
        f"like `{cfg.data.source}` into `{cfg.data.target}`-style images; making labelled target-style training "
        "data for domain adaptation experiments (paper §5.1).",
        f"- Inputs unlike the source domain give unpredictable outputs; everything is resized to "
        f"{n.image_size}×{n.image_size} first.",
        "- G can change what an image shows: the transfer accuracy above is the share of outputs whose class "
        "survived; the rest show something else.",
        "- Outputs are synthetic: do not present them as real target samples or use them as evidence about the "
        "input. With face data, do not use the model to identify or profile people.",
        "", "## Reproduce", "",
        f"`dtn run --config config.toml --name {run.path.name}` retrains from this bundle's config "
        "(set `data.data_dir` or `$DTN_DATA_DIR`), then "
        f"`dtn export runs/{run.path.name} --checkpoint {step} --out BUNDLE`.", "",
    ]
    return "\n".join(lines)
