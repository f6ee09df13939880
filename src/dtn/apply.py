"""Using a trained model: `DTN.load(run_dir_or_bundle)`, `model.transfer(images)`, and the `dtn transfer` /
`dtn evaluate` commands built on them. Nothing here needs the training flags: the run directory's
config.toml and safetensors checkpoint (or an exported bundle, see bundle.py) rebuild f and g.

`dtn transfer` reads an .npz of images (-> .npz), one image file (-> one PNG) or a folder, recursively
(-> PNGs under the output folder with the same relative names). Files are decoded by
data/image_folder.py, so a folder that `dtn data info` accepts transfers the same way. For a run whose
target is the avatars domain, `--avatar-svg DIR` also turns each G(x) into a real, editable avatar
(DIR/<name>.svg, .png, .json; avatar_params.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import Config
from .data.image_folder import EXTENSIONS, BadImage, _list_images, decode_workers, open_image, to_mode
from .domain import resize_uint8
from .errors import ConfigError, DataError, DtnError, RunError
from .nets import Encoder, Generator, to_float, to_images, transfer
from .precision import inference_precision
from .rundir import RunDir, inference_weights, load_module_weights
from .weights import load_tensors


def resolve_device(name: str | torch.device | None) -> torch.device:
    """"auto" -> cuda when this torch sees a GPU, else cpu. Asking for cuda where there is none is an
    error, not a silent fallback: the user asked for speed they would not get."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this torch {torch.__version__} sees no CUDA GPU; "
                              "use --device cpu (or auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"device {name!r}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


def load_nets(modules: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Like rundir.load_module_weights, but every module must be present in the file: a weights file
    without g would otherwise leave g at its random initialisation and transfer noise."""
    missing = [name for name in modules if not any(k.startswith(name + ".") for k in tensors)]
    if missing:
        raise RunError(f"{where}: holds no weights for {', '.join(missing)}")
    load_module_weights(modules, tensors, where)


class DTN:
    """A trained G = g o f for inference: uint8 numpy in, uint8 numpy out.

        model = DTN.load("runs/digits", device="auto")   # a run directory or a `dtn export` bundle
        out = model.transfer(images)      # (N,H,W,3) or (N,H,W) uint8 -> (N,S,S) or (N,S,S,3) uint8
    """

    def __init__(self, cfg: Config, f: Encoder, g: Generator, device: str | torch.device = "cpu",
                 step: int | None = None) -> None:
        self.cfg, self.device, self.step = cfg, resolve_device(device), step
        self.f, self.g = f.to(self.device).eval(), g.to(self.device).eval()
        # the run's bf16 where this device computes it natively; elsewhere fp32, since emulated bf16 is
        # many times slower (bench/results/precision_avx2.json) and differs from fp32 only in rounding
        self.bf16 = inference_precision(cfg.train.precision, self.device) == "bf16"
        if cfg.train.channels_last:
            self.f.to(memory_format=torch.channels_last)
            self.g.to(memory_format=torch.channels_last)

    @classmethod
    def load(cls, path: str | Path, checkpoint: int | str | Path | None = None, device: str = "auto") -> "DTN":
        """`path`: a run directory or a model bundle (`dtn export`; its checksums are verified first).
        `checkpoint` (run directories only): None = the latest, a step number, "best" = the step
        `dtn select` chose, or a weights file. `device`: auto, cpu, cuda or cuda:N."""
        from .bundle import is_bundle, read_bundle

        path = Path(path)
        if is_bundle(path):
            if checkpoint is not None:
                raise RunError(f"{path} is a model bundle holding one checkpoint; checkpoint= is for run directories")
            cfg, tensors, step = read_bundle(path)
            where = path / "weights.safetensors"
        else:
            run = RunDir.open(path)
            cfg = run.config()
            step, where = _run_checkpoint(run, checkpoint)
            tensors = inference_weights(load_tensors(where))
        f, g = Encoder(cfg.nets), Generator(cfg.nets)
        load_nets({"f": f, "g": g}, tensors, where)
        return cls(cfg, f, g, device, step)

    @torch.inference_mode()
    def transfer_tensor(self, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """float source images [-1, 1] (N, C, S, S) -> float target images [-1, 1].

        Runs with the run's precision and channels_last, as the Trainer's evaluation does: on a device
        like the one that trained it, the images out are the ones `dtn run` scored. A bf16 run on a
        device without native bf16 transfers in fp32 (self.bf16)."""
        if not len(x):
            return x.new_zeros((0,))
        fmt = torch.channels_last if self.cfg.train.channels_last else torch.contiguous_format
        outs = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch].to(self.device).contiguous(memory_format=fmt)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                outs.append(transfer(self.f, self.g, chunk).float().cpu())
        return torch.cat(outs)

    def _prepare(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N,H,W) or (N,H,W,C) -> float (N, C_source, S, S) in [-1, 1] (antialiased resize)."""
        if images.ndim == 3:
            images = images[..., None]
        size, ch = self.cfg.nets.image_size, self.cfg.nets.source_channels
        return to_float(resize_uint8(images, size, ch))

    def transfer(self, images: np.ndarray | Sequence[np.ndarray], batch: int = 1000) -> np.ndarray:
        """uint8 images -> uint8 target-domain images (N,S,S) or (N,S,S,3), in the same order.

        `images`: one array (N,H,W), (N,H,W,1) or (N,H,W,3); or a list of (H,W[,C]) arrays of any sizes,
        each resized on its own (exactly as it would be alone in an array)."""
        if batch < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch}")
        if isinstance(images, (list, tuple)):
            one_by_one = [self._prepare(check_images(np.asarray(im)[None], f"images[{i}]"))
                          for i, im in enumerate(images)]
            chunks = (torch.cat(one_by_one[i:i + batch]) for i in range(0, len(one_by_one), batch))
        else:
            images = check_images(images, "images")
            chunks = (self._prepare(images[i:i + batch]) for i in range(0, len(images), batch))
        out = [to_images(self.transfer_tensor(x, batch)).numpy() for x in chunks]
        size = self.cfg.nets.image_size
        result = np.concatenate(out) if out else np.zeros((0, size, size, self.cfg.nets.target_channels), np.uint8)
        return result[..., 0] if result.shape[-1] == 1 else result


def _run_checkpoint(run: RunDir, checkpoint: int | str | Path | None) -> tuple[int | None, Path]:
    """(step, weights file) of a run directory for a `checkpoint` argument (DTN.load, `dtn evaluate`):
    None = the latest, a step number (an int, or a string of digits as a command line gives it),
    "best" = the step `dtn select` chose, or a weights file."""
    if isinstance(checkpoint, str) and checkpoint.isdigit():
        checkpoint = int(checkpoint)
    if checkpoint is None or isinstance(checkpoint, int) or checkpoint == "best":
        return run.pick_checkpoint(None if checkpoint == "best" else checkpoint, best=checkpoint == "best")
    path = Path(checkpoint)
    digits = path.name.removeprefix("step-").split(".")[0]
    return (int(digits) if digits.isdigit() else None), path


def check_images(images, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 images, got dtype {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"{where}: expected shape (N,H,W) or (N,H,W,3), got {images.shape}")
    if images.ndim >= 3 and min(images.shape[1:3], default=0) < 1:
        raise DataError(f"{where}: empty image dimensions {images.shape}")
    return images


#: `dtn transfer` refuses an .npz whose `images` would need more memory than this once read (a zip of
#: zeros declares gigabytes in kilobytes), and single images larger than image_folder.MAX_PIXELS.
MAX_NPZ_BYTES = 2**31


def _npz_errors() -> tuple[type[BaseException], ...]:
    """What numpy and zipfile raise for a damaged archive (a bad CRC, a cut deflate stream, an
    unsupported or encrypted member, a header that does not parse)."""
    import tokenize
    import zipfile
    import zlib

    return (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            SyntaxError, tokenize.TokenError)


def read_npz_images(path: Path) -> np.ndarray:
    """The `images` array of an .npz, never unpickled (allow_pickle=False: object arrays are refused),
    its dtype and size checked from the .npy header before any memory is allocated for it."""
    try:
        fh = open(path, "rb")  # ours, not np.load's: numpy leaks its handle when the zip is broken
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        return _images_from_npz(fh, path)


def _images_from_npz(fh, path: Path) -> np.ndarray:
    try:
        z = np.load(fh, allow_pickle=False)
    except _npz_errors() as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; write it with np.savez(path, images=...)")
    with z:
        if "images" not in z.files:
            raise DataError(f"{path}: no array named 'images' (found: {', '.join(z.files) or 'none'})")
        try:
            _check_declared_images(z, path)
            images = z["images"]
        except _npz_errors() as exc:
            raise DataError(f"{path}: cannot read 'images' ({exc.__class__.__name__}: {exc})") from None
    return check_images(images, str(path))


def _check_declared_images(z, path: Path) -> None:
    """Refuse `images` by its .npy header alone: not an .npy member, not uint8, or too large."""
    import math

    from .data.image_folder import MAX_PIXELS

    if "images.npy" not in z.zip.namelist():
        raise DataError(f"{path}: 'images' is not an .npy array inside the archive")
    info = z.zip.getinfo("images.npy")
    with z.zip.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise DataError(f"{path}: 'images' uses .npy format {version}, which numpy does not read")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    if dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 images, got dtype {dtype}")
    nbytes = math.prod(shape)  # Python ints: no overflow
    if max(nbytes, info.file_size) > MAX_NPZ_BYTES:
        raise DataError(f"{path}: 'images' of shape {shape} would take {max(nbytes, info.file_size) / 2**30:.1f} GiB "
                        f"in memory; the limit is {MAX_NPZ_BYTES / 2**30:.0f} GiB (split the file)")
    if len(shape) >= 3 and shape[1] * shape[2] > MAX_PIXELS:
        raise DataError(f"{path}: images of {shape[2]}x{shape[1]} pixels exceed the {MAX_PIXELS:,}-pixel limit "
                        "(possible decompression bomb)")


#: Called after each batch with the names (output stems, relative, no suffix) and the transferred images:
#: how --avatar-svg writes its files without transfer_files knowing about avatars.
BatchHook = Callable[[list[str], np.ndarray], None]


def transfer_npz(run: Path, input_path: Path, output_path: Path, device: str = "cpu", batch_size: int = 1000,
                 avatar_hook: Callable[["DTN"], BatchHook] | None = None) -> int:
    """An .npz of `images` -> an .npz of transferred `images`; `avatar_hook(model)` (made before anything
    is transferred, so it can refuse the run) gets all of them, named by index (000000, 000001, ...)."""
    images = read_npz_images(input_path)
    model = DTN.load(run, device=device)
    hook = avatar_hook(model) if avatar_hook else None
    out = model.transfer(images, batch_size)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output_path, images=out)
    if hook:
        width = max(6, len(str(len(out) - 1)))
        hook([f"{i:0{width}d}" for i in range(len(out))], out)
    return len(out)


# ----------------------------------------------------------------------------- image files and folders
@dataclass
class TransferReport:
    """What `dtn transfer` did: images written, and (with --skip-bad) the files skipped and why."""

    output: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (input path, reason)


@dataclass(frozen=True)
class FileJob:
    source: Path      # the image to read
    target: Path      # the PNG to write
    name: str         # how messages call it (the path relative to --input, or the file itself)
    stem: str = ""    # the relative output name without suffix (x/y/a): names --avatar-svg's files


def plan_files(input_path: Path, output_path: Path, avatar_dir: Path | None = None) -> list[FileJob]:
    """Which PNG each input image becomes. A folder is read recursively (png, jpg, jpeg, webp, bmp;
    hidden names and an --output or --avatar-svg folder inside it skipped) and keeps relative names:
    IN/x/y/a.jpg -> OUT/x/y/a.png. One file goes to --output itself when that ends in .png, else into
    the --output folder. Refuses, before anything is written, two inputs that would share an output
    name and an output (or an avatar file in `avatar_dir`) that would overwrite an input."""
    if input_path.is_dir():
        if avatar_dir is not None and avatar_dir.resolve() == input_path.resolve():
            raise DataError(f"--avatar-svg {avatar_dir} is the input folder: its avatar PNGs would mix with the "
                            "photos (and be read as inputs next time); choose another folder")
        # An --output (or --avatar-svg folder) inside --input holds earlier results: they are not inputs.
        skip = [p.resolve() for p in (output_path, avatar_dir) if p is not None]
        rels = [rel for rel in _list_images(input_path)
                if not any(d in (input_path / rel).resolve().parents for d in skip)]
        if not rels:
            raise DataError(f"no images (png, jpg, jpeg, webp, bmp) in {input_path}")
        jobs = [FileJob(input_path / rel, output_path / Path(rel).with_suffix(".png"), rel,
                        Path(rel).with_suffix("").as_posix()) for rel in rels]
    elif input_path.is_file():
        if input_path.suffix.lower() not in EXTENSIONS:
            raise DataError(f"{input_path}: not an .npz or an image file dtn reads (png, jpg, jpeg, webp, bmp)")
        target = output_path if output_path.suffix.lower() == ".png" else output_path / (input_path.stem + ".png")
        jobs = [FileJob(input_path, target, str(input_path), input_path.stem)]
    else:
        raise DataError(f"input {input_path} does not exist")
    seen: dict[Path, str] = {}
    for job in jobs:
        if job.target in seen:
            raise DataError(f"{seen[job.target]} and {job.name} would both be written as {job.target}; rename one")
        seen[job.target] = job.name
        if job.target.resolve() == job.source.resolve():
            raise DataError(f"writing {job.target} would overwrite the input image; choose another --output")
        if avatar_dir is not None and job.source.resolve() in _avatar_files(avatar_dir, job.stem):
            raise DataError(f"--avatar-svg {avatar_dir} would overwrite the input image {job.source}; "
                            "choose another folder")
    return jobs


def _avatar_files(avatar_dir: Path, stem: str) -> list[Path]:
    """The files --avatar-svg writes for one input (avatar_params.write_avatar_files), resolved."""
    return [(avatar_dir / f"{stem}{suffix}").resolve() for suffix in (".svg", ".png", ".json")]


def read_image(path: Path) -> np.ndarray | str:
    """uint8 (H, W, 3) RGB, or the reason the file cannot be used (the checks of data/image_folder.py:
    empty, truncated, not an image, decompression bomb, odd modes composited on white)."""
    try:
        return np.asarray(to_mode(open_image(path), "RGB"), dtype=np.uint8)
    except BadImage as exc:
        return str(exc)


def write_png(path: Path, image: np.ndarray, size: tuple[int, int] | None = None) -> None:
    """Save one uint8 (S,S) or (S,S,3) image; `size` (w, h) resizes it back to its input's size."""
    img = Image.fromarray(image)
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG")
    except OSError as exc:
        raise DtnError(f"cannot write {path}: {exc.strerror or exc}") from None


def transfer_files(model: DTN, jobs: list[FileJob], batch_size: int = 256, skip_bad: bool = False,
                   keep_size: bool = False, on_skip: Callable[[str, str], None] | None = None,
                   output: Path | None = None, on_batch: BatchHook | None = None) -> TransferReport:
    """Decode, transfer and write `jobs` a batch at a time (memory stays one batch, whatever the folder).
    An unreadable image stops the run naming it, or with skip_bad is reported to on_skip and counted.
    `on_batch(stems, transferred)` then sees each batch's readable images (--avatar-svg)."""
    from .progress import progress

    report = TransferReport(output or (jobs[0].target.parent if jobs else Path()))
    with ThreadPoolExecutor(decode_workers()) as pool, \
            progress(None, desc="transfer", total=len(jobs), unit="img") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            good = []
            for job, image in zip(chunk, pool.map(lambda j: read_image(j.source), chunk)):
                if isinstance(image, np.ndarray):
                    good.append((job, image))
                elif not skip_bad:
                    raise DataError(f"{job.source}: {image} ({report.written} images written before it; "
                                    "--skip-bad skips unreadable images)")
                else:
                    report.skipped.append((job.name, image))
                    if on_skip:
                        on_skip(job.name, image)
            outs = model.transfer([image for _, image in good], batch_size) if good else []
            for (job, image), out in zip(good, outs):
                write_png(job.target, out, (image.shape[1], image.shape[0]) if keep_size else None)
            if on_batch and good:
                on_batch([job.stem for job, _ in good], np.asarray(outs))
            report.written += len(good)
            bar.update(len(chunk))
    if not report.written:
        raise DataError(f"no readable images among {len(jobs)} files ({len(report.skipped)} skipped)")
    return report


def transfer_path(model_path: Path, input_path: Path, output_path: Path, device: str = "auto",
                  batch_size: int = 256, skip_bad: bool = False, keep_size: bool = False,
                  on_skip: Callable[[str, str], None] | None = None, avatar_dir: Path | None = None,
                  avatar_size: int = 256, say: Callable[[str], None] | None = None) -> TransferReport:
    """`dtn transfer`: an .npz of `images` -> an .npz; an image file or a folder -> PNG(s). With
    `avatar_dir` (a run whose target is avatars), also the editable avatar of each G(x) there:
    <name>.svg, <name>.png (avatar_size px) and <name>.json; `say` hears about estimator training."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    hook = None
    if avatar_dir is not None:
        from .avatar_params import avatar_writer

        if avatar_size < 8:
            raise ConfigError(f"--avatar-size must be at least 8 pixels, got {avatar_size}")
        hook = lambda model: avatar_writer(model, avatar_dir, avatar_size, say, where=model_path)  # noqa: E731
    if input_path.suffix.lower() == ".npz":
        return TransferReport(output_path, transfer_npz(model_path, input_path, output_path, device, batch_size, hook))
    jobs = plan_files(input_path, output_path, avatar_dir)
    model = DTN.load(model_path, device=device)
    return transfer_files(model, jobs, batch_size, skip_bad, keep_size, on_skip, output_path,
                          hook(model) if hook else None)


DEFAULT_METRICS = ("transfer_accuracy", "f_consistency", "fld", "source_baseline")


def evaluate_run(run_path: Path, checkpoint: str | None = None, names: tuple[str, ...] = DEFAULT_METRICS,
                 adaptation_samples: int = 20000) -> dict:
    """Full evaluation of a run's checkpoint on the source test split."""
    from .run import evaluate, get_classifier, get_judge, load_domains
    from .train import Trainer

    run = RunDir.open(run_path)
    cfg = run.config()
    precision = inference_precision(cfg.train.precision, torch.device("cpu"))
    cfg = replace(cfg, train=replace(cfg.train, precision=precision))
    domains = load_domains(cfg)
    classifier = get_classifier(cfg, domains, torch.device("cpu"))
    trainer = Trainer(cfg, Encoder(cfg.nets), domains.source_train.subset(64), domains.target_train.subset(64),
                      torch.device("cpu"), reader=Encoder(cfg.nets))     # weights from the checkpoint; the reader is unused
    _, ckpt = _run_checkpoint(run, checkpoint)
    step = run.load_checkpoint(trainer, ckpt, weights_only=True)
    result = evaluate(trainer, classifier, domains.source_test, domains.target_test, names,
                      source_train=domains.source_train.subset(adaptation_samples, seed=4),
                      judge=get_judge(cfg, domains, torch.device("cpu")))
    result["checkpoint"] = str(ckpt)
    result["step"] = step
    result["precision"] = precision     # fp32 for a bf16 run on a CPU that only emulates bf16
    return result
