"""The supervised loop that pretrains f and the evaluation LeNet."""
from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.nets import Encoder, NetConfig, init_weights
from dtn.pretrain import accuracy, train_classifier


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
    said: list[str] = []
    train_classifier(f, f.classify, domain, steps=60, batch=32, lr=3e-3,
                     augment=lambda x, g: x, seed=0, desc="bars classifier", say=said.append)
    after = accuracy(f.classify, domain)
    assert after > 0.9 and after > before
    # a few steps in it says, once, how long the rest takes (minutes for f or the reader on a CPU)
    assert len(said) == 1 and re.fullmatch(r"bars classifier: \d+\.\d\d s per step, about \d+ s to go", said[0])


# ----------------------------------------------------------------------------- self-training (f_self_train)

class _FixedLogits(torch.nn.Module):
    """A stand-in f whose classify() returns preset logits for image i (its first pixel holds i)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[((x[:, 0, 0, 0] + 1) / 2 * 255).round().long()]


def test_pseudo_labels_keep_the_most_confident_share_of_each_class():
    from dtn.pretrain import pseudo_labels
    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    logits = torch.zeros(n, 2)
    logits[:30, 0] = torch.linspace(1, 30, 30)          # 30 images predicted class 0, rising confidence
    logits[30:, 1] = torch.linspace(1, 10, 10)          # 10 predicted class 1
    idx, labels = pseudo_labels(_FixedLogits(logits), Domain(images, torch.full((n,), -1), "t", "train"), share=0.25)
    assert sorted(idx[labels == 0].tolist()) == list(range(25, 30))   # 0.25 * 40 / 2 = 5 per class, the top 5
    assert sorted(idx[labels == 1].tolist()) == list(range(35, 40))
    assert len(idx) == 10
    with pytest.raises(ConfigError, match="pretrain.reader_class_share: a share of 0.02 of 40 t images"):
        pseudo_labels(_FixedLogits(logits), Domain(images, torch.full((n,), -1), "t", "train"), share=0.02,
                      option="pretrain.reader_class_share")       # 0.02 * 40 / 2 < 1 image per class


def _digit_like(n: int, channels: int, seed: int) -> Domain:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    images = (torch.rand(n, channels, 32, 32, generator=g) * 60).to(torch.uint8)
    images[labels == 1, :, 8:24, 8:24] += 150                          # class 1: a bright square
    return Domain(images, labels, "toy", "train")


def test_self_training_adapts_f_without_reading_target_labels():
    from dtn.config import PretrainConfig
    from dtn.pretrain import self_train_f
    cfg = PretrainConfig(f_batch=16, f_self_train=2, f_self_train_steps=3)
    net = NetConfig(num_classes=2)
    source, target = _digit_like(64, 3, 0), _digit_like(48, 1, 1)
    hidden = Domain(target.images, torch.full((48,), -1), "toy", "train")
    results = []
    for t in (target, hidden):
        torch.manual_seed(0)
        f = Encoder(net)
        init_weights(f)
        before = {k: v.clone() for k, v in f.state_dict().items()}
        rounds = self_train_f(f, cfg, source, t, seed=0)
        results.append((f.state_dict(), rounds))
    (a, rounds), (b, _) = results
    assert all(torch.equal(a[k], b[k]) for k in a)                      # labels or none: the same f
    assert any(not torch.equal(a[k], before[k]) for k in a)             # and f did change
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["pseudo_labelled"] > rounds[0]["pseudo_labelled"]
    assert not f.training


def test_self_training_needs_a_softmax_f_and_names_itself_in_f_cache_key():
    import pytest

    from dtn.config import apply_overrides, preset
    from dtn.errors import ConfigError
    with pytest.raises(ConfigError, match="f_self_train needs f_head softmax"):
        apply_overrides(preset("faces"), {"pretrain.f_self_train": "2"})
    from dtn.run import Domains, f_cache_key
    d = _digit_like(8, 3, 0)
    domains = Domains(d, d, _digit_like(8, 1, 1), d)
    plain = f_cache_key(preset("tiny"), domains)
    adapted = f_cache_key(apply_overrides(preset("tiny"), {"pretrain.f_self_train": "3"}), domains)
    assert "-st" not in plain and adapted.startswith(plain) and "-st3x400-mnist-" in adapted


def test_target_reader_learns_f_s_confident_readings_of_the_target(reads_brightness):
    """The reader sees only target images, labelled by f where f is sure; the unsure ones are left out."""
    from dtn.config import PretrainConfig
    from dtn.pretrain import train_target_reader

    g = torch.Generator().manual_seed(0)
    levels = torch.cat([torch.randint(0, 60, (40,), generator=g), torch.randint(196, 256, (40,), generator=g),
                        torch.full((10,), 128)])                       # the last 10 are grey: f is unsure
    images = (levels.view(-1, 1, 1, 1) + torch.randint(0, 8, (90, 1, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    target = Domain(images, torch.full((90,), -1), "t", "train")
    cfg = PretrainConfig(reader_steps=60, reader_min_confidence=0.95, f_batch=32, f_lr=3e-3)
    reader, pseudo = train_target_reader(NetConfig(image_size=16, f_width=8, code_dim=16, num_classes=2), cfg,
                                         reads_brightness(sharpness=20), target)
    assert len(pseudo) == 80 and pseudo.labels.tolist() == [0] * 40 + [1] * 40
    assert not reader.training
    assert accuracy(reader.classify, pseudo) == 1.0


def test_an_adversarial_reader_trains_on_nudged_images(reads_brightness, monkeypatch):
    """pretrain.reader_adversarial reaches train_classifier: the second half of each batch the reader
    learns from is moved off the augmented images by up to eps, the first half is not."""
    from dtn import pretrain
    from dtn.config import PretrainConfig

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = pretrain.adversarial_half

    def spy(logits_fn, x, labels, eps, generator):
        out = real(logits_fn, x, labels, eps, generator)
        seen.append((x, out))
        return out
    monkeypatch.setattr(pretrain, "adversarial_half", spy)
    g = torch.Generator().manual_seed(0)
    images = torch.cat([torch.randint(0, 60, (20, 1, 16, 16), generator=g),
                        torch.randint(196, 256, (20, 1, 16, 16), generator=g)]).to(torch.uint8)
    target = Domain(images, torch.full((40,), -1), "t", "train")
    net = NetConfig(image_size=16, f_width=8, code_dim=16, num_classes=2)
    for eps in (0.0, 0.25):
        seen.clear()
        cfg = PretrainConfig(reader_steps=3, reader_min_confidence=0.95, f_batch=8, reader_adversarial=eps)
        pretrain.train_target_reader(net, cfg, reads_brightness(sharpness=20), target)
        assert len(seen) == 3
        for x, out in seen:
            assert torch.equal(out[:4], x[:4])
            moved = (out[4:] - x[4:]).abs().max()
            assert (moved == 0) if eps == 0 else (0.1 < moved <= eps + 1e-6)


def test_a_class_share_reader_learns_every_class_where_a_threshold_keeps_only_one(reads_brightness):
    """pretrain.reader_class_share: f is sure only of its bright readings (as f was sure only of Fashion-
    MNIST trousers), so the threshold leaves the reader one class; the class-balanced choice gives it both."""
    from dtn.config import PretrainConfig
    from dtn.pretrain import train_target_reader

    g = torch.Generator().manual_seed(0)
    levels = torch.cat([torch.randint(100, 120, (40,), generator=g), torch.randint(240, 250, (40,), generator=g)])
    images = (levels.view(-1, 1, 1, 1) + torch.randint(0, 6, (80, 1, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    target = Domain(images, torch.full((80,), -1), "t", "train")
    net, f = NetConfig(image_size=16, f_width=8, code_dim=16, num_classes=2), reads_brightness(sharpness=5)
    by_threshold = PretrainConfig(reader_steps=60, reader_min_confidence=0.95, f_batch=32, f_lr=3e-3)
    _, pseudo = train_target_reader(net, by_threshold, f, target)
    assert pseudo.labels.unique().tolist() == [1]
    reader, pseudo = train_target_reader(net, replace(by_threshold, reader_class_share=0.5), f, target)
    assert torch.bincount(pseudo.labels).tolist() == [20, 20]         # 0.5 x 80 / 2 classes, the surest of each
    assert (pseudo.images[pseudo.labels == 0].float().mean((1, 2, 3)) < 130).all()   # the dark ones are class 0
    truth = Domain(images, (levels > 180).long(), "t", "test")
    assert accuracy(reader.classify, truth) == 1.0


class _PointReader(torch.nn.Module):
    """A stand-in reader whose code is an image's first two pixels and whose head misreads the half of
    cluster B nearest A as A (its boundary is bent, as f's confusions bend the reader's)."""

    def forward(self, x):
        return x.flatten(1)[:, :2] + 1

    def head(self, code):
        return torch.stack([20 * (code[:, 0] - code[:, 1] + 1.3), torch.zeros(len(code))], 1)


def _two_clusters(n: int = 40) -> tuple[Domain, torch.Tensor]:
    """n images of cluster A (pixel 0 bright, pixel 1 dark) then n of cluster B (the other way round,
    pixel 1 spread from mid-grey to bright); labels unknown (-1). Also the true clusters."""
    g = torch.Generator().manual_seed(0)
    a = torch.stack([torch.randint(210, 240, (n,), generator=g), torch.randint(15, 40, (n,), generator=g)], 1)
    b = torch.stack([torch.randint(15, 40, (n,), generator=g), torch.linspace(120, 240, n).long()], 1)
    pixels = torch.cat([a, b]).to(torch.uint8)
    images = torch.cat([pixels, pixels], 1).view(-1, 1, 2, 2)
    return Domain(images, torch.full((2 * n,), -1), "t", "train"), torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_centroid_labels_follow_the_clusters_not_the_head_s_bent_boundary():
    from dtn.pretrain import centroid_labels

    target, truth = _two_clusters()
    reader = _PointReader()
    head_reading = torch.cat([reader.head(reader(x)).argmax(1) for x, _ in target.in_order(100)])
    assert (head_reading != truth).sum() >= 10                        # the head misreads part of B as A
    assert torch.equal(centroid_labels(reader, target), truth)        # the clusters put them back


def test_refine_reader_undoes_f_s_confident_mistakes_without_target_labels(reads_brightness):
    """f reads a bright image as bright only beyond a too-high threshold, so it is sure that the dimmer
    bright images are dark and the reader learns that; refining on all targets (labels -1: reading them
    would fail) moves them back to their cluster. The head stays as it was."""
    from dtn.config import PretrainConfig
    from dtn.pretrain import refine_reader, train_target_reader

    class ReadsTooDark(reads_brightness):
        def classify(self, x):
            return super().classify(x - 0.6)

    g = torch.Generator().manual_seed(0)
    levels = torch.cat([torch.randint(0, 60, (60,), generator=g), torch.randint(150, 256, (60,), generator=g)])
    images = (levels.view(-1, 1, 1, 1) + torch.randint(0, 8, (120, 1, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    target, truth = Domain(images, torch.full((120,), -1), "t", "train"), (levels >= 150).long()
    net = NetConfig(image_size=16, f_width=8, code_dim=16, num_classes=2)
    reader, _ = train_target_reader(net, PretrainConfig(reader_steps=60, reader_min_confidence=0.95, f_batch=32,
                                                        f_lr=3e-3), ReadsTooDark(sharpness=20), target)

    def read() -> float:
        return (torch.cat([reader.classify(x).argmax(1) for x, _ in target.in_order(120)]) == truth).float().mean().item()

    before, head = read(), [p.clone() for p in reader.head.parameters()]
    refine_reader(reader, target, steps=60, batch=32, relabel_every=20)
    assert before <= 0.9 and read() >= 0.97, (before, read())
    assert all(torch.equal(a, b) for a, b in zip(head, reader.head.parameters()))
    assert all(p.requires_grad for p in reader.parameters()) and not reader.training


class _FixedProbs(torch.nn.Module):
    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(probs).log()

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_a_reader_ensemble_reads_the_normalised_product_of_its_readers():
    """Two readers that disagree cancel out; one that is unsure leaves the other's reading, softened."""
    from dtn.pretrain import ReaderEnsemble
    x = torch.zeros(3, 1, 4, 4)
    split = ReaderEnsemble([_FixedProbs([0.9, 0.1]), _FixedProbs([0.1, 0.9])]).classify(x).softmax(1)
    assert torch.allclose(split, torch.full((3, 2), 0.5))
    softened = ReaderEnsemble([_FixedProbs([0.9, 0.1]), _FixedProbs([0.5, 0.5])]).classify(x).softmax(1)
    assert torch.allclose(softened[0], torch.tensor([0.75, 0.25]))       # sqrt(.45) : sqrt(.05) = 3 : 1

