"""Image augmentations for the classifiers trained before the DTN (f, the L_READ reader, the adaptation
classifier) and for L_CONST's jitter. Pure functions of (images in [-1, 1], generator)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def elastic_warp(x: torch.Tensor, generator: torch.Generator, strength: float = 0.15,
                 p: float = 0.7) -> torch.Tensor:
    """Smooth random warps (a 4x4 field of offsets up to `strength` of the half-width, upsampled
    bicubically) of a fraction p of the images: printed glyphs bend the way pen strokes do, which
    lifted f's accuracy on MNIST by about 2 points with no target data involved."""
    n, dev = x.shape[0], x.device
    coarse = (torch.rand(n, 2, 4, 4, generator=generator) - 0.5) * (2 * strength)
    flow = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=True)
    identity = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), list(x.shape), align_corners=False)
    grid = identity + flow.permute(0, 2, 3, 1)
    border = x[:, :, :1, :1]
    warped = F.grid_sample(x - border, grid.to(dev), align_corners=False, padding_mode="zeros") + border
    chosen = torch.rand(n, generator=generator).to(dev) < p
    return torch.where(_per_image(chosen), warped, x)


def augment_source(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Source-only augmentation that makes f read the digit's shape rather than its colours:
    elastic warp (p .7), random grey (p .6), per-image contrast stretch (p .5), inversion (p .5),
    thicker or thinner strokes (p .3), blur (p .2), random rotation/scale/shift. Uses no target images."""
    x = elastic_warp(x, generator)
    n, dev = x.shape[0], x.device
    r = torch.rand(n, 8, generator=generator).to(dev)
    if x.shape[1] == 3:
        lum = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = torch.where(_per_image(r[:, 0] < 0.6), lum.expand_as(x), x)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    stretched = (x - lo) / (hi - lo).clamp_min(1e-3) * 2 - 1
    x = torch.where(_per_image(r[:, 1] < 0.5), stretched, x)
    x = torch.where(_per_image(r[:, 2] < 0.5), -x, x)
    dilate = F.max_pool2d(x, 3, 1, 1)
    erode = -F.max_pool2d(-x, 3, 1, 1)
    x = torch.where(_per_image(r[:, 3] < 0.15), dilate, torch.where(_per_image(r[:, 3] > 0.85), erode, x))
    blur = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    x = torch.where(_per_image(r[:, 4] < 0.2), blur, x)
    angle = (r[:, 5] - 0.5) * 0.5                      # about +-14 degrees
    scale = 0.85 + 0.3 * r[:, 6]
    shift = (torch.rand(n, 2, generator=generator).to(dev) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with each image's border colour (its top-left pixel) rather than black
    border = x[:, :, :1, :1]
    x = F.grid_sample(x - border, grid, align_corners=False, padding_mode="zeros") + border
    return x.clamp(-1, 1)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror half of the images left-right (pretrain.f_flip): a mirrored face is the same person,
    which doubles the views of each identity (5 photos each in celeba-sample)."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(_per_image(flip), x.flip(-1), x)


def lowpass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool by `factor` and upsample back (bilinear): the image with its detail finer than
    `factor` pixels removed, at its own size, differentiably. factor 1 returns x."""
    if factor <= 1:
        return x
    return F.interpolate(F.avg_pool2d(x, factor), size=x.shape[-2:], mode="bilinear", align_corners=False)


def shift_augment(x: torch.Tensor, generator: torch.Generator, edge: bool = False) -> torch.Tensor:
    """Random translation by up to 2 px per batch, padded with black (-1) or, with edge, the border."""
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate") if edge else F.pad(x, (2, 2, 2, 2), value=-1.0)
    return pad[:, :, 2 + dy: 2 + dy + x.shape[2], 2 + dx: 2 + dx + x.shape[3]]


def speckle_augment(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, density: float = 0.03) -> torch.Tensor:
    """shift_augment, then on a share p of the images a random `density` of the pixels set to random
    bright levels. Why (pretrain.reader_augment speckle): g learned to satisfy the target reader with a few
    bright specks where a 7's bar belongs on a 1's stroke; a reader taught that specks carry no class
    cannot be satisfied that way."""
    x = shift_augment(x, generator)
    chosen = torch.rand(x.shape[0], 1, 1, 1, generator=generator) < p
    dots = (torch.rand(x.shape, generator=generator) < density) & chosen
    bright = torch.rand(x.shape, generator=generator) * 2 - 0.5
    return torch.where(dots.to(x.device), bright.to(x.device, x.dtype), x).clamp(-1, 1)


def elastic_speckle_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """speckle_augment after elastic_warp (pretrain.reader_augment elastic). Why: a reader that has seen
    MNIST's strokes bent every way reads MNIST test better (98.3 % against 97.8 % for seed 2's f) and
    rejects more of the shapes g draws to pass a less-travelled reader (a 1 with a stub of a bar for a 7)."""
    return speckle_augment(elastic_warp(x, generator), generator)


def adversarial_half(logits_fn, x: torch.Tensor, labels: torch.Tensor, eps: float,
                     generator: torch.Generator) -> torch.Tensor:
    """The second half of the batch moved to raise the classifier's loss: one signed-gradient step of 1.25 eps
    from a random start, kept within eps of the image (FGSM with a random start, Wong et al., ICLR 2020).
    Why (pretrain.reader_adversarial): L_READ hands g the reader's gradient, and g learned to draw what a
    non-robust reader accepts at its boundary (a 7 whose bar is a stub, which the MNIST judge reads as 1);
    a reader trained on such nudges keeps its boundary away from the images and its gradient on strokes."""
    if eps <= 0 or x.shape[0] < 2:
        return x
    half = x.shape[0] // 2
    clean, moved = x[:half], x[half:]
    start = (torch.rand(moved.shape, generator=generator).to(x.device, x.dtype) * 2 - 1) * eps
    probe = (moved + start).clamp(-1, 1).detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(logits_fn(probe).float(), labels[half:])
        grad, = torch.autograd.grad(loss, probe)
    delta = (start + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return torch.cat([clean, (moved + delta).clamp(-1, 1).detach()])


#: The reader's training augmentations by pretrain.reader_augment; config.READER_AUGMENT_NAMES lists the keys.
READER_AUGMENTS = {"shift": shift_augment, "speckle": speckle_augment, "elastic": elastic_speckle_augment}
