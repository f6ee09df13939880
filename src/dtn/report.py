"""Pictures of a run: image grids (a source row above its transferred row)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .nets import to_images


def grid(rows: list[np.ndarray], pad: int = 2, scale: int = 2) -> Image.Image:
    """rows: uint8 arrays (N, H, W, C), C in {1, 3}, same N, H, W. Returns one RGB picture."""
    rows = [np.repeat(r, 3, axis=-1) if r.shape[-1] == 1 else r for r in rows]
    n, h, w, _ = rows[0].shape
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = r[j]
    img = Image.fromarray(out)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(path: Path, source: torch.Tensor, transferred: torch.Tensor) -> None:
    """Source images (float [-1, 1]) in the top row, their transfers below."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grid([to_images(source).cpu().numpy(), to_images(transferred).cpu().numpy()]).save(path)
