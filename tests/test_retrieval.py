"""Identity retrieval and f's margin softmax on cases with known answers: tiny tensors, milliseconds."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from dtn.losses import margin_logits
from dtn.metrics import EvalContext, compute, metric_names
from dtn.metrics.retrieval import (encoder_quality, identity_retrieval, rank_summary, retrieval_ranks,
                                   same_label_ranks, verification_auc)


# ----------------------------------------------------------------------------- retrieval_ranks
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_identical_codes_rank_first(distance):
    codes = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    ranks = retrieval_ranks(codes, codes.clone(), distance)
    assert ranks.tolist() == [1] * 50
    s = rank_summary(ranks, 50)
    assert (s["median_rank"], s["recall_at_1"], s["recall_at_10"], s["n"]) == (1.0, 1.0, 1.0, 50)
    assert s["median_rank_percentile"] == pytest.approx(1 / 50)


def test_constructed_ranks_by_hand():
    """1-D codes, euclidean: query 2.9 is 0.1 from g3, 0.9 from g2, 1.9 from its true g1 -> rank 3."""
    gallery = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    query = torch.tensor([[0.0], [2.9], [1.1], [0.0]])
    ranks = retrieval_ranks(query, gallery, "euclidean")
    assert ranks.tolist() == [1, 3, 2, 4]
    s = rank_summary(ranks, 4)
    assert s["median_rank"] == 2.5                       # the mean of the two middle ranks (2, 3)
    assert s["recall_at_1"] == 0.25 and s["recall_at_10"] == 1.0 and s["n"] == 4


def test_ties_count_against_the_query():
    """A constant embedding must not look perfect: every gallery item ties, so every rank is N."""
    ranks = retrieval_ranks(torch.ones(7, 3), torch.ones(7, 3), "cosine")
    assert ranks.tolist() == [7] * 7
    assert rank_summary(ranks, 7)["recall_at_1"] == 0.0


def test_chunking_does_not_change_ranks():
    g = torch.Generator().manual_seed(1)
    q, gal = torch.randn(37, 5, generator=g), torch.randn(37, 5, generator=g)
    assert torch.equal(retrieval_ranks(q, gal, chunk=4), retrieval_ranks(q, gal, chunk=1000))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="query i matching gallery i"):
        retrieval_ranks(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="valid: cosine, euclidean"):
        retrieval_ranks(torch.zeros(3, 2), torch.zeros(3, 2), "manhattan")
    with pytest.raises(ValueError, match="empty"):
        rank_summary(torch.zeros(0, dtype=torch.long), 0)


# ----------------------------------------------------------------------------- f's own quality
def test_same_label_ranks_by_hand():
    """1-D codes 0, 1.1, 1.0, 3.0 with labels a a b b. Image 0: its partner (1.1 away) is behind image 2
    (1.0 away) -> rank 2; image 2: its partner (2.0 away) is behind images 0 and 1 -> rank 3."""
    codes = torch.tensor([[0.0], [1.1], [1.0], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert same_label_ranks(codes, labels, "euclidean").tolist() == [2, 2, 3, 2]
    # an identity with a single image has nothing to find: left out
    assert same_label_ranks(codes, torch.tensor([0, 0, 1, 2]), "euclidean").tolist() == [2, 2]


def test_verification_auc_known_values():
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    assert verification_auc(separated, labels, "euclidean") == 1.0
    assert verification_auc(torch.ones(4, 2), labels, "euclidean") == 0.5     # all tie: chance
    swapped = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # partners on the diagonals
    assert verification_auc(swapped, labels, "euclidean") == 0.0


def test_encoder_quality_of_clustered_codes():
    g = torch.Generator().manual_seed(2)
    centres = F.normalize(torch.randn(20, 32, generator=g), dim=1)
    labels = torch.arange(20).repeat_interleave(5)
    codes = centres[labels] + 0.01 * torch.randn(100, 32, generator=g)
    q = encoder_quality(codes, labels)
    assert q["heldout_retrieval_median_rank"] == 1.0 and q["heldout_retrieval_recall_at_1"] == 1.0
    assert q["heldout_verification_auc"] == 1.0 and q["heldout_identities"] == 20 and q["heldout_retrieval_n"] == 100


# ----------------------------------------------------------------------------- the registered metric
class _Flatten(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_identity_retrieval_metric_is_registered_and_ranks_a_faithful_transfer_first():
    from dtn.domain import Domain

    assert "identity_retrieval" in metric_names()
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    source = Domain(images, torch.arange(12), "faces", "test")
    faithful = compute(["identity_retrieval"], EvalContext(transfer=lambda x: x, source_test=source, f=_Flatten()))
    assert faithful["identity_median_rank"] == 1.0 and faithful["identity_recall_at_1"] == 1.0
    assert faithful["identity_n"] == 12 and faithful["identity_distance"] == "cosine"
    assert "16 of 100,001" in faithful["identity_paper"]
    constant = identity_retrieval(_Flatten(), images.float() / 127.5 - 1, torch.zeros(12, 3, 8, 8))
    assert constant["identity_median_rank"] == 12.0 and constant["identity_recall_at_1"] == 0.0


# ----------------------------------------------------------------------------- margin softmax
def test_margin_logits_penalise_only_the_true_class():
    code = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 2])
    cos = F.normalize(code, dim=1) @ F.normalize(centres, dim=1).t()
    cosface = margin_logits(code, centres, labels, "cosface", margin=0.35, scale=30.0)
    expected = 30 * cos
    expected[0, 0] -= 30 * 0.35
    expected[1, 2] -= 30 * 0.35
    assert torch.allclose(cosface, expected)
    arcface = margin_logits(code, centres, labels, "arcface", margin=0.5, scale=10.0)
    assert arcface[1, 2] == pytest.approx(10 * math.cos(math.pi / 4 + 0.5), abs=1e-5)
    assert torch.allclose(arcface[0, 1:], 10 * cos[0, 1:]) and torch.allclose(arcface[1, :2], 10 * cos[1, :2])
    assert torch.allclose(margin_logits(code, centres, labels, "cosface", 0.0, 1.0), cos)
    with pytest.raises(ValueError, match="valid: cosface, arcface"):
        margin_logits(code, centres, labels, "softmax")


def test_arcface_keeps_a_gradient_past_pi_minus_margin():
    """theta near pi: cos(theta + m) would turn upward; the fallback stays monotone (a usable gradient)."""
    code = torch.tensor([[-1.0, 1e-3]], requires_grad=True)
    out = margin_logits(code, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), "arcface", 0.5, 1.0)
    assert out.item() == pytest.approx(-1 - 0.5 * math.sin(0.5), abs=1e-4)


def test_standardised_codes_find_a_match_across_a_domain_offset():
    """G(x)'s codes sit in the target's region (offset and shrunk, as a face encoder does to avatars):
    raw cosine distance ranks them badly, standardising each side by its own domain restores rank 1."""
    from dtn.metrics.retrieval import identity_retrieval
    g = torch.Generator().manual_seed(0)
    source = torch.randn(200, 1, 4, 4, generator=g)
    transferred = 0.1 * source + 3.0
    target = 0.1 * torch.randn(200, 1, 4, 4, generator=g) + 3.0
    encode = lambda x: x.flatten(1)                                     # noqa: E731
    raw = identity_retrieval(encode, source, transferred)
    fixed = identity_retrieval(encode, source, transferred, target=target)
    assert fixed["identity_codes"] == "standardised per domain" and raw["identity_codes"] == "raw"
    assert fixed["identity_median_rank"] == 1 and fixed["identity_recall_at_1"] > 0.95
    assert raw["identity_median_rank"] > 5
