"""The three networks of a DTN (DESIGN.md §2) and the LeNet-style evaluation classifier.

Read top-down: shape helpers, then f (encoder), g (generator), D (discriminator), LeNet.
All sizes come from `NetConfig`; 32 px has three stride-2 blocks, every doubling adds one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class NetConfig:
    image_size: int = 32         # 32, 64, 96 or 128: input of f, output of g, input of D
    source_channels: int = 3     # a 1-channel source is repeated to 3 before f
    target_channels: int = 1     # what g draws (1 for MNIST)
    code_dim: int = 128          # f's code, the input of g
    num_classes: int = 10        # f's classifier head used for pretraining
    # 0 in source_channels, target_channels or num_classes: `dtn run` takes it from the data before
    # building anything (run.fill_from_data), so no net is ever built with a 0 there.
    f_width: int = 64            # channels of f's first block; doubles per block, capped at 512
    g_width: int = 512           # channels of g's first (4x4) block; halves per block
    d_width: int = 128           # channels of D's first block; doubles per block, capped at 512
    d_classes: int = 3           # 3: ternary D (paper); 2: binary fake/real (a deviation)
    leaky_slope: float = 0.2     # D's LeakyReLU slope (0 gives ReLU)
    d_downsample: str = "stride"  # "stride" (conv stride 2) or "maxpool" (conv stride 1 + max-pool)
    g_input_norm: bool = False   # scale each code to unit RMS before g: source and target codes of a
                                 # classifier-trained f differ mostly in length, not direction
    g_code_align: bool = False   # deviation: g reads a source code moved into the target's code distribution
                                 # (per dimension, standardised with the source's mean and std and given the
                                 # target's; measured once at the start), where L_TID has taught g to draw
    d_conditional: bool = False  # deviation: D also reads the class f's head predicts (for G(x), x's class;
                                 # for real t, f's reading of t), so each class must look like that class


def num_blocks(image_size: int) -> int:
    """Stride-2 blocks from image_size down to about 4x4 (3 at 32 px, 4 at 64 px). 96 px takes 5
    blocks and ends at 3x3; the last conv kernel always follows the remaining spatial size."""
    if image_size < 8 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {image_size}")
    return max(1, round(math.log2(image_size / 4)))


def final_size(image_size: int) -> int:
    return image_size // 2 ** num_blocks(image_size)


class Encoder(nn.Module):
    """f: image -> code (N, code_dim). `head` is the classifier used to pretrain it (and for the
    f-consistency metric and the `ce` L_CONST variant)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(num_blocks(cfg.image_size)):
            c_out = min(cfg.f_width * 2 ** i, 512)
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        k = final_size(cfg.image_size)
        layers.append(nn.Conv2d(c_in, cfg.code_dim, k, 1, 0))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(cfg.code_dim, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features(x).flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))


class Generator(nn.Module):
    """g: code (N, code_dim) -> image (N, C_target, size, size) in [-1, 1]."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        n = num_blocks(cfg.image_size)
        k = final_size(cfg.image_size)
        widths = [max(cfg.g_width // 2 ** i, 32) for i in range(n)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(cfg.code_dim, widths[0], k, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.target_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.input_norm = cfg.g_input_norm
        if cfg.g_code_align:      # set by set_alignment; saved and loaded with g's weights
            self.register_buffer("align_scale", torch.ones(cfg.code_dim))
            self.register_buffer("align_shift", torch.zeros(cfg.code_dim))

    def set_alignment(self, source_moments: torch.Tensor, target_moments: torch.Tensor) -> None:
        """Per-dimension (mean, std) rows of f's code on each domain (train.code_moments) -> align's map."""
        scale = target_moments[1] / source_moments[1]
        self.align_scale.copy_(scale)
        self.align_shift.copy_(target_moments[0] - source_moments[0] * scale)

    def align(self, code: torch.Tensor) -> torch.Tensor:
        """A source code as g reads it (nets.g_code_align; the code itself when off). Why: L_TID trains g on
        f's codes of target images only, so where f puts the source elsewhere (a face encoder maps every
        avatar into one narrow cone), g draws from inputs it was never taught, and a face comes out as
        speckle. With loss.code_scale = domain, L_CONST then asks exactly f(g(c)) = c for the aligned code c,
        as L_TID does for f(t)."""
        return code * self.align_scale + self.align_shift if hasattr(self, "align_scale") else code

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if self.input_norm:
            code = F.normalize(code, dim=1) * math.sqrt(code.shape[1])
        return self.net(code[:, :, None, None])


def transfer(f: nn.Module, g: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """G(x) = g(f(x)), with g reading the source code as it was trained to (Generator.align; a stand-in g
    that is not a Generator reads f(x) as it is)."""
    code = f(x)
    return g(g.align(code) if isinstance(g, Generator) else code)


class Discriminator(nn.Module):
    """D: target-domain image -> logits over d_classes (ternary: G(s), G(t), real t).

    Conditional (nets.d_conditional, a deviation): the last conv also gives one set of logits per class,
    and the row of the class given is added to the shared logits (a class-specific linear head, as in
    projection discriminators). Why: an unconditional D accepts a transferred 6 drawn like an MNIST 0 or 5,
    since those are real MNIST shapes; given "f reads this as a 6", D can ask whether it looks like a 6."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.d_downsample not in ("stride", "maxpool"):
            raise ValueError(f"d_downsample must be 'stride' or 'maxpool', got {cfg.d_downsample!r}")
        act = (lambda: nn.LeakyReLU(cfg.leaky_slope, inplace=True)) if cfg.leaky_slope else (lambda: nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = cfg.target_channels
        for i in range(num_blocks(cfg.image_size)):
            c_out = min(cfg.d_width * 2 ** i, 512)
            if cfg.d_downsample == "stride":
                layers.append(nn.Conv2d(c_in, c_out, 3, 2, 1, bias=i == 0))
            else:
                layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=i == 0), nn.MaxPool2d(2)]
            if i > 0:  # no BN on the first block, as in DCGAN
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(act())
            c_in = c_out
        self.num_conditions = cfg.num_classes if cfg.d_conditional else 0
        layers.append(nn.Conv2d(c_in, cfg.d_classes * (1 + self.num_conditions), final_size(cfg.image_size), 1, 0))
        self.net = nn.Sequential(*layers)
        self.d_classes = cfg.d_classes

    def forward(self, x: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(x).flatten(1)
        if not self.num_conditions:
            return out
        if cls is None:
            raise ValueError("a conditional D (nets.d_conditional) needs the class of each image")
        k = self.d_classes
        per_class = out[:, k:].view(-1, self.num_conditions, k)
        return out[:, :k] + per_class.gather(1, cls.view(-1, 1, 1).expand(-1, 1, k)).squeeze(1)


class LeNet(nn.Module):
    """The evaluation classifier (DESIGN §3): trained on the target domain's labels, it reads G(x).
    `features` (256-d, penultimate) feed the Fréchet LeNet Distance."""

    num_features = 256

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(128 * 16, self.num_features), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.num_features, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) BN scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_images(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 (N, H, W, C)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_float(u8: torch.Tensor) -> torch.Tensor:
    """uint8 images (any layout) -> float in [-1, 1], the range every net here reads and writes (the
    inverse of to_images' scaling). A new tensor: the caller's images are never changed."""
    return u8.float().div(127.5).sub_(1.0)


def from_images(x: torch.Tensor, size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, size, size) in [-1, 1]; resizes and converts channels."""
    x = to_float(x.permute(0, 3, 1, 2))
    if channels is not None and x.shape[1] != channels:
        x = grey(x) if channels == 1 else x.expand(-1, channels, -1, -1)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def grey(x: torch.Tensor) -> torch.Tensor:
    """RGB -> luminance (ITU-R 601), keeping the [-1, 1] range."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)
