"""The DTN losses (DESIGN.md §1), each a small pure function of tensors.

Names follow the paper: L_D (ternary_d_loss), L_GANG (ternary_g_loss), L_CONST (const_loss),
L_TID (tid_loss), L_TV (tv_loss). Not in the paper (deviations, off by default): L_LAYOUT
(class_layout_loss, against late class drift), L_READ (const_kl_loss again, read by a reader of the
target's own shapes: train.Trainer.g_loss), and margin_logits, which shapes f's pretraining
(CosFace/ArcFace). Means over the batch replace the paper's sums: the weights alpha, beta, gamma absorb
the scale.

Ternary D classes (0-based here): 0 = G(x), x in s;  1 = G(x), x in t;  2 = x in t (real).
Binary D (a deviation, off by default): 0 = fake (any G(x)), 1 = real.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

G_OF_SOURCE, G_OF_TARGET, REAL = 0, 1, 2
CONST_DISTANCES = ("mse", "cosine", "mse+cosine", "ce", "kl", "mse+kl")


def _ce_to(logits: torch.Tensor, cls: int) -> torch.Tensor:
    target = torch.full((logits.shape[0],), cls, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


def ternary_d_loss(d_g_source: torch.Tensor, d_g_target: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """L_D = -log D_1(G(s)) - log D_2(G(t)) - log D_3(t). Inputs are D's logits; G(.) must be detached."""
    return _ce_to(d_g_source, G_OF_SOURCE) + _ce_to(d_g_target, G_OF_TARGET) + _ce_to(d_real, REAL)


def ternary_g_loss(d_g_source: torch.Tensor, d_g_target: torch.Tensor) -> torch.Tensor:
    """L_GANG = -log D_3(G(s)) - log D_3(G(t)): both kinds of generated image should pass as real."""
    return _ce_to(d_g_source, REAL) + _ce_to(d_g_target, REAL)


def binary_d_loss(d_g_source: torch.Tensor, d_g_target: torch.Tensor, d_real: torch.Tensor) -> torch.Tensor:
    """Fake-vs-real D used by some public ports (2 logits: 0 fake, 1 real)."""
    return _ce_to(d_g_source, 0) + _ce_to(d_g_target, 0) + _ce_to(d_real, 1)


def binary_g_loss(d_g_source: torch.Tensor, d_g_target: torch.Tensor) -> torch.Tensor:
    return _ce_to(d_g_source, 1) + _ce_to(d_g_target, 1)


def const_loss(code_x: torch.Tensor, code_gx: torch.Tensor, distance: str = "mse",
               scale: float = 1.0) -> torch.Tensor:
    """L_CONST = d(f(x), f(G(x))) for x in s. `scale` divides both codes first: a classifier-trained
    f has large codes (mean |f(x)| ~ 5), so an unscaled MSE is not on the pixels' scale."""
    a, b = code_x.float() / scale, code_gx.float() / scale
    if distance == "mse":
        return F.mse_loss(b, a)
    if distance == "cosine":
        return (1 - F.cosine_similarity(a, b, dim=1)).mean()
    if distance == "mse+cosine":
        return F.mse_loss(b, a) + (1 - F.cosine_similarity(a, b, dim=1)).mean()
    raise ValueError(f"unknown L_CONST distance {distance!r}; valid: {', '.join(CONST_DISTANCES)}")


def const_kl_loss(logits_x: torch.Tensor, logits_gx: torch.Tensor) -> torch.Tensor:
    """The `kl` L_CONST variant (a deviation; no labels): KL(p(x) || p(G(x))) between the class
    distributions f's head reads in x and in G(x). It keeps what f says x *is* and leaves the rest of
    f's code (the font, the stroke) free for the GAN to restyle; `mse+kl` adds it to the code MSE."""
    return F.kl_div(F.log_softmax(logits_gx.float(), 1), F.log_softmax(logits_x.float(), 1), log_target=True,
                    reduction="batchmean")


def const_ce_loss(head_logits_gx: torch.Tensor, source_labels: torch.Tensor) -> torch.Tensor:
    """The `ce` L_CONST variant: f's classifier head on G(x) against x's label.
    This uses source labels during DTN training, so results with it are not unsupervised."""
    return F.cross_entropy(head_logits_gx.float(), source_labels)


def tid_loss(t: torch.Tensor, g_t: torch.Tensor) -> torch.Tensor:
    """L_TID = d2(x, G(x)) for x in t, d2 = MSE: G should leave target-domain images alone."""
    return F.mse_loss(g_t.float(), t.float())


def tv_loss(z: torch.Tensor, power: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """L_TV(z) = sum_ij ((z_{i,j+1}-z_ij)^2 + (z_{i+1,j}-z_ij)^2)^(B/2), summed per image and
    averaged over the batch and channels. B = power. reduction "mean" averages over i, j instead of
    summing: the per-pixel scale of tid_loss's MSE, so that gamma / beta means what it means for two
    per-image sums (the paper's), whatever the image size."""
    z = z.float()
    dx = z[..., :-1, 1:] - z[..., :-1, :-1]
    dy = z[..., 1:, :-1] - z[..., :-1, :-1]
    sq = dx * dx + dy * dy
    per_pixel = sq.clamp_min(1e-12).pow(power / 2) if power != 2 else sq
    per_image = per_pixel.mean(dim=(-2, -1)) if reduction == "mean" else per_pixel.sum(dim=(-2, -1))
    return per_image.mean()


def class_layout_loss(layout: torch.Tensor, classes: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """L_LAYOUT (a deviation, no labels): for each class c that f reads in at least two images of the
    batch, the squared distance between the mean coarse layout of G(x) over those x and the mean layout
    of the targets f reads as c (class_means, fixed), less the batch mean's own sampling variance: an
    unbiased estimate (linear-kernel MMD) of how far the class's average drawing is from the target's,
    so it does not reward drawing every image of a class alike. Why: late in training g can draw a whole
    class in the shape of another target class that f misreads as the first (every 4 as a clean 9); each
    image still passes D and L_CONST, but the class's average drawing moves far from the targets f puts
    in that class. layout (N, P) (pooled pixels), classes (N,), class_means (K, P); mean over classes
    and pixels. Written with one-hot sums, not indexing, so shapes are static (CUDA graphs)."""
    layout = layout.float()
    onehot = torch.nn.functional.one_hot(classes, class_means.shape[0]).to(layout.dtype)   # (N, K)
    counts = onehot.sum(0)                                                                  # (K,)
    mean = (onehot.t() @ layout) / counts.clamp_min(1)[:, None]
    sq = onehot.t() @ layout.square()
    var = (sq - counts[:, None] * mean.square()) / (counts - 1).clamp_min(1)[:, None]       # unbiased
    per_class = ((mean - class_means.float()).square() - var / counts.clamp_min(1)[:, None]).mean(1)
    used = (counts >= 2).to(layout.dtype)
    return (per_class * used).sum() / used.sum().clamp_min(1)


def category_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over categories of the cross-entropy of one logit vector per category (an avatar's option
    vector: hair, eyes, ...) against target (N, K), ignoring -1 (a category of another style); a category
    that no image of the batch uses adds nothing."""
    terms = [F.cross_entropy(lg.float(), target[:, j], ignore_index=-1, reduction="sum") / len(target)
             for j, lg in enumerate(logits)]
    return torch.stack(terms).sum() / len(terms)


# ----------------------------------------------------------------------------- f's pretraining head
MARGIN_HEADS = ("softmax", "cosface", "arcface")


def margin_logits(code: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, head: str = "cosface",
                  margin: float = 0.35, scale: float = 30.0) -> torch.Tensor:
    """Logits of a margin-based softmax over unit-length codes and class centres, for cross-entropy.

    code (N, D), centres (K, D), labels (N,) -> (N, K) = scale * cos(theta_k), with the true class
    penalised: CosFace (Wang et al. 2018) cos(theta_y) - margin, ArcFace (Deng et al. 2019)
    cos(theta_y + margin). Why: a plain softmax only has to separate the training identities, so
    held-out faces of one person need not lie close together; a margin on the angle forces every
    identity into a tight cone, which is what retrieval among unseen identities (and L_CONST on faces)
    reads. Only the angle of f's code is shaped: its length stays free (g normalises it anyway)."""
    if head not in ("cosface", "arcface"):
        raise ValueError(f"unknown margin head {head!r}; valid: cosface, arcface (softmax uses f's own head)")
    cos = F.normalize(code.float(), dim=1) @ F.normalize(centres.float(), dim=1).t()
    true = cos.gather(1, labels.view(-1, 1))
    if head == "cosface":
        target = true - margin
    else:
        # cos(theta + m), kept monotone in theta beyond pi - m (the usual "easy margin" fallback:
        # subtract the margin's cosine drop instead), so a badly wrong sample still gets a gradient
        theta = true.clamp(-1 + 1e-6, 1 - 1e-6).acos()
        target = torch.where(theta + margin < math.pi, torch.cos(theta + margin), true - margin * math.sin(margin))
    return scale * cos.scatter(1, labels.view(-1, 1), target)
