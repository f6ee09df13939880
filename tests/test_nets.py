"""Shapes of f, g, D and LeNet at every supported size, and the uint8 <-> [-1, 1] conversions."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dtn.nets import (Discriminator, Encoder, Generator, LeNet, NetConfig, count_parameters, final_size,
                      from_images, grey, init_weights, num_blocks, to_images)

SIZES = [32, 64, 96, 128]


def small(image_size: int, **kw) -> NetConfig:
    return NetConfig(image_size=image_size, f_width=4, g_width=32, d_width=4, code_dim=8, **kw)


@pytest.mark.parametrize("size,blocks", [(32, 3), (64, 4), (96, 5), (128, 5)])
def test_num_blocks(size, blocks):
    assert num_blocks(size) == blocks
    assert final_size(size) * 2 ** blocks == size


@pytest.mark.parametrize("size", [0, 4, 30, 33])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size"):
        num_blocks(size)


@pytest.mark.parametrize("size", SIZES)
def test_encoder_shape(size):
    cfg = small(size)
    f = Encoder(cfg).eval()
    with torch.no_grad():
        assert f(torch.randn(2, 3, size, size)).shape == (2, cfg.code_dim)
        assert f.classify(torch.randn(2, 3, size, size)).shape == (2, cfg.num_classes)


@pytest.mark.parametrize("size", [32, 64])
def test_encoder_repeats_one_channel(size):
    f = Encoder(small(size)).eval()
    x1 = torch.randn(3, 1, size, size)
    with torch.no_grad():
        a = f(x1)
        b = f(x1.repeat(1, 3, 1, 1))
    assert a.shape == (3, 8)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shape_and_range(size, channels):
    cfg = small(size, target_channels=channels)
    g = Generator(cfg)
    init_weights(g)
    with torch.no_grad():
        out = g(torch.randn(2, cfg.code_dim) * 10)
    assert out.shape == (2, channels, size, size)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_discriminator_shape(size, downsample):
    cfg = small(size, d_downsample=downsample)
    d = Discriminator(cfg).eval()
    with torch.no_grad():
        assert d(torch.randn(2, 1, size, size)).shape == (2, 3)
    cfg2 = small(size, d_classes=2, target_channels=3, d_downsample=downsample)
    with torch.no_grad():
        assert Discriminator(cfg2).eval()(torch.randn(2, 3, size, size)).shape == (2, 2)


def test_conditional_discriminator_adds_the_given_class_row():
    """Shared logits plus the row of the class given: another class, other logits; the unconditional
    part is the same conv, and a missing class is an error, not a silent unconditional D."""
    cfg = small(32, d_conditional=True, num_classes=4)
    d = Discriminator(cfg).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        raw = d.net(x).flatten(1)
        assert raw.shape == (3, 3 * 5)
        cls = torch.tensor([0, 3, 1])
        out = d(x, cls)
        expected = raw[:, :3] + torch.stack([raw[i, 3 + 3 * c: 6 + 3 * c] for i, c in enumerate(cls.tolist())])
        assert out.shape == (3, 3) and torch.allclose(out, expected)
        assert not torch.allclose(out, d(x, torch.tensor([1, 0, 2])))
    with pytest.raises(ValueError, match="d_conditional"):
        d(x)


def test_discriminator_rejects_unknown_downsample():
    with pytest.raises(ValueError, match="d_downsample"):
        Discriminator(small(32, d_downsample="avgpool"))


def test_discriminator_activation():
    leaky = Discriminator(small(32, leaky_slope=0.1))
    assert {m.negative_slope for m in leaky.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}
    relu = Discriminator(small(32, leaky_slope=0.0))
    assert not any(isinstance(m, nn.LeakyReLU) for m in relu.modules())
    assert any(isinstance(m, nn.ReLU) for m in relu.modules())


def test_full_size_digits_nets():
    """The default 32 px architecture of DESIGN §2: f 64-128-256 -> 128, g 512-256-128 -> 1, D 128-256-512 -> 3."""
    cfg = NetConfig()
    f, g, d = Encoder(cfg), Generator(cfg), Discriminator(cfg)
    assert [m.out_channels for m in f.features if isinstance(m, nn.Conv2d)] == [64, 128, 256, 128]
    assert [m.out_channels for m in g.net if isinstance(m, nn.ConvTranspose2d)] == [512, 256, 128, 1]
    assert [m.out_channels for m in d.net if isinstance(m, nn.Conv2d)] == [128, 256, 512, 3]
    assert count_parameters(f) > 0


def test_g_input_norm_makes_g_ignore_code_length():
    if "g_input_norm" not in NetConfig.__dataclass_fields__:
        pytest.skip("no g_input_norm option")
    cfg = small(32, g_input_norm=True)
    g = Generator(cfg).eval()
    code = torch.randn(3, cfg.code_dim)
    with torch.no_grad():
        torch.testing.assert_close(g(code), g(code * 7.0))
        plain = Generator(small(32)).eval()
        plain.load_state_dict(g.state_dict())
        assert not torch.allclose(plain(code), plain(code * 7.0))


@pytest.mark.parametrize("channels", [1, 3])
def test_lenet_shapes(channels):
    net = LeNet(in_channels=channels).eval()
    x = torch.randn(4, channels, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (4, 10)
        assert net.features(x).shape == (4, LeNet.num_features)
    with torch.no_grad():
        assert LeNet(num_classes=7).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_init_weights():
    torch.manual_seed(0)
    g = Generator(NetConfig())
    init_weights(g)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert all(abs(m.weight.std().item() - 0.02) < 0.005 for m in convs)
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(abs(m.weight.mean().item() - 1.0) < 0.01 and torch.all(m.bias == 0) for m in bns)


# ----------------------------------------------------------------------------- image conversion

@pytest.mark.parametrize("channels", [1, 3])
def test_images_round_trip(channels):
    u8 = torch.randint(0, 256, (5, 8, 8, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = from_images(u8)
    assert x.shape == (5, channels, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(to_images(x), u8)


def test_from_images_endpoints():
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1)
    x = from_images(u8)
    assert x.flatten().tolist() == [-1.0, 1.0]


def test_to_images_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).view(1, 1, 1, 5)
    assert to_images(x).flatten().tolist() == [0, 0, 128, 255, 255]  # 0 -> 127.5, rounded half to even
    assert to_images(x).shape == (1, 1, 5, 1)


def test_from_images_resize_and_channels():
    u8 = torch.full((2, 28, 28, 3), 200, dtype=torch.uint8)
    x = from_images(u8, size=32, channels=1)
    assert x.shape == (2, 1, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 200 / 127.5 - 1), atol=1e-4, rtol=0)
    g = from_images(torch.full((1, 4, 4, 1), 0, dtype=torch.uint8), channels=3)
    assert g.shape == (1, 3, 4, 4)


def test_grey_weights():
    x = torch.stack([torch.full((2, 2), v) for v in (1.0, -1.0, 0.5)]).unsqueeze(0)
    expected = 0.299 * 1.0 + 0.587 * -1.0 + 0.114 * 0.5
    assert grey(x).shape == (1, 1, 2, 2)
    assert math.isclose(grey(x)[0, 0, 0, 0].item(), expected, rel_tol=1e-6)
    one = torch.randn(1, 1, 2, 2)
    assert grey(one) is one
