"""Using a trained model: `DTN.load(run_dir)`, `model.transfer(images)`, and the `dtn transfer` /
`dtn evaluate` commands built on them. Nothing here needs the training flags: the run directory's
config.toml and safetensors checkpoint rebuild f and g."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import Config
from .domain import resize_uint8
from .errors import DataError, RunError
from .nets import Encoder, Generator, to_images
from .rundir import RunDir, load_module_weights
from .weights import load_tensors


class DTN:
    """A trained G = g o f for inference: uint8 numpy in, uint8 numpy out.

        model = DTN.load("runs/digits")
        out = model.transfer(images)      # (N,H,W,3) or (N,H,W) uint8 -> (N,S,S) or (N,S,S,3) uint8
    """

    def __init__(self, cfg: Config, f: Encoder, g: Generator, device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.f, self.g = f.to(self.device).eval(), g.to(self.device).eval()

    @classmethod
    def load(cls, path: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> "DTN":
        run = RunDir.open(Path(path))
        cfg = run.config()
        if checkpoint is None:
            ckpts = run.checkpoints()
            if not ckpts:
                raise RunError(f"{run.path} has no checkpoint yet (is training still at step 0?)")
            checkpoint = ckpts[-1][1]
        f, g = Encoder(cfg.nets), Generator(cfg.nets)
        load_module_weights({"f": f, "g": g}, load_tensors(Path(checkpoint)), Path(checkpoint))
        return cls(cfg, f, g, device)

    @torch.no_grad()
    def transfer_tensor(self, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """float source images [-1, 1] (N, C, S, S) -> float target images [-1, 1]."""
        return torch.cat([self.g(self.f(x[i:i + batch].to(self.device))).float().cpu()
                          for i in range(0, len(x), batch)]) if len(x) else x.new_zeros((0,))

    def transfer(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        images = check_images(images, "images")
        if images.ndim == 3:
            images = images[..., None]
        size, ch = self.cfg.nets.image_size, self.cfg.nets.source_channels
        out = []
        for i in range(0, len(images), batch):
            x = resize_uint8(images[i:i + batch], size, ch).float().div_(127.5).sub_(1.0)
            out.append(to_images(self.transfer_tensor(x, batch)).numpy())
        result = np.concatenate(out) if out else np.zeros((0, size, size, self.cfg.nets.target_channels), np.uint8)
        return result[..., 0] if result.shape[-1] == 1 else result


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


def transfer_npz(run: Path, input_path: Path, output_path: Path, device: str = "cpu") -> int:
    images = read_npz_images(input_path)
    out = DTN.load(run, device=device).transfer(images)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output_path, images=out)
    return len(out)


DEFAULT_METRICS = ("transfer_accuracy", "f_consistency", "fld", "source_baseline")


def evaluate_run(run_path: Path, checkpoint: str | None = None, names: tuple[str, ...] = DEFAULT_METRICS,
                 adaptation_samples: int = 20000) -> dict:
    """Full evaluation of a run's checkpoint on the source test split."""
    from .run import evaluate, get_classifier, load_domains
    from .train import Trainer

    run = RunDir.open(run_path)
    cfg = run.config()
    domains = load_domains(cfg)
    classifier = get_classifier(cfg, domains, torch.device("cpu"))
    trainer = Trainer(cfg, Encoder(cfg.nets), domains.source_train.subset(64), domains.target_train.subset(64),
                      torch.device("cpu"))
    ckpt = Path(checkpoint) if checkpoint else None
    step = run.load_checkpoint(trainer, ckpt, weights_only=True)
    result = evaluate(trainer, classifier, domains.source_test, domains.target_test, names,
                      source_train=domains.source_train.subset(adaptation_samples, seed=4))
    result["checkpoint"] = str(ckpt or run.checkpoints()[-1][1])
    result["step"] = step
    return result
