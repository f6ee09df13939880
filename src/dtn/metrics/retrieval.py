"""Identity retrieval (DESIGN §3, paper §5.3): does G keep who is in the picture?

For each held-out face x, G(x) is embedded by f and every held-out face y by f; the true x is ranked
among all of them by the distance between f(G(x)) and f(y). The paper reports a median rank of 16
among 100,001 faces; with our N held-out faces the comparable figure is the percentile, median rank / N.

Pure functions first (retrieval_ranks, rank_summary, same_label_ranks, verification_auc), then the
registered metric `identity_retrieval`. Ranks start at 1 (best). Ties count against the query: a
gallery item at exactly the true match's distance ranks ahead of it, so a constant embedding scores
the worst rank N, never 1.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..nets import to_float
from . import EvalContext, batched, register_metric

DISTANCES = ("cosine", "euclidean")
#: The paper's figure for faces -> emoji: median rank 16 among 100,001 faces.
PAPER_MEDIAN_RANK, PAPER_N = 16, 100_001


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """(N, D), (M, D) -> (N, M). cosine: 1 - cos (what a CosFace/ArcFace-trained f is built for);
    euclidean: L2 on the raw codes. float64, so that equal codes give exactly equal distances."""
    a, b = a.double(), b.double()
    if distance == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    if distance == "euclidean":
        return torch.cdist(a, b)
    raise ValueError(f"unknown retrieval distance {distance!r}; valid: {', '.join(DISTANCES)}")


@torch.no_grad()
def retrieval_ranks(query: torch.Tensor, gallery: torch.Tensor, distance: str = "cosine",
                    chunk: int = 1024) -> torch.Tensor:
    """Rank (1 = best) of gallery[i] among all of gallery by distance to query[i]; (N,) int64.

    rank_i = #{j : d(q_i, g_j) <= d(q_i, g_i)}: ties pessimistic (see the module docstring).
    Chunked over queries: N = 5,000 needs a 1,024 x 5,000 matrix at a time, not 5,000 x 5,000."""
    if query.shape != gallery.shape or query.dim() != 2:
        raise ValueError(f"query and gallery must both be (N, D) with query i matching gallery i; "
                         f"got {tuple(query.shape)} and {tuple(gallery.shape)}")
    ranks = []
    for start in range(0, len(query), chunk):
        d = pairwise_distance(query[start:start + chunk], gallery, distance)
        true = d.diagonal(offset=start).unsqueeze(1)
        ranks.append((d <= true).sum(1))
    return torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.long)


def rank_summary(ranks: torch.Tensor, gallery_size: int) -> dict:
    """Median rank (the usual median: the mean of the two middle ranks when N is even), recall@1 and
    recall@10 (fraction of queries whose true match ranks within 1 / 10), N, and the median rank's
    percentile (median / gallery size) to set beside the paper's 16 / 100,001."""
    if len(ranks) == 0:
        raise ValueError("no queries to rank: the held-out split is empty")
    r = ranks.double()
    median = float(r.quantile(0.5))
    return {"median_rank": median, "recall_at_1": float((r <= 1).double().mean()),
            "recall_at_10": float((r <= 10).double().mean()), "n": int(len(ranks)),
            "median_rank_percentile": median / gallery_size}


@torch.no_grad()
def same_label_ranks(codes: torch.Tensor, labels: torch.Tensor, distance: str = "cosine",
                     chunk: int = 1024) -> torch.Tensor:
    """For each image, the rank of its nearest *other* image of the same label among all other images
    (f's own quality: find another photo of the same person). Images whose label has no other image
    are left out. Ties pessimistic, as in retrieval_ranks."""
    labels = labels.to(codes.device)
    ranks = []
    for start in range(0, len(codes), chunk):
        d = pairwise_distance(codes[start:start + chunk], codes, distance)
        rows = torch.arange(start, start + len(d), device=d.device)
        d[torch.arange(len(d)), rows] = float("inf")                    # never the query itself
        same = labels[rows].unsqueeze(1) == labels.unsqueeze(0)
        same[torch.arange(len(d)), rows] = False
        best = d.masked_fill(~same, float("inf")).amin(1, keepdim=True)
        others = (d <= best) & ~same & torch.isfinite(d)
        keep = same.any(1)
        ranks.append((1 + others.sum(1))[keep])
    return torch.cat(ranks).cpu() if ranks else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def verification_auc(codes: torch.Tensor, labels: torch.Tensor, distance: str = "cosine",
                     chunk: int = 1024) -> float:
    """Area under the ROC curve of "same person" decided by a distance threshold, over all pairs
    i < j: the probability that a same-identity pair is closer than a different-identity pair
    (ties count one half). 0.5 is chance, 1 is perfect. N = 5,000 is 12.5 M pairs: a few seconds."""
    labels = labels.to(codes.device)
    dists, positive = [], []
    for start in range(0, len(codes), chunk):
        d = pairwise_distance(codes[start:start + chunk], codes, distance)
        rows = torch.arange(start, start + len(d), device=d.device)
        upper = rows.unsqueeze(1) < torch.arange(len(codes), device=d.device).unsqueeze(0)
        dists.append(d[upper].cpu())
        positive.append((labels[rows].unsqueeze(1) == labels.unsqueeze(0))[upper].cpu())
    d, pos = torch.cat(dists), torch.cat(positive)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("verification AUC needs both same-label and different-label pairs")
    # Mann-Whitney U with average ranks for ties; rank 1 = the largest distance (least similar)
    _, inverse, counts = torch.unique(-d, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average_rank = (ends - (counts.double() - 1) / 2)[inverse]
    u = float(average_rank[pos].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def encoder_quality(codes: torch.Tensor, labels: torch.Tensor, distance: str = "cosine") -> dict:
    """f's own identity quality on held-out identities (f.json): retrieval of another photo of the same
    person among all other held-out photos, and pair verification AUC."""
    s = rank_summary(same_label_ranks(codes, labels, distance), len(codes) - 1)
    return {"heldout_retrieval_median_rank": s["median_rank"], "heldout_retrieval_recall_at_1": s["recall_at_1"],
            "heldout_retrieval_recall_at_10": s["recall_at_10"], "heldout_retrieval_n": s["n"],
            "heldout_verification_auc": verification_auc(codes, labels, distance),
            "heldout_identities": int(torch.unique(labels).numel()), "heldout_distance": distance}


# ----------------------------------------------------------------------------- the registered metric
def standardised(codes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """codes with each dimension centred and scaled by the reference codes' mean and std."""
    return (codes - reference.mean(0)) / reference.std(0).clamp_min(1e-6)


def identity_retrieval(f, source: torch.Tensor, transferred: torch.Tensor, distance: str = "cosine",
                       target: torch.Tensor | None = None) -> dict:
    """Rank each face x among all faces y (source, float [-1, 1]) by d(f(G(x)), f(y)); G(x) given as
    `transferred` in the same order. With `target` (real target images; a run with loss.code_scale =
    domain), f(y) is standardised by the source codes' statistics and f(G(x)) by the target's, as L_CONST
    compares them in training. Keys are prefixed identity_ (results.json, metrics.csv)."""
    query, gallery = batched(f, transferred), batched(f, source)
    if target is not None:
        query, gallery = standardised(query, batched(f, target)), standardised(gallery, gallery)
    s = rank_summary(retrieval_ranks(query, gallery, distance), len(source))
    return {"identity_median_rank": s["median_rank"], "identity_recall_at_1": s["recall_at_1"],
            "identity_recall_at_10": s["recall_at_10"], "identity_n": s["n"],
            "identity_median_rank_percentile": s["median_rank_percentile"], "identity_distance": distance,
            "identity_codes": "standardised per domain" if target is not None else "raw",
            "identity_paper": f"median rank {PAPER_MEDIAN_RANK} of {PAPER_N:,} "
                              f"(percentile {PAPER_MEDIAN_RANK / PAPER_N:.2e})"}


@register_metric("identity_retrieval")
def _identity_retrieval(ctx: EvalContext) -> dict:
    """Needs no labels: query i's true match is source test image i itself."""
    source = to_float(ctx.source_test.images)
    target = to_float(ctx.target_test.images) if ctx.standardise_codes else None
    out = identity_retrieval(ctx.f, source, ctx.transferred(), target=target)
    if ctx.judge is not None:
        # g was trained through f, so it can hide x's code in patterns only f reads; an encoder of the same
        # recipe and another seed was never back-propagated through, and is not fooled by them for free
        judged = identity_retrieval(ctx.judge, source, ctx.transferred(), target=target)
        out.update({f"judge_{k}": v for k, v in judged.items() if k not in ("identity_paper", "identity_distance")})
    return out
