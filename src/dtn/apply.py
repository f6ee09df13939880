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


def read_npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"{path}: no array named 'images' (found: {', '.join(z.files) or 'none'})")
            return check_images(z["images"], str(path))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


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
