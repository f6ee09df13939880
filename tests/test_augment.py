"""The augmentations of pretraining: f's source-only one, the reader's, L_CONST's shift."""
from __future__ import annotations

import torch

from dtn.augment import (READER_AUGMENTS, adversarial_half, augment_source, elastic_speckle_augment, elastic_warp, lowpass,
                         shift_augment, speckle_augment)
from dtn.config import READER_AUGMENT_NAMES


def _images(n: int = 16, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_augment_source_keeps_shape_and_range_and_is_seeded():
    x = _images()
    a = augment_source(x, torch.Generator().manual_seed(3))
    b = augment_source(x, torch.Generator().manual_seed(3))
    c = augment_source(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_elastic_warp_moves_pixels_only_when_chosen():
    x = _images(8)
    assert torch.equal(elastic_warp(x, torch.Generator().manual_seed(0), p=0.0), x)
    warped = elastic_warp(x, torch.Generator().manual_seed(0), p=1.0)
    assert warped.shape == x.shape
    assert ((warped - x).abs().flatten(1).amax(1) > 0.05).all()  # every image changed
    # a zero-strength field is the identity warp (up to grid_sample's rounding)
    same = elastic_warp(x, torch.Generator().manual_seed(0), strength=0.0, p=1.0)
    assert torch.allclose(same, x, atol=1e-5)


def test_elastic_warp_keeps_a_flat_image_flat():
    """Padding uses the image's own border colour, so a warp never drags black in from outside."""
    x = torch.full((4, 1, 32, 32), 0.3)
    assert torch.allclose(elastic_warp(x, torch.Generator().manual_seed(1), strength=0.3, p=1.0), x, atol=1e-5)


def test_shift_augment_pads_with_black_or_the_border():
    x = torch.ones(2, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    shifted = [shift_augment(x, gen) for _ in range(20)]
    assert any((s == -1).any() for s in shifted)  # some shift pads with black
    assert all(torch.equal(shift_augment(x, gen, edge=True), x) for _ in range(5))


def test_speckle_augment_adds_bright_specks_to_about_half_the_images_and_is_seeded():
    x = torch.full((200, 1, 16, 16), -1.0)                       # black images: shifting changes nothing
    a = speckle_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, speckle_augment(x, torch.Generator().manual_seed(1)))
    assert a.min() >= -1 and a.max() <= 1
    specks = (a > -0.9).flatten(1).sum(1)
    speckled = specks > 0
    assert 0.35 < speckled.float().mean() < 0.65                 # p = 0.5 of the images
    assert 2 < specks[speckled].float().mean() < 16              # density 0.03 of 256 pixels (some dim specks fall below -0.9)


def test_elastic_speckle_augment_warps_every_chosen_image_and_adds_specks():
    x = torch.full((200, 1, 16, 16), -1.0)
    x[:, :, 4:12, 7:9] = 1.0                                     # a bar: warping moves its edges
    gen = lambda: torch.Generator().manual_seed(2)              # noqa: E731
    a = elastic_speckle_augment(x, gen())
    assert torch.equal(a, elastic_speckle_augment(x, gen())) and a.min() >= -1 and a.max() <= 1
    outside = (a > -0.9) & (x == -1.0)                          # lit pixels where the image was black
    assert 0.6 < (outside.flatten(1).sum(1) > 0).float().mean() <= 1.0    # warped (p .7) or speckled (p .5)
    assert not torch.equal(a, speckle_augment(x, gen()))


def test_every_reader_augment_name_the_config_accepts_has_a_function():
    assert tuple(READER_AUGMENTS) == READER_AUGMENT_NAMES


def test_lowpass_removes_detail_finer_than_its_factor_and_keeps_coarse_shapes():
    x = _images(2, size=16)
    assert torch.equal(lowpass(x, 1), x)
    checker = (torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2 * 2.0 - 1   # 1-px checkerboard
    flat = lowpass(checker.expand(1, 3, 16, 16), 4)
    assert flat.shape == (1, 3, 16, 16) and flat.abs().max() < 1e-6               # averages to 0 everywhere
    halves = torch.ones(1, 1, 16, 16)
    halves[..., :, :8] = -1                                                      # an edge on the 4-px grid
    low = lowpass(halves, 4)
    assert (low[..., :, :2] == -1).all() and (low[..., :, -2:] == 1).all()       # far from the edge: kept
    assert torch.allclose(low.mean(), halves.mean())
    x.requires_grad_(True)
    lowpass(x, 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


class _Linear(torch.nn.Module):
    """A stand-in reader: a linear map of the pixels to 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(32 * 32, 10)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.w(x.flatten(1))


def test_adversarial_half_nudges_only_the_second_half_within_eps_and_against_the_reader():
    torch.manual_seed(1)               # not 0: _images uses seed 0, and weights drawn alike read them too well
    reader, x, labels = _Linear(), _images(8, channels=1), torch.arange(8) % 10
    moved = adversarial_half(reader.classify, x, labels, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(moved[:4], x[:4])
    step = (moved[4:] - x[4:]).abs()
    assert step.max() <= 0.3 + 1e-6 and step.mean() > 0.1 and moved.min() >= -1 and moved.max() <= 1
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(reader.classify(x[4:]), labels[4:])
        after = torch.nn.functional.cross_entropy(reader.classify(moved[4:]), labels[4:])
    assert after > before + 0.1                      # the nudge is against the reader, not random
    assert all(p.grad is None for p in reader.parameters())   # finding it leaves no gradient behind
    assert not moved.requires_grad
    assert adversarial_half(reader.classify, x, labels, 0.0, torch.Generator()) is x
