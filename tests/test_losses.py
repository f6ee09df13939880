"""Each DTN loss against a hand computation on tiny tensors (DESIGN.md §1), plus basic properties."""
from __future__ import annotations

import math

import pytest
import torch

from dtn import losses


def _nll(logits: torch.Tensor, cls: int) -> float:
    """-mean_n log softmax(logits_n)[cls], written out with exp/log."""
    total = 0.0
    for row in logits.tolist():
        z = sum(math.exp(v) for v in row)
        total += -math.log(math.exp(row[cls]) / z)
    return total / len(logits)


@pytest.fixture
def logits3():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=g) for _ in range(3)]


@pytest.fixture
def logits2():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 2, generator=g) for _ in range(3)]


def test_class_indices():
    assert (losses.G_OF_SOURCE, losses.G_OF_TARGET, losses.REAL) == (0, 1, 2)


def test_ternary_d_loss(logits3):
    gs, gt, real = logits3
    expected = _nll(gs, 0) + _nll(gt, 1) + _nll(real, 2)
    assert losses.ternary_d_loss(gs, gt, real).item() == pytest.approx(expected, rel=1e-5)


def test_ternary_d_loss_known_value():
    # uniform logits: each term is log 3
    z = torch.zeros(2, 3)
    assert losses.ternary_d_loss(z, z, z).item() == pytest.approx(3 * math.log(3), rel=1e-6)


def test_ternary_g_loss(logits3):
    gs, gt, _ = logits3
    expected = _nll(gs, 2) + _nll(gt, 2)
    assert losses.ternary_g_loss(gs, gt).item() == pytest.approx(expected, rel=1e-5)


def test_ternary_losses_respond_to_the_right_class():
    big = 20.0
    # D perfectly right: G(s) -> class 0, G(t) -> class 1, real -> class 2
    gs = torch.tensor([[big, 0.0, 0.0]])
    gt = torch.tensor([[0.0, big, 0.0]])
    real = torch.tensor([[0.0, 0.0, big]])
    assert losses.ternary_d_loss(gs, gt, real).item() < 1e-6
    # ... so the generator is badly off
    assert losses.ternary_g_loss(gs, gt).item() > 2 * big - 1
    # G fooling D: both fakes classified as real
    assert losses.ternary_g_loss(real, real).item() < 1e-6


def test_binary_d_loss(logits2):
    gs, gt, real = logits2
    expected = _nll(gs, 0) + _nll(gt, 0) + _nll(real, 1)
    assert losses.binary_d_loss(gs, gt, real).item() == pytest.approx(expected, rel=1e-5)


def test_binary_g_loss(logits2):
    gs, gt, _ = logits2
    expected = _nll(gs, 1) + _nll(gt, 1)
    assert losses.binary_g_loss(gs, gt).item() == pytest.approx(expected, rel=1e-5)


def test_losses_accept_bf16_logits(logits3):
    gs, gt, real = logits3
    out = losses.ternary_d_loss(gs.bfloat16(), gt.bfloat16(), real.bfloat16())
    assert out.dtype == torch.float32


# ----------------------------------------------------------------------------- L_CONST

A = torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]])
B = torch.tensor([[1.0, 0.0, 2.0], [0.0, -3.0, 4.0]])


def _mse(a, b):
    return sum((x - y) ** 2 for ra, rb in zip(a.tolist(), b.tolist()) for x, y in zip(ra, rb)) / a.numel()


def _cos_dist(a, b):
    out = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        dot = sum(x * y for x, y in zip(ra, rb))
        na = math.sqrt(sum(x * x for x in ra))
        nb = math.sqrt(sum(y * y for y in rb))
        out.append(1 - dot / (na * nb))
    return sum(out) / len(out)


def test_const_loss_mse_by_hand():
    # row 0: diff (0, 2, 0) -> 4; row 1: diff (0, 6, 0) -> 36; mean over 6 entries
    assert _mse(A, B) == pytest.approx(40 / 6)
    assert losses.const_loss(A, B, "mse").item() == pytest.approx(40 / 6, rel=1e-6)
    assert losses.const_loss(A, B).item() == pytest.approx(40 / 6, rel=1e-6)  # mse is the default


def test_const_loss_mse_scale_divides_codes():
    # dividing both codes by s divides the MSE by s^2
    assert losses.const_loss(A, B, "mse", scale=2.0).item() == pytest.approx(40 / 6 / 4, rel=1e-6)


def test_const_loss_cosine_by_hand():
    # row 0: a.b = 1 + 0 + 4 = 5, |a| = 3, |b| = sqrt 5;  row 1: a.b = -9 + 16 = 7, |a| = |b| = 5
    expected = ((1 - 5 / (3 * math.sqrt(5))) + (1 - 7 / 25)) / 2
    assert _cos_dist(A, B) == pytest.approx(expected)
    assert losses.const_loss(A, B, "cosine").item() == pytest.approx(expected, rel=1e-6)
    # cosine is scale-invariant
    assert losses.const_loss(A, B, "cosine", scale=7.0).item() == pytest.approx(expected, rel=1e-5)


def test_const_loss_mse_plus_cosine():
    for scale in (1.0, 3.0):
        expected = _mse(A / scale, B / scale) + _cos_dist(A, B)
        assert losses.const_loss(A, B, "mse+cosine", scale=scale).item() == pytest.approx(expected, rel=1e-5)


def test_const_loss_unknown_distance_raises():
    with pytest.raises(ValueError, match="unknown L_CONST distance"):
        losses.const_loss(A, B, "l1")
    with pytest.raises(ValueError, match="mse"):
        losses.const_loss(A, B, "ce")  # ce is a separate function: const_ce_loss


@pytest.mark.parametrize("distance", ["mse", "cosine", "mse+cosine"])
def test_const_loss_zero_for_equal_codes(distance):
    code = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    assert losses.const_loss(code, code.clone(), distance).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.const_loss(code, code.clone(), distance, scale=4.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("distance", ["mse", "cosine", "mse+cosine"])
def test_const_loss_nonnegative(distance):
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
        assert losses.const_loss(a, b, distance).item() >= 0


def test_const_ce_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    z0 = math.exp(2) + 1 + math.exp(-1)
    z1 = 2 * math.exp(0.5) + math.exp(3)
    expected = (-math.log(math.exp(2) / z0) - math.log(math.exp(3) / z1)) / 2
    assert losses.const_ce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert losses.const_ce_loss(logits, labels).item() >= 0


# ----------------------------------------------------------------------------- L_TID

def test_tid_loss_by_hand():
    t = torch.tensor([[[[1.0, -1.0], [0.0, 0.5]]]])
    gt = torch.tensor([[[[0.0, -1.0], [1.0, 0.5]]]])
    # squared errors 1, 0, 1, 0 -> mean 0.5
    assert losses.tid_loss(t, gt).item() == pytest.approx(0.5)
    assert losses.tid_loss(t, t).item() == 0.0
    assert losses.tid_loss(t, gt).item() >= 0


# ----------------------------------------------------------------------------- L_TV

def _tv_loop(z: torch.Tensor, power: float) -> float:
    """DESIGN §1 literally: sum_ij ((z[i,j+1]-z[i,j])^2 + (z[i+1,j]-z[i,j])^2)^(B/2) per image
    (i, j over the pixels that have both neighbours), averaged over batch and channels."""
    n, c, h, w = z.shape
    totals = []
    for b in range(n):
        for ch in range(c):
            s = 0.0
            for i in range(h - 1):
                for j in range(w - 1):
                    dx = float(z[b, ch, i, j + 1] - z[b, ch, i, j])
                    dy = float(z[b, ch, i + 1, j] - z[b, ch, i, j])
                    s += (dx * dx + dy * dy) ** (power / 2)
            totals.append(s)
    return sum(totals) / len(totals)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_tv_loss_matches_double_loop(power):
    z = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(4))
    assert losses.tv_loss(z, power).item() == pytest.approx(_tv_loop(z, power), rel=1e-5)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_tv_loss_mean_is_the_sum_over_the_pixel_differences_it_sums(power):
    """tv_reduction mean: the per-image sum divided by the (H-1)(W-1) terms it adds, whatever the size."""
    for size in (5, 9):
        z = torch.randn(3, 2, size, size + 1, generator=torch.Generator().manual_seed(size))
        terms = (size - 1) * size
        assert losses.tv_loss(z, power, "mean").item() == pytest.approx(losses.tv_loss(z, power).item() / terms,
                                                                      rel=1e-5)


def test_tv_loss_small_hand_example():
    z = torch.tensor([[[[0.0, 3.0], [4.0, 0.0]]]])
    # one (i, j) = (0, 0): dx = 3, dy = 4 -> sqrt(25) = 5 for B = 1, 25 for B = 2
    assert losses.tv_loss(z, 1.0).item() == pytest.approx(5.0, rel=1e-6)
    assert losses.tv_loss(z, 2.0).item() == pytest.approx(25.0, rel=1e-6)
    assert losses.tv_loss(z).item() == pytest.approx(5.0, rel=1e-6)  # B = 1 is the default


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_tv_loss_constant_image_is_zero(power):
    z = torch.full((2, 1, 8, 8), 0.3)
    assert losses.tv_loss(z, power).item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_tv_loss_nonnegative_and_finite_grad(power):
    z = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    z[0] = 0.0  # flat image: sqrt(0) must not give an infinite/NaN gradient
    z.requires_grad_(True)
    out = losses.tv_loss(z, power)
    assert out.item() >= 0
    out.backward()
    assert torch.isfinite(z.grad).all()


def test_const_kl_loss_known_answers():
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert float(losses.const_kl_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    # uniform vs one-hot-ish: KL(p || q) for p uniform over 2 classes and q = (0.9, 0.1)
    p_logits = torch.tensor([[0.0, 0.0]])
    q_logits = torch.log(torch.tensor([[0.9, 0.1]]))
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(losses.const_kl_loss(p_logits, q_logits)) == pytest.approx(want, rel=1e-5)
    # adding a constant to every logit (the same distribution) changes nothing
    assert float(losses.const_kl_loss(a, a + 3.0)) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- L_LAYOUT (deviation)

def test_class_layout_loss_by_hand():
    # class 0: two images, mean (1, 3), target mean (0, 0): squared distance (1 + 9) / 2 = 5; the two
    # images differ by (2, 2): unbiased variance (2, 2), over n = 2 -> subtract (1 + 1) / 2 = 1 -> 4.
    # class 1: one image only: not used. class 2: absent.
    layout = torch.tensor([[0.0, 2.0], [2.0, 4.0], [7.0, 7.0]])
    classes = torch.tensor([0, 0, 1])
    means = torch.zeros(3, 2)
    assert losses.class_layout_loss(layout, classes, means).item() == pytest.approx(4.0)


def test_class_layout_loss_is_unbiased_so_it_does_not_reward_identical_drawings():
    """Its expectation is the squared distance of the class means alone: drawings scattered around the
    right mean score 0 on average, drawings shifted by 0.5 score 0.25, whatever the batch size."""
    g = torch.Generator().manual_seed(0)
    means = torch.zeros(3, 4)

    def average(shift: float) -> float:
        vals = [losses.class_layout_loss(torch.randn(12, 4, generator=g) + shift,
                                         torch.randint(0, 3, (12,), generator=g), means).item() for _ in range(3000)]
        return sum(vals) / len(vals)

    assert abs(average(0.0)) < 0.02
    assert average(0.5) == pytest.approx(0.25, abs=0.03)


def test_class_layout_loss_pulls_each_class_towards_its_own_mean():
    layout = torch.zeros(4, 2, requires_grad=True)
    means = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    losses.class_layout_loss(layout, torch.tensor([0, 0, 1, 1]), means).backward()
    assert (layout.grad[:2] < 0).all() and (layout.grad[2:] > 0).all()
