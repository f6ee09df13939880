"""`dtn` command line: parse, call a library function, print. No logic lives here.

Errors the user can act on (DtnError) print as one line and exit 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .errors import DtnError, RunError

EPILOG = """examples:
  dtn run digits                       pretrain f, train the DTN, evaluate (synth-digits -> MNIST)
  dtn data info mnist                  splits, counts, checksums
  dtn data show synth-digits --n 64 --out sheet.png
  dtn transfer --run runs/digits --input in.npz --output out.npz
  dtn transfer --model bundle --input photos/ --output out/ --skip-bad
  dtn transfer --run runs/faces --input faces/ --output out/ --avatar-svg avatars/
  dtn select runs/digits && dtn export runs/digits --best --out bundle
  dtn report runs/digits               RUN/report.html: samples over training, curves, results
data: --data-dir DIR, else $DTN_DATA_DIR, else the user cache dir. Derived files: $DTN_CACHE_DIR."""


# ----------------------------------------------------------------------------- data
def cmd_data_list(args) -> int:
    from . import data

    for name in data.names():
        src = data.get(name) if name != "image-folder" else None
        desc = src.description if src else "any folder of images (pass the path, or folder:PATH)"
        print(f"{name:16s} {desc}")
    return 0


def cmd_data_info(args) -> int:
    from . import data

    src = data.get(args.name, args.skip_bad)
    root = data.data_root(args.data_dir)
    print(f"{src.name}: {src.description}")
    if src.licence:
        print(f"licence: {src.licence}")
    print(f"data dir: {root}" + ("  (generated; cached under " + str(data.cache_root()) + ")" if src.generated else ""))
    checks = src.check(root)
    for c in checks:
        print("  " + c.describe())
    bad = [c for c in checks if c.exists and not c.ok]
    if bad:
        raise DtnError(f"checksum mismatch for {bad[0].path}: expected md5 {bad[0].expected_md5}, "
                       f"got {bad[0].actual_md5}")
    for split in src.splits:
        s = src.load(split, root)
        hist = data.class_histogram(s.labels)
        names = s.class_names
        hist_text = " ".join(f"{names[k] if 0 <= k < len(names) else k}:{v}" for k, v in hist.items())
        print(f"  {split:6s} {len(s):7d} images  shape {tuple(s.images.shape[1:])}  "
              f"classes {len(hist)}  [{hist_text if len(hist) <= 12 else str(len(hist)) + ' classes'}]")
        for path, reason in s.extras.get("skipped", []):
            print(f"    skipped {path}: {reason}")
    return 0


def cmd_data_show(args) -> int:
    import numpy as np
    from PIL import Image, ImageDraw

    from . import data

    s = data.load(args.name, args.split, args.data_dir, args.skip_bad)
    n = min(args.n, len(s))
    idx = np.random.default_rng(args.seed).choice(len(s), size=n, replace=False)
    cols = int(np.ceil(np.sqrt(n)))
    h, w = s.images.shape[1:3]
    scale = max(1, 64 // max(h, w))
    cell_h, cell_w = h * scale + 12, w * scale + 4
    sheet = Image.new("RGB", (cols * cell_w, ((n + cols - 1) // cols) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(idx):
        img = s.images[i]
        pic = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).convert("RGB")
        pic = pic.resize((w * scale, h * scale), Image.NEAREST)
        x, y = (k % cols) * cell_w + 2, (k // cols) * cell_h
        sheet.paste(pic, (x, y))
        label = int(s.labels[i])
        text = s.class_names[label] if 0 <= label < len(s.class_names) else ("" if label < 0 else str(label))
        draw.text((x, y + h * scale), text[:12], fill=(0, 0, 0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}: {n} {s.dataset}/{args.split} images")
    return 0


def cmd_data_fetch(args) -> int:
    from . import data

    src = data.get(args.name)
    if src.fetch is None:
        raise DtnError(f"{src.name} cannot be downloaded automatically: {src.how_to_get}")
    root = data.data_root(args.data_dir)
    src.fetch(root)
    print(f"fetched {src.name} into {root / src.name}")
    return 0


# ----------------------------------------------------------------------------- training
def _config(args):
    from .config import apply_overrides, load_toml, parse_set_args, preset
    from .rundir import RunDir

    if getattr(args, "resume", False):
        # Resuming starts from the run's own config; --steps/--set may extend or change it.
        cfg = RunDir.open(Path(args.runs_dir) / (args.name or preset(args.preset).name)).config()
    else:
        cfg = preset(args.preset)
    if getattr(args, "config", None):
        cfg = load_toml(Path(args.config), cfg)
    overrides = parse_set_args(args.set or [])
    if getattr(args, "data_dir", None):
        overrides["data.data_dir"] = args.data_dir
    if getattr(args, "steps", None) is not None:
        overrides["train.steps"] = args.steps
    if getattr(args, "seed", None) is not None:
        overrides["train.seed"] = args.seed
    if getattr(args, "device", None):
        overrides["train.device"] = args.device
    data_overrides(args, overrides)
    return apply_overrides(cfg, overrides)


def data_overrides(args, overrides: dict) -> None:
    """--source/--target/--classes/--balanced onto data.*; a new source or target leaves the nets' channels
    and class count to the data (0: filled in by run.fill_from_data) unless --set gives them."""
    for flag, key, follows in (("source", "data.source", ("nets.source_channels", "nets.num_classes")),
                               ("target", "data.target", ("nets.target_channels",))):
        if getattr(args, flag, None):
            overrides[key] = getattr(args, flag)
            for net_key in follows:
                overrides.setdefault(net_key, 0)
    if getattr(args, "classes", None):
        overrides["data.classes"] = args.classes
        overrides.setdefault("nets.num_classes", 0)
    if getattr(args, "balanced", False):
        overrides["data.balanced"] = True


def cmd_run(args) -> int:
    from .config import diff_from_default, to_toml
    from .run import run_dtn

    cfg = _config(args)
    if args.dry_run:
        print(to_toml(cfg), end="")
        for key, (value, default) in diff_from_default(cfg).items():
            print(f"# {key} = {value!r} (default {default!r})")
        for key in ("source_channels", "target_channels", "num_classes"):
            if getattr(cfg.nets, key) == 0:
                print(f"# nets.{key} = 0: taken from the data when the run starts")
        return 0
    name = args.name or cfg.name
    run_dtn(cfg, Path(args.runs_dir), name, resume=args.resume, until=args.until, tensorboard=args.tensorboard)
    return 0


def cmd_ablate(args) -> int:
    from .ablation import ABLATIONS, PAPER_ROWS, run_ablations

    cfg = _config(args)
    names = args.rows.split(",") if args.rows else (list(PAPER_ROWS) if args.paper_only else list(ABLATIONS))
    out = Path(args.out) if args.out else None
    command = "dtn " + shlex.join(args.argv)     # the table names the command that made it, in full
    results = run_ablations(cfg, names, Path(args.runs_dir), out, command, collect=args.collect)
    if args.collect and not results:
        raise RunError(f"--collect: no finished row in {args.runs_dir} (rows {', '.join(names)}); "
                       f"run them first, or leave out --collect to train them here")
    for name, res in results.items():
        print(f"{name:18s} {100 * res['transfer_accuracy']:6.2f} %")
    return 0


def cmd_evaluate(args) -> int:
    from .apply import DEFAULT_METRICS, evaluate_run

    names = tuple(args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    result = evaluate_run(Path(args.run), args.checkpoint, names, args.adaptation_samples)
    print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    print(f"wrote {write_report(Path(args.run), Path(args.out) if args.out else None)}")
    return 0


def cmd_transfer(args) -> int:
    from .apply import transfer_path

    avatar_dir = Path(args.avatar_svg) if args.avatar_svg else None
    report = transfer_path(Path(args.run), Path(args.input), Path(args.output), args.device, args.batch_size,
                           args.skip_bad, args.keep_size,
                           on_skip=lambda name, why: print(f"skipped {name}: {why}", file=sys.stderr),
                           avatar_dir=avatar_dir, avatar_size=args.avatar_size,
                           say=lambda line: print(f"dtn: {line}", file=sys.stderr, flush=True))
    skipped = f"; skipped {len(report.skipped)} unreadable (listed above)" if report.skipped else ""
    print(f"wrote {report.output}: {report.written} images{skipped}")
    if avatar_dir:
        print(f"wrote {avatar_dir}: {report.written} editable avatars (<name>.svg, .png, .json)")
    return 0


def cmd_export(args) -> int:
    from .bundle import export_bundle

    manifest = export_bundle(Path(args.run), Path(args.out), args.checkpoint, args.best)
    print(f"wrote {args.out}: step {manifest['step']} ({manifest['checkpoint_choice']}), "
          f"{', '.join(manifest['files'])}, manifest.json")
    return 0


def cmd_select(args) -> int:
    from .select import select_run

    result = select_run(Path(args.run), args.samples, args.signals, args.device)
    names = list(result["signals"])
    print("step      " + " ".join(f"{n:>12s}" for n in names) + "   mean rank")
    for row in result["checkpoints"]:
        mark = "  <- chosen" if row["step"] == result["chosen_step"] else ""
        print(f"{row['step']:<9d} " + " ".join(f"{row[n]:12.4f}" for n in names) + f"   {row['score']:9.2f}{mark}")
    print(f"chosen step {result['chosen_step']} ({Path(args.run) / result['chosen_checkpoint']}); "
          f"written to {Path(args.run) / 'select.json'}")
    return 0


def _serve_module():
    """dtn.serve, or one line naming the extra to install when its web packages are missing."""
    try:
        from . import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("starlette", "uvicorn", "python_multipart", "multipart"):
            raise
        raise DtnError(f'dtn serve needs {exc.name}, which is not installed: pip install "dtn[serve]"') from None
    return serve


def cmd_serve(args) -> int:
    serve = _serve_module()
    limits = serve.Limits(round(args.max_upload_mb * serve.MB), args.workers, args.queue)
    sock = serve.bind_socket(args.host, args.port)
    if not serve.is_loopback(args.host):
        print(f"dtn: warning: serving on {args.host}, not loopback: anyone who can reach this machine can use "
              "the page (no authentication)", file=sys.stderr)
    app = serve.app_for(Path(args.run), args.device, limits, args.samples, args.threads)
    if app.state.serve.samples_note and args.samples:
        print(f"dtn: warning: {app.state.serve.samples_note}", file=sys.stderr)
    host, port = sock.getsockname()[:2]
    print(f"dtn serve: http://{f'[{host}]' if ':' in host else host}:{port}/  (Ctrl-C stops)", flush=True)
    serve.run_server(app, sock)
    return 0


# ----------------------------------------------------------------------------- parser
def _run_args(r: argparse.ArgumentParser, presets) -> None:
    r.add_argument("preset", nargs="?", default="digits", help=f"one of {', '.join(presets)} (default digits)")
    r.add_argument("--runs-dir", default="runs", help="parent of run directories (default runs/)")
    r.add_argument("--name", help="run directory name (default: the preset's name)")
    r.add_argument("--config", help="TOML file overriding the preset")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value")
    r.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    r.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    r.add_argument("--device", help="cpu, cuda, cuda:N (default auto)")
    r.add_argument("--data-dir", help="folder holding dataset folders (default $DTN_DATA_DIR)")
    r.add_argument("--source", metavar="NAME", help="source dataset (registered name or image folder; "
                   "`dtn data list`); channels and class count follow the data")
    r.add_argument("--target", metavar="NAME", help="target dataset (registered name or image folder); "
                   "channels follow the data")
    r.add_argument("--classes", metavar="A,B", help="keep only these classes in source and target, relabelled "
                   "in this order (e.g. trouser,pullover); the target is kept to them by its labels, a curation "
                   "results.json and the model card record")
    r.add_argument("--balanced", action="store_true", help="sample the source class-balanced")
    r.add_argument("--resume", action="store_true", help="continue the run in --runs-dir/--name")
    r.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write losses and metrics to RUN/tensorboard/ (needs: pip install tensorboard)")


def build_parser() -> argparse.ArgumentParser:
    from .ablation import ablation_rows_help
    from .config import PRESETS

    p = argparse.ArgumentParser(prog="dtn", description="Domain Transfer Networks: map images of one domain "
                                "into the style of another, keeping what they show.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("data", help="list, inspect, show and fetch datasets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    for name, fn, helptext in (("list", cmd_data_list, "registered datasets"),
                               ("info", cmd_data_info, "splits, counts, shape, class histogram, checksums"),
                               ("show", cmd_data_show, "write a contact sheet of samples with labels"),
                               ("fetch", cmd_data_fetch, "download the official files (verified)")):
        q = dsub.add_parser(name, help=helptext)
        q.set_defaults(fn=fn)
        q.add_argument("--data-dir", help="folder holding dataset folders (default $DTN_DATA_DIR)")
        if name != "list":
            q.add_argument("name", help="dataset name (see `dtn data list`) or a folder of images")
        if name in ("info", "show"):
            q.add_argument("--skip-bad", action="store_true",
                           help="in an image folder, skip unreadable files (each is listed) instead of stopping")
        if name == "show":
            q.add_argument("--n", type=int, default=64, help="number of images (default 64)")
            q.add_argument("--split", default="train", help="split (default train)")
            q.add_argument("--seed", type=int, default=0)
            q.add_argument("--out", default="sheet.png", help="output PNG (default sheet.png)")

    width = max(map(len, PRESETS)) + 1
    presets_text = "\n".join(f"  {name:{width}s} {fn.__doc__.strip().splitlines()[0]}" for name, fn in PRESETS.items())
    r = sub.add_parser("run", help="pretrain f, train the DTN, evaluate: one command",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run a preset end to end: pretrain f on the labelled source, train (or load\n"
                       "the cached) evaluation classifier, train the DTN, evaluate, write results.json.\n\n"
                       "presets:\n" + presets_text)
    r.set_defaults(fn=cmd_run)
    _run_args(r, PRESETS)

    for cmd, until, helptext in (("pretrain", "pretrain", "pretrain f (and the evaluation classifier) into a run dir"),
                                 ("train", "train", "pretrain if needed, then train the DTN (no final evaluation)")):
        q = sub.add_parser(cmd, help=helptext, description=helptext)
        q.set_defaults(fn=cmd_run, until=until)
        _run_args(q, PRESETS)
    r.set_defaults(until="evaluate")

    a = sub.add_parser("ablate", help="the paper's Table 1 ablations: one run per row, then a table",
                       description=ablation_rows_help())
    a.set_defaults(fn=cmd_ablate, name=None, resume=False, dry_run=False)
    a.add_argument("preset", nargs="?", default="digits")
    a.add_argument("--rows", help="comma-separated rows (default: all)")
    a.add_argument("--paper-only", action="store_true", help="only the six rows of the paper's Table 1")
    a.add_argument("--collect", action="store_true",
                   help="train nothing: gather the rows already finished in --runs-dir into the table "
                        "(e.g. rows run as separate jobs on a GPU); unfinished rows are listed as not yet run")
    a.add_argument("--out", help="write OUT.md and OUT.json (e.g. bench/results/ablation_digits)")
    a.add_argument("--runs-dir", default="runs")
    a.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    a.add_argument("--steps", type=int)
    a.add_argument("--seed", type=int)
    a.add_argument("--device")
    a.add_argument("--data-dir")
    a.add_argument("--config")

    e = sub.add_parser("evaluate", help="transfer accuracy, f-consistency and FLD of a run's checkpoint")
    e.set_defaults(fn=cmd_evaluate)
    e.add_argument("run", help="run directory")
    e.add_argument("--checkpoint", help="a step number, best (the step `dtn select` chose) or a weights file "
                   "(default: the latest)")
    e.add_argument("--metrics", help="comma-separated: transfer_accuracy, f_consistency, fld, source_baseline, "
                   "adaptation_accuracy (paper §5.1: LeNet trained on G(source train) with source labels, "
                   "tested on target test), identity_retrieval (held-out identities, e.g. faces: rank x among "
                   "all held-out x by f(G(x)); computed in place of f_consistency there) "
                   "(default: all but adaptation_accuracy)")
    e.add_argument("--adaptation-samples", type=int, default=20000,
                   help="source train images transferred for adaptation_accuracy (default 20000)")

    rp = sub.add_parser("report", help="write RUN/report.html: samples over training, curves, results, config",
                        description="One self-contained HTML page (images inlined, no network): the fixed source "
                        "batch transferred at each evaluation, loss and metric curves, ablations found beside the "
                        "run, results.json and the config. `dtn run` writes it at the end too.")
    rp.set_defaults(fn=cmd_report)
    rp.add_argument("run", help="run directory")
    rp.add_argument("--out", help="HTML file to write (default RUN/report.html)")

    t = sub.add_parser("transfer", help="apply a trained run or bundle to an .npz, an image file or a folder",
                       description="IN.npz (`images` uint8 (N,H,W,3) or (N,H,W)) -> OUT.npz; an image file -> "
                       "a PNG; a folder (recursive: png, jpg, jpeg, webp, bmp) -> PNGs under OUT with the same "
                       "relative names (IN/x/a.jpg -> OUT/x/a.png).")
    t.set_defaults(fn=cmd_transfer)
    t.add_argument("--run", "--model", dest="run", required=True, help="run directory or `dtn export` bundle")
    t.add_argument("--input", required=True, help=".npz with `images`, an image file, or a folder of images")
    t.add_argument("--output", required=True, help=".npz for an .npz input; a .png file or a folder otherwise")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto; cuda where "
                   "there is none is an error)")
    t.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    t.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable image files (each is named, then counted) instead of stopping")
    t.add_argument("--keep-size", action="store_true",
                   help="resize each output PNG back to its input's width and height (default: the model's size)")
    t.add_argument("--avatar-svg", metavar="DIR",
                   help="for a run whose target is avatars (`dtn run faces`): also turn each G(x) into a real, "
                   "editable DiceBear avatar: a parameter estimator reads its options (hair, eyes, mouth, "
                   "colours, ...) and DIR/<name>.svg, DIR/<name>.png and DIR/<name>.json (the named options) are "
                   "written (an .npz input names them 000000, 000001, ...). The estimator is trained once per "
                   "machine on the generated avatars and cached: a progress line says so and how long it will "
                   "take (4,000 steps; 0.65-0.8 s a step on one busy CPU core, so about 45-55 min there)")
    t.add_argument("--avatar-size", type=int, default=256, metavar="PX",
                   help="width and height of the --avatar-svg PNGs (default 256; the SVG scales freely)")
    t.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bar (also `dtn --quiet transfer ...`)")

    x = sub.add_parser("export", help="write a model bundle: weights, config, model card, manifest",
                       description="Bundle one checkpoint of a run for `DTN.load` / `dtn transfer --model`: "
                       "weights.safetensors (f and g), config.toml, model_card.md, manifest.json (sha256 of each).")
    x.set_defaults(fn=cmd_export)
    x.add_argument("run", help="run directory")
    x.add_argument("--out", required=True, help="bundle folder to create (must not hold files)")
    which = x.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint of this step (default: latest)")
    which.add_argument("--best", action="store_true", help="the checkpoint `dtn select` chose")

    s = sub.add_parser("select", help="choose the best checkpoint without target labels (writes select.json)",
                       description="Score every checkpoint on label-free signals, combine them by rank average, "
                       "write RUN/select.json and print the chosen step. Default signals: feature_fd (Fréchet "
                       "distance of f's mid-level features of G(source test) vs target test) and pixel_fd (the "
                       "same on 8x8 pooled pixels); also recorded: code_fd, f_agreement, d_real (see "
                       "src/dtn/select.py for why they are not in the default). The chosen checkpoint is never "
                       "pruned; `dtn export --best` uses it.")
    s.set_defaults(fn=cmd_select)
    s.add_argument("run", help="run directory")
    s.add_argument("--samples", type=int, default=2000, help="source and target test images used (default 2000)")
    s.add_argument("--signals", help="comma-separated signals to combine, of feature_fd, pixel_fd, code_fd, "
                   "f_agreement, d_real (default feature_fd,pixel_fd)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")

    w = sub.add_parser("serve", help="a local web page: upload an image, see and download its transfer",
                       description="Serve a page where an uploaded image (or a source test sample) is transferred "
                       "by a trained run or exported bundle. Needs: pip install \"dtn[serve]\".")
    w.set_defaults(fn=cmd_serve)
    w.add_argument("run", help="run directory or exported bundle")
    w.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    w.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    w.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    w.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413 (default 10)")
    w.add_argument("--queue", type=int, default=8, help="requests that may wait; more get 503 (default 8)")
    w.add_argument("--workers", type=int, default=1, help="transfers run at once (default 1)")
    w.add_argument("--threads", type=int, default=None, help="torch threads (default min(4, CPUs))")
    w.add_argument("--samples", type=int, default=8, help="source test samples offered on the page (default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # as given, also under `python -m dtn`
    if args.quiet:
        os.environ["DTN_QUIET"] = "1"
    try:
        return args.fn(args)
    except DtnError as exc:
        if args.debug:
            raise
        print(f"dtn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
