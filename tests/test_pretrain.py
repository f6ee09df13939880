"""f's source-only augmentation and the supervised loop that pretrains f and the evaluation LeNet."""
from __future__ import annotations

import torch

from dtn.domain import Domain
from dtn.nets import Encoder, NetConfig, init_weights
from dtn.pretrain import accuracy, augment_source, elastic_warp, shift_augment, train_classifier


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


def test_train_classifier_learns_a_separable_source():
    """Class k is a bright row at 2k+6: f must reach high accuracy in a few dozen steps."""
    n = 200
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, :, 2 * k + 6] = 255
    domain = Domain(images, labels, "bars", "train")
    torch.manual_seed(0)
    f = Encoder(NetConfig(f_width=8, code_dim=16))
    init_weights(f)
    before = accuracy(f.classify, domain)
    train_classifier(f, f.classify, domain, steps=60, batch=32, lr=3e-3,
                     augment=lambda x, g: x, seed=0, desc="test")
    after = accuracy(f.classify, domain)
    assert after > 0.9 and after > before
