"""A run directory: everything one run wrote, enough to resume it, evaluate it, or apply it.

    <runs-dir>/<name>/
      config.toml            resolved config (written before step 0)
      run.json               dtn version, format version, status
      metrics.csv            one row per log/eval step (losses, accuracy, FLD, ...)
      f.safetensors          the pretrained f (frozen during DTN training)
      checkpoints/step-000500.safetensors   f, g, D weights (safetensors: no pickle)
      checkpoints/step-000500.state.pt      optimizers, step, RNG states (loaded weights_only)
      samples/step-000500.png               the fixed source batch transferred at that step
      results.json           final metrics
      select.json            `dtn select`: label-free signals per checkpoint and the chosen step
                             (that checkpoint is never pruned: keep-last-N plus keep-best)
      report.html            `dtn report`: one self-contained page (sweep, curves, numbers, config)
      tensorboard/           the metrics.csv rows as TensorBoard scalars (only with --tensorboard)
      .lock                  held (flock) by the process writing the run, so that a second one is refused
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import Config, load_toml, to_toml
from .errors import RunError
from .weights import atomic_write, load_tensors, save_tensors

FORMAT_VERSION = 1
_CKPT = re.compile(r"step-(\d+)\.safetensors$")
# metrics.csv columns by what they measure (the loss names are train.py's `parts` keys); any other
# column is an evaluation metric (transfer_accuracy, f_consistency, fld, ...).
TIME_COLUMNS = ("step", "seconds")
D_LOSS_COLUMNS = ("d",)
G_LOSS_COLUMNS = ("gang", "const", "tid", "tv", "g_total")


def column_kind(name: str) -> str:
    """"time", "d_loss", "g_loss" or "metric": how the report and TensorBoard group a metrics.csv column."""
    if name in TIME_COLUMNS:
        return "time"
    if name in D_LOSS_COLUMNS:
        return "d_loss"
    return "g_loss" if name in G_LOSS_COLUMNS else "metric"


def make_run_directory(path: Path, *subfolders: str) -> None:
    """mkdir the run directory (and its subfolders) or one RunError naming it: the one wording for
    `claim` and `RunDir.create`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        for sub in subfolders:
            (path / sub).mkdir(exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create run directory {path}: {exc.strerror or exc}") from None


@contextmanager
def claim(path: Path, enabled: bool = True):
    """Hold `path` as its one writer while the block runs. Two processes given one run directory (two
    bench runs started in the same second took the same name) would both take over a fresh run and then
    overwrite each other's checkpoints and interleave metrics.csv; the second is refused instead. The
    lock is the kernel's (flock), so a killed process leaves nothing to clean up."""
    if not enabled:
        yield
        return
    import fcntl   # POSIX; dtn runs on Linux and macOS

    path = Path(path)
    make_run_directory(path)
    try:
        handle = open(path / ".lock", "a")
    except OSError as exc:
        raise RunError(f"cannot write {path / '.lock'}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{path} is being written by another dtn process (it holds {path / '.lock'}); "
                           f"wait for it to finish or choose another --name") from None
        yield


@dataclass
class RunDir:
    path: Path
    # Optional mirror of every metrics.csv row (e.g. tensorboard_log.TensorBoardLog): anything with write(row).
    scalar_log: object | None = None

    # ------------------------------------------------------------------ creation and checks
    @classmethod
    def create(cls, path: Path, cfg: Config, resume: bool = False) -> "RunDir":
        run = cls(Path(path))
        fresh = run.config_path.exists() and not resume and run._untrained()
        if fresh:
            resume = False  # nothing trained there yet (e.g. after `dtn pretrain`): take it over
        elif run.config_path.exists() and not resume:
            raise RunError(f"{run.path} already holds a run; pass --resume to continue it or choose another --name")
        make_run_directory(run.path, "checkpoints", "samples")
        run.remove_stale_temp_files()
        if not resume:
            run.write_text("config.toml", to_toml(cfg))
            run.write_json("run.json", {"dtn_version": __version__, "format": FORMAT_VERSION, "status": "created"})
        return run

    def _untrained(self) -> bool:
        """Nothing trained here yet: created or pretrained, or killed between config.toml and run.json."""
        if not (self.path / "run.json").exists():
            return not self.checkpoints()
        return self._status() in ("created", "pretrained")

    def remove_stale_temp_files(self) -> None:
        """Delete the temp files of atomic writes that a killed process left (`NAME.XXXXXXXX.tmp`):
        they were never renamed, so nothing refers to them. Only called by the one process that is
        (re)starting this run."""
        for folder in (self.path, self.path / "checkpoints", self.path / "samples"):
            for tmp in folder.glob("*.tmp"):
                tmp.unlink(missing_ok=True)

    def _status(self) -> str:
        try:
            return json.loads((self.path / "run.json").read_text()).get("status", "")
        except (OSError, json.JSONDecodeError):
            return ""

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(Path(path))
        if not run.path.is_dir():
            raise RunError(f"run directory {run.path} does not exist")
        if not run.config_path.is_file() or not (run.path / "run.json").is_file():
            raise RunError(f"{run.path} is not a complete dtn run (config.toml or run.json missing)")
        meta = run.read_json("run.json")
        if meta.get("format") != FORMAT_VERSION:
            raise RunError(f"{run.path} was written by dtn {meta.get('dtn_version', '?')} (run format "
                           f"{meta.get('format')}); this dtn {__version__} reads format {FORMAT_VERSION}")
        return run

    def check_space(self, need_bytes: int) -> None:
        """Fail before training when the checkpoints will not fit (or the directory is not writable)."""
        probe = self.path / ".write-test"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"run directory {self.path} is not writable: {exc.strerror}") from None
        free = shutil.disk_usage(self.path).free
        if free < need_bytes:
            raise RunError(f"not enough free disk space in {self.path}: {free / 2**20:.0f} MiB free, "
                           f"checkpoints need about {need_bytes / 2**20:.0f} MiB; free some space or "
                           "use --runs-dir elsewhere (or lower train.keep_last)")

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    def config(self) -> Config:
        return load_toml(self.config_path)

    # ------------------------------------------------------------------ small files
    def write_text(self, name: str, text: str) -> None:
        """Atomically; a read-only folder or a full disk is one RunError, and the old file stays whole."""
        try:
            atomic_write(self.path / name, lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:
            raise RunError(f"cannot write {self.path / name}: {exc.strerror or exc}") from None

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def read_json(self, name: str):
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.path / name}: unreadable ({exc})") from None

    def set_status(self, status: str) -> None:
        meta = self.read_json("run.json")
        meta["status"] = status
        self.write_json("run.json", meta)

    def append_metrics(self, row: dict) -> None:
        """metrics.csv grows one row at a time; a new column rewrites the file (rare: the first eval)."""
        path = self.path / "metrics.csv"
        keys = self._metrics_header()
        new_keys = [k for k in row if k not in keys]
        if new_keys or not path.exists():
            self._write_metrics(keys + new_keys, self.read_metrics() + [row])
        else:
            try:
                with open(path, "a", newline="") as fh:
                    csv.DictWriter(fh, fieldnames=keys).writerow({k: row.get(k, "") for k in keys})
            except OSError as exc:
                raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None
        if self.scalar_log is not None:
            self.scalar_log.write(row)

    def _metrics_header(self) -> list[str]:
        path = self.path / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as fh:
            return next(csv.reader(fh), [])

    def _write_metrics(self, fieldnames: list[str], rows: list[dict]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in fieldnames} for r in rows)
        self.write_text("metrics.csv", buf.getvalue())

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.csv"
        if not path.exists():
            return []
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    def truncate_metrics(self, step: int) -> None:
        """Drop rows after `step` (on resume from a checkpoint at that step)."""
        rows = [r for r in self.read_metrics() if int(r["step"]) <= step]
        if not rows:
            (self.path / "metrics.csv").unlink(missing_ok=True)
            return
        self._write_metrics(self._metrics_header(), rows)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[tuple[int, Path]]:
        out = []
        for p in (self.path / "checkpoints").glob("step-*.safetensors"):
            m = _CKPT.search(p.name)
            if m and p.with_name(p.name.replace(".safetensors", ".state.pt")).exists():
                out.append((int(m.group(1)), p))
        return sorted(out)

    def save_checkpoint(self, trainer, keep_last: int = 3, keep: tuple[int, ...] = ()) -> Path:
        """Weights first, then the state file: a checkpoint counts only once both exist."""
        weights = {f"{name}.{k}": v for name, m in trainer.modules().items() for k, v in m.state_dict().items()}
        path = self.path / "checkpoints" / f"step-{trainer.step:06d}.safetensors"
        state = trainer.state_dict()
        try:
            save_tensors(weights, path, metadata={"step": str(trainer.step), "dtn_version": __version__})
            atomic_write(path.with_name(path.name.replace(".safetensors", ".state.pt")),
                         lambda tmp: torch.save(state, tmp))
        except OSError as exc:  # disk full, folder gone read-only: the earlier checkpoints are whole
            raise RunError(f"cannot write checkpoint {path}: {exc.strerror or exc}; the earlier checkpoints "
                           "are intact (free some space, then --resume)") from None
        self._prune(keep_last, keep)
        return path

    def selected_step(self) -> int | None:
        """The step `dtn select` chose (select.json), or None when select has not been run here."""
        if not (self.path / "select.json").is_file():
            return None
        step = self.read_json("select.json").get("chosen_step")
        return None if step is None else int(step)

    def pick_checkpoint(self, step: int | None = None, best: bool = False) -> tuple[int, Path]:
        """(step, weights path): the latest by default, a given step, or (best) the one `dtn select` chose."""
        ckpts = self.checkpoints()
        if not ckpts:
            raise RunError(f"{self.path} has no checkpoint yet (is training still at step 0?)")
        if best:
            step = self.selected_step()
            if step is None:
                raise RunError(f"{self.path} has no select.json: run `dtn select {self.path}` first")
        if step is None:
            return ckpts[-1]
        for s, path in ckpts:
            if s == step:
                return s, path
        raise RunError(f"{self.path} has no checkpoint at step {step}; it has steps "
                       f"{', '.join(str(s) for s, _ in ckpts)}")

    def _prune(self, keep_last: int, keep: tuple[int, ...]) -> None:
        """Keep the last `keep_last` checkpoints, the steps in `keep`, and the selected one (keep-best)."""
        ckpts = self.checkpoints()
        if keep_last <= 0:
            return
        selected = self.selected_step()
        keep = tuple(keep) + (() if selected is None else (selected,))
        for step, path in ckpts[:-keep_last]:
            if step not in keep:
                path.unlink(missing_ok=True)
                path.with_name(path.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)

    def load_checkpoint(self, trainer, path: Path | None = None, weights_only: bool = False) -> int:
        if path is None:
            ckpts = self.checkpoints()
            if not ckpts:
                raise RunError(f"{self.path} has no complete checkpoint to resume from")
            path = ckpts[-1][1]
        load_module_weights(trainer.modules(), load_tensors(path), path)
        m = _CKPT.search(Path(path).name)
        if m:
            trainer.step = int(m.group(1))
        if not weights_only:
            state_path = path.with_name(path.name.replace(".safetensors", ".state.pt"))
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # any unpickling failure means the file cannot be trusted
                raise RunError(f"{state_path}: unreadable training state ({exc.__class__.__name__})") from None
            trainer.load_state_dict(state)
        return trainer.step


def inference_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors with g's weights replaced by g_ema's when the run averaged g (train.g_ema):
    the g that was evaluated is the one to transfer, select and export."""
    ema = {k: v for k, v in tensors.items() if k.startswith("g_ema.")}
    if not ema:
        return tensors
    rest = {k: v for k, v in tensors.items() if not k.startswith(("g.", "g_ema."))}
    return {**rest, **{"g." + k[len("g_ema."):]: v for k, v in ema.items()}}


def load_module_weights(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, module in modules.items():
        prefix = name + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sub:
            continue
        try:
            module.load_state_dict(sub)
        except RuntimeError as exc:
            raise RunError(f"{path}: {name} weights do not fit the configured network "
                           f"({str(exc).strip().splitlines()[0]})") from None
