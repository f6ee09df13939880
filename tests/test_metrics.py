"""Metrics: transfer accuracy and its confusion matrix, Fréchet LeNet Distance, the registry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.metrics import EvalContext, compute, metric_names
from dtn.metrics.accuracy import confusion_matrix, transfer_accuracy
from dtn.metrics.consistency import f_consistency
from dtn.metrics.fld import frechet_lenet_distance
from dtn.nets import LeNet


class PixelClassifier(nn.Module):
    """A fake classifier whose prediction is written in the image: class = round(x[0, 0, 0] * 10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = (x[:, 0, 0, 0] * 10).round().long()
        return nn.functional.one_hot(cls, self.num_classes).float()

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def images_predicting(preds: list[int]) -> torch.Tensor:
    x = torch.zeros(len(preds), 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float32) / 10
    return x


def test_confusion_matrix_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    cm = confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[1, 0, 1],
                           [0, 1, 0],
                           [0, 1, 2]]  # rows: true label, columns: prediction


def test_transfer_accuracy_known_fraction():
    labels = torch.tensor([0, 1, 2, 3, 3, 4, 5, 9])
    preds = [0, 1, 2, 3, 4, 4, 7, 9]  # 6 of 8 right
    out = transfer_accuracy(PixelClassifier(), images_predicting(preds), labels)
    assert out["transfer_accuracy"] == pytest.approx(6 / 8)
    cm = torch.tensor(out["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 8 and cm.trace() == 6
    assert cm[3, 4] == 1 and cm[5, 7] == 1 and cm[3, 3] == 1


def test_transfer_accuracy_batches_do_not_matter():
    """More images than one evaluation batch (500) give the same answer."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (1203,), generator=g)
    preds = labels.clone()
    wrong = torch.arange(0, 1203, 4)
    preds[wrong] = (preds[wrong] + 1) % 10
    out = transfer_accuracy(PixelClassifier(), images_predicting(preds.tolist()), labels)
    assert out["transfer_accuracy"] == pytest.approx(1 - len(wrong) / 1203)


def test_f_consistency():
    labels = torch.tensor([1, 2, 3, 4])
    assert f_consistency(PixelClassifier(), images_predicting([1, 2, 0, 4]), labels) == pytest.approx(0.75)


def _context(transfer=lambda x: x, n: int = 6):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    # pixel value v maps to x = v / 127.5 - 1; choose v so that x * 10 rounds to the label
    images[:, 0, 0, 0] = ((labels.float() / 10 + 1) * 127.5).round().to(torch.uint8)
    source = Domain(images, labels, "fake", "test")
    target = Domain(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g),
                    torch.full((n,), -1), "fake-target", "test")
    return EvalContext(transfer=transfer, source_test=source, target_test=target, classifier=PixelClassifier(),
                       f=PixelClassifier(), batch_size=4)


def test_registry_computes_by_name():
    calls = []

    def transfer(x):
        calls.append(len(x))
        return x

    ctx = _context(transfer)
    out = compute(["transfer_accuracy", "f_consistency"], ctx)
    assert out["transfer_accuracy"] == pytest.approx(1.0)
    assert out["f_consistency"] == pytest.approx(1.0)
    assert calls == [4, 2], "G(source_test) is computed once, in batches, and shared by the metrics"


def test_registry_unknown_metric_lists_valid_names():
    names = metric_names()
    assert {"transfer_accuracy", "f_consistency", "fld", "source_baseline"} <= set(names)
    with pytest.raises(ConfigError) as info:
        compute(["accuracy_typo"], _context())
    message = str(info.value)
    assert "accuracy_typo" in message
    for name in names:
        assert name in message


# ----------------------------------------------------------------------------- Fréchet LeNet Distance

@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return LeNet().eval()


@pytest.fixture(scope="module")
def images():
    # more samples than LeNet's 256 features, so the covariance has full rank
    return torch.rand(300, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_fld_of_a_set_with_itself_is_zero(lenet, images):
    assert frechet_lenet_distance(lenet, images, images.clone()) == pytest.approx(0.0, abs=1e-3)


def test_fld_grows_with_a_shift(lenet, images):
    near = frechet_lenet_distance(lenet, images, (images + 0.1).clamp(-1, 1))
    far = frechet_lenet_distance(lenet, images, (images * 0.5 + 0.5).clamp(-1, 1))
    assert near > 1e-3
    assert far > near


def test_fld_leaves_classifier_mode(lenet, images):
    lenet.eval()
    frechet_lenet_distance(lenet, images[:260], images[:260])
    assert not lenet.training


def _bar_domain(n: int, seed: int) -> "Domain":
    """Class k: a bright centred horizontal band 2k+2 rows thick on dark noise (1 channel, 32x32);
    thickness, unlike position, survives the classifier's random shifts."""
    from dtn.domain import Domain

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
    for i, k in enumerate(labels.tolist()):
        images[i, :, 15 - k: 17 + k] = 230
    return Domain(images, labels, "bars", "train")


def test_adaptation_accuracy_learns_from_a_faithful_transfer():
    from dtn.metrics.adaptation import adaptation_accuracy

    train, test = _bar_domain(600, 0), _bar_domain(200, 1)
    acc = adaptation_accuracy(lambda x: x, train, test, epochs=4, batch=32)
    assert acc > 0.9


def test_adaptation_accuracy_is_chance_for_a_label_destroying_transfer():
    from dtn.metrics.adaptation import adaptation_accuracy

    train, test = _bar_domain(600, 0), _bar_domain(200, 1)
    acc = adaptation_accuracy(lambda x: torch.roll(x, shifts=2, dims=2) * 0 - 1, train, test, epochs=2, batch=32)
    assert acc < 0.35


@pytest.mark.parametrize("source_channels,target_channels", [(3, 1), (1, 3)])
def test_source_baseline_reads_source_images_in_the_targets_channels(source_channels, target_channels):
    """A 'classifier' that reads the grey level recovers labels encoded as grey levels: accuracy 1.
    RGB source, grey target (synth -> MNIST): greyscaled; grey source, RGB target (the reverse): repeated."""
    labels = torch.arange(10).repeat(7)
    images = (labels * 20 + 10).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, source_channels, 8, 8).contiguous()
    levels = (torch.arange(10) * 20 + 10).float() / 127.5 - 1

    class GreyReader(nn.Module):
        def forward(self, x):
            assert x.shape[1] == target_channels, "source images arrive in the classifier's channels"
            return -(x.mean(dim=(1, 2, 3))[:, None] - levels[None]).abs()

    target = Domain(torch.zeros(4, target_channels, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), "t", "test")
    ctx = EvalContext(transfer=lambda x: x, source_test=Domain(images, labels, "s", "test"), target_test=target,
                      classifier=GreyReader(), batch_size=16)
    assert compute(["source_baseline"], ctx)["source_baseline_accuracy"] == 1.0


# ----------------------------------------------------------------------------- pixel Fréchet distance

def test_pixel_fd_is_zero_for_one_set_and_sees_layout_not_noise():
    """Pooled to 8x8, fine noise averages out (noise around the target's pictures stays close) while
    the same pixels in another layout (flipped upside down) or another colour are far."""
    from dtn.metrics.pixel_fd import pixel_fd
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 32, 1)
    real = (ramp * torch.rand(400, 3, 1, 1, generator=g)).expand(-1, -1, -1, 32).contiguous()
    assert pixel_fd(real, real.clone()) == pytest.approx(0.0, abs=1e-3)
    noisy = (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    flipped = real.flip(2)
    recoloured = (real + 0.3).clamp(-1, 1)
    assert pixel_fd(real, noisy) < 0.2 * pixel_fd(real, flipped)
    assert pixel_fd(real, recoloured) > 3 * pixel_fd(real, noisy)
    with pytest.raises(ValueError, match="one shape"):
        pixel_fd(real, real[:, :1])
