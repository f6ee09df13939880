"""Classifiers trained before the DTN: f on the labeled source, and the evaluation LeNet on the target.

f's code is what L_CONST preserves, so f must read *digits*, not colours: its augmentation (random
grey, inversion, shifts, contrast) only uses source images and labels, never the target domain.
For faces f is an identity encoder: pretrain.f_head cosface/arcface trains it with a margin softmax
(MarginPretraining, losses.margin_logits) so that photos of one person cluster by angle, also for the
held-out people it never saw; mirror flips (f_flip) add views of each identity.
The evaluation classifier is cached by a checksum of its training data, so every run shares it.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .augment import READER_AUGMENTS, adversarial_half, augment_source, random_flip, shift_augment
from .config import PretrainConfig
from .data.base import cache_root
from .domain import Domain
from .errors import ConfigError
from .losses import category_loss, margin_logits
from .nets import Encoder, LeNet, NetConfig, init_weights
from .progress import duration, progress
from .weights import load_weights, save_weights

#: Bump when pretraining changes what f learns (augmentation, loop): part of the f cache key.
PRETRAIN_VERSION = 3


def f_augmentation(cfg: PretrainConfig):
    """f's pretraining augmentation, (x, generator) -> x: augment_source (digits) or shift_augment,
    after random_flip when cfg.f_flip."""
    base = augment_source if cfg.f_augment else shift_augment
    if not cfg.f_flip:
        return base

    def flipped(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return base(random_flip(x, generator), generator)
    return flipped


def _lr_at(step: int, total: int, lr: float) -> float:
    """Linear warm-up over 5 % then cosine decay: a robust schedule for short classifier runs."""
    warm = max(1, total // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_classifier(model: nn.Module, logits_fn, domain: Domain, steps: int, batch: int, lr: float,
                     augment, seed: int, desc: str, autocast_dtype=None, loss_fn=None,
                     say: Callable[[str], None] | None = None, adversarial: float = 0.0) -> None:
    """A plain supervised loop: AdamW over model's parameters, warm-up + cosine, random-index batches;
    the loss is cross-entropy of logits_fn(x), or loss_fn(x, labels) when given (a margin softmax or the
    avatar estimator's per-category heads need the labels). `say` (default: print) hears, a few steps
    in, how long the rest will take on this device (measured, not guessed): f, the reader and the
    evaluation classifier can take many minutes on a CPU and would otherwise train in silence where
    no progress bar is shown (a log file, --quiet). `adversarial` > 0 trains half of each batch on
    augment.adversarial_half's nudged images (the target reader's pretrain.reader_adversarial)."""
    say = say or print
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    device = domain.images.device
    model.train()
    clock, timed = time.perf_counter(), min(20, max(1, steps // 20))
    for step in progress(range(steps), desc=desc):
        if say and step == timed:
            per_step = (time.perf_counter() - clock) / timed
            say(f"{desc}: {per_step:.2f} s per step, about {duration(per_step * (steps - timed))} to go")
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        x, y = domain.sample(batch, gen)
        x = augment(x, gen)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            x = adversarial_half(logits_fn, x, y, adversarial, gen)
            loss = loss_fn(x, y) if loss_fn is not None else F.cross_entropy(logits_fn(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def accuracy(logits_fn, domain: Domain, batch: int = 1000) -> float:
    correct = 0
    for x, y in domain.in_order(batch):
        correct += (logits_fn(x).argmax(1) == y).sum().item()
    return correct / max(1, len(domain))


class MarginPretraining(nn.Module):
    """f plus the class centres of a margin softmax (pretrain.f_head cosface/arcface), for pretraining only.

    The margin loss shapes the angle of f's code; f's own softmax head is trained beside it on the
    *detached* code, so f.classify stays a working classifier of the training classes (f_consistency,
    the `ce` L_CONST variant) without pulling on the code. The centres are dropped afterwards:
    f.safetensors holds exactly what a softmax-pretrained f holds.

    With `target_options` (pretrain.f_target_options, a deviation) every step also reads a batch of
    generated target images and predicts the options each was drawn with (a linear head per category on
    f's code, dropped afterwards too). Why: an identity encoder maps every avatar into one narrow cone
    (mean cosine 0.85 to their centroid, against 0.11 for faces), so L_CONST cannot tell one avatar from
    another; reading hair, skin and eyes off f's code forces the code to vary over avatars. Both domains
    go through f in one batch, so its BatchNorm statistics cover both."""

    def __init__(self, f: Encoder, num_classes: int, cfg: PretrainConfig, target_options: Domain | None = None,
                 option_sizes: Sequence[int] = (), seed: int = 0) -> None:
        super().__init__()
        self.f = f
        code_dim = f.head[-1].in_features
        self.centres = nn.Parameter(torch.randn(num_classes, code_dim) * 0.01)
        self.kind, self.margin, self.scale = cfg.f_head, cfg.f_margin, cfg.f_scale
        self.target, self.option_sizes = target_options, list(option_sizes)
        self.options_head = nn.Linear(code_dim, sum(self.option_sizes)) if target_options is not None else None
        self.generator = torch.Generator().manual_seed(seed + 29)
        # colours are options (hair, skin), so the target images get no grey or inversion: shifts on the
        # white page (edge padding), after a mirror flip when the faces get one
        self.flip = cfg.f_flip

    def augment_target(self, x: torch.Tensor) -> torch.Tensor:
        return shift_augment(random_flip(x, self.generator) if self.flip else x, self.generator, edge=True)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.target is not None:
            xt, options = self.target.sample(n, self.generator)
            x = torch.cat([x, self.augment_target(xt)])
        code = self.f(x)
        face = code[:n]
        logits = margin_logits(face, self.centres, labels, self.kind, self.margin, self.scale)
        loss = F.cross_entropy(logits, labels) + F.cross_entropy(self.f.head(face.detach()).float(), labels)
        if self.target is not None:
            per_category = self.options_head(code[n:].float()).split(self.option_sizes, dim=1)
            loss = loss + category_loss(list(per_category), options)
        return loss


def pretrain_f(net_cfg: NetConfig, cfg: PretrainConfig, source: Domain, seed: int = 0,
               autocast_dtype=None, target_options: Domain | None = None, option_sizes: Sequence[int] = ()) -> Encoder:
    """f as a classifier on the labeled source (softmax, or a margin softmax on its code's angle);
    returned in eval mode, to be frozen by the caller. target_options (generated target images with the
    option vectors they were drawn with) adds the option-reading task of MarginPretraining."""
    torch.manual_seed(seed)
    f = Encoder(net_cfg).to(source.images.device)
    init_weights(f)
    augment = f_augmentation(cfg)
    if cfg.f_head == "softmax":
        if target_options is not None:
            raise ValueError("target options are read with a margin head only (pretrain.f_target_options)")
        train_classifier(f, f.classify, source, cfg.f_steps, cfg.f_batch, cfg.f_lr, augment, seed,
                         "pretrain f", autocast_dtype)
        return f
    model = MarginPretraining(f, net_cfg.num_classes, cfg, target_options, option_sizes, seed).to(source.images.device)
    train_classifier(model, None, source, cfg.f_steps, cfg.f_batch, cfg.f_lr, augment, seed,
                     f"pretrain f ({cfg.f_head})", autocast_dtype, loss_fn=model.loss)
    return f.eval()


def read_targets(f: Encoder, target: Domain, batch: int = 1000):
    """(images, f's class logits) for every target image once, in order. f reads in eval mode (a
    trainable f without its head's dropout) and is put back as it was."""
    was_training = f.training
    f.eval()
    try:
        for x, _ in target.in_order(batch):
            yield x, f.classify(x)
    finally:
        f.train(was_training)


@torch.no_grad()
def confident_readings(f: Encoder, target: Domain, min_confidence: float, option: str, batch: int = 1000) -> Domain:
    """The target images f's head reads with at least `min_confidence` (softmax), labelled with f's reading
    (target.labels are not read). `option` names the setting in the error raised when no image passes."""
    probs = torch.cat([logits.float().softmax(1) for _, logits in read_targets(f, target, batch)])
    confidence, predicted = probs.max(1)
    idx = torch.nonzero(confidence >= min_confidence).flatten()
    if not len(idx):
        raise ConfigError(f"{option}={min_confidence}: f reads none of the {len(target):,} {target.name} images "
                          f"that confidently; lower it")
    return labelled_subset(target, idx, predicted[idx])


def labelled_subset(target: Domain, idx: torch.Tensor, labels: torch.Tensor) -> Domain:
    """target's images at idx with the given (pseudo-)labels."""
    return Domain(target.images.index_select(0, idx.to(target.images.device)), labels.to(target.labels.device),
                  target.name, target.split, target.balanced)


def train_target_reader(net_cfg: NetConfig, cfg: PretrainConfig, f: Encoder, target: Domain, seed: int = 0,
                        autocast_dtype=None) -> tuple[Encoder, Domain]:
    """Deviation (loss.target_reader): a classifier of f's architecture that has seen only target images,
    labelled by f where f is confident. Why: f learned its classes from the source, so it accepts a G(x)
    drawn with source traits (a printed 1's flag and foot) that no target image of that class has; a
    reader of the target's own shapes does not (it reads such a 1 as a 2 or a 7, as a MNIST classifier
    does). Returns the reader (eval mode) and the pseudo-labelled images it learned from."""
    if cfg.reader_class_share:
        pseudo = labelled_subset(target, *pseudo_labels(f, target, cfg.reader_class_share,
                                                           option="pretrain.reader_class_share"))
    else:
        pseudo = confident_readings(f, target, cfg.reader_min_confidence, "pretrain.reader_min_confidence")
    torch.manual_seed(seed)
    reader = Encoder(net_cfg).to(target.images.device)
    init_weights(reader)
    augment = READER_AUGMENTS[cfg.reader_augment]
    train_classifier(reader, reader.classify, pseudo, cfg.reader_steps, cfg.f_batch, cfg.f_lr, augment, seed,
                     "train target reader", autocast_dtype, adversarial=cfg.reader_adversarial)
    if cfg.reader_refine_steps:
        refine_reader(reader, target, cfg.reader_refine_steps, cfg.f_batch, seed, autocast_dtype, augment=augment)
    return reader.eval(), pseudo


class ReaderEnsemble(nn.Module):
    """Several target readers read as one (pretrain.reader_augment with several names): classify returns
    the mean of their log-probabilities, whose softmax is the normalised product of their readings, so a
    class only one reader sees in G(x) stays unlikely. Why: g learns to pass the reader it trains
    against (a scratch screen: a second reader rejects 44-58 % of what the first let through); passing
    readers taught differently at once is harder."""

    def __init__(self, readers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.readers = nn.ModuleList(readers)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([r.classify(x).float().log_softmax(1) for r in self.readers]).mean(0)


@torch.no_grad()
def centroid_labels(reader: Encoder, target: Domain, batch: int = 1000, rounds: int = 2) -> torch.Tensor:
    """A class for every target image by nearest class centroid in the space the reader's head reads
    (its rectified code, unit length), centroids first weighted by the reader's softmax, then by these
    labels. Why: the cluster a target class forms decides, not the head's boundary, which f's confusions
    bent (MNIST 9s read as 4s join the 9s' cluster)."""
    codes, probs = [], []
    for x, _ in target.in_order(batch):
        code = reader(x).float()
        codes.append(F.normalize(F.pad(code.relu(), (0, 1), value=1.0), dim=1))
        probs.append(reader.head(code).softmax(1))
    code, weight = torch.cat(codes), torch.cat(probs)
    for _ in range(rounds + 1):
        centroids = F.normalize(weight.t() @ code / weight.sum(0).clamp_min(1e-8)[:, None], dim=1)
        labels = (code @ centroids.t()).argmax(1)
        weight = F.one_hot(labels, weight.shape[1]).float()
    return labels


def refine_reader(reader: Encoder, target: Domain, steps: int, batch: int, seed: int = 0, autocast_dtype=None,
                  relabel_every: int = 200, lr: float = 0.01, augment=shift_augment) -> None:
    """Deviation (pretrain.reader_refine_steps): adapt the reader to all target images, unlabelled, by
    information maximisation (each reading sure, the classes used evenly) plus cross-entropy (weight 0.3)
    on centroid labels (centroid_labels, renewed every `relabel_every` steps); the head stays fixed.
    This is SHOT (Liang et al., ICML 2020). Why: the reader learned f's confident readings and with them
    f's confident mistakes (it read 17 % of MNIST 9s as 4s, so g could draw a 4 as a 9 unpunished);
    the target's own cluster structure undoes most of them (measured: 1 %). target.labels are not read."""
    gen = torch.Generator().manual_seed(seed + 29)
    head = list(reader.head.parameters())
    for p in head:
        p.requires_grad_(False)
    opt = torch.optim.SGD(reader.features.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    device = target.images.device
    try:
        for step in progress(range(steps), desc="refine target reader"):
            if step % relabel_every == 0:
                reader.eval()
                labels = centroid_labels(reader, target).to(target.labels.device)
                labelled = Domain(target.images, labels, target.name, target.split)
                reader.train()
            for group in opt.param_groups:
                group["lr"] = lr * (1 + 10 * step / steps) ** -0.75
            x, y = labelled.sample(batch, gen)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                logits = reader.classify(augment(x, gen)).float()
            probs = logits.softmax(1)
            mean = probs.mean(0)
            loss = (-(probs * torch.log(probs + 1e-5)).sum(1).mean() + (mean * torch.log(mean + 1e-5)).sum()
                    + 0.3 * F.cross_entropy(logits, y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p in head:
            p.requires_grad_(True)
        reader.eval()


SELF_TRAIN_POOL = 20_000    # target images f labels in each round (a fixed subset)


@torch.no_grad()
def pseudo_labels(f: Encoder, target: Domain, share: float, batch: int = 1000,
                  option: str = "pretrain.f_self_train") -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, labels): for each class f predicts, the `share` of the pool's size / classes most
    confidently predicted images of it. Class-balanced, so a class f rarely predicts is not drowned by
    one it over-predicts (9s read as 4s would otherwise teach f that 9s are 4s). `option` names the
    setting in the error raised when the share leaves no image per class."""
    probs = torch.cat([logits.float().softmax(1) for _, logits in read_targets(f, target, batch)])
    confidence, predicted = probs.max(1)
    per_class = int(share * len(target) / probs.shape[1])
    if per_class < 1:
        raise ConfigError(f"{option}: a share of {share:g} of {len(target):,} {target.name} images over "
                          f"{probs.shape[1]} classes is less than one image per class; raise it")
    chosen = []
    for c in range(probs.shape[1]):
        idx = torch.nonzero(predicted == c).flatten()
        chosen.append(idx[confidence[idx].argsort(descending=True)[:per_class]])
    idx = torch.cat(chosen)
    return idx, predicted[idx]


def self_train_f(f: Encoder, cfg: PretrainConfig, source: Domain, target: Domain, seed: int = 0,
                 autocast_dtype=None) -> list[dict]:
    """Deviation (pretrain.f_self_train rounds): adapt f to the target's look with no target labels.

    Why: f pretrained on printed digits reads MNIST at about 87 % and confuses 9/4, 7/1, 6/5; L_CONST
    then makes g draw digits *as f reads them*, and the evaluation classifier disagrees (these are the
    DTN's errors). Each round f labels a fixed pool of target images, keeps the most confident share of
    each class (30 %, 60 %, 90 % of the pool over three rounds) and is fine-tuned on half-and-half batches
    of augmented source and shifted pseudo-labelled target images. Returns per round which target images
    got which pseudo-label (the caller may score them where labels exist); target.labels are never read."""
    n = min(len(target), SELF_TRAIN_POOL)
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(7))[:n].sort().values
    pool = Domain(target.images[order.to(target.images.device)], torch.full((n,), -1, device=target.images.device),
                  target.name, "pseudo-label pool")
    gen = torch.Generator().manual_seed(seed + 17)
    device, half = source.images.device, max(1, cfg.f_batch // 2)
    lr = cfg.f_lr * 0.3
    rounds = []
    for r in range(cfg.f_self_train):
        f.eval()
        idx, labels = pseudo_labels(f, pool, 0.9 * (r + 1) / cfg.f_self_train)
        pseudo = labelled_subset(pool, idx, labels)
        opt = torch.optim.AdamW(f.parameters(), lr=lr, weight_decay=1e-4)
        f.train()
        for step in progress(range(cfg.f_self_train_steps), desc=f"self-train f, round {r + 1}"):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg.f_self_train_steps, lr)
            xs, ys = source.sample(half, gen)
            xt, yt = pseudo.sample(half, gen)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                loss = (F.cross_entropy(f.classify(augment_source(xs, gen)).float(), ys)
                        + F.cross_entropy(f.classify(shift_augment(xt, gen)).float(), yt))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rounds.append({"round": r + 1, "pseudo_labelled": int(len(idx)), "target_indices": order[idx.cpu()],
                       "pseudo_labels": labels.cpu()})
    f.eval()
    return rounds


def data_fingerprint(domain: Domain) -> str:
    h = hashlib.md5()
    h.update(str(tuple(domain.images.shape)).encode())
    h.update(domain.images.cpu().numpy().tobytes())
    h.update(domain.labels.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def eval_classifier(cfg: PretrainConfig, target_train: Domain, num_classes: int = 10, seed: int = 0,
                    cache_dir: Path | None = None, autocast_dtype=None) -> tuple[LeNet, Path]:
    """The LeNet that judges transfers, trained on target train; cached by data checksum and schedule."""
    key = f"lenet-{target_train.name}-{data_fingerprint(target_train)}-e{cfg.eval_epochs}-s{seed}"
    path = (cache_dir or cache_root() / "classifiers") / f"{key}.safetensors"
    model = LeNet(target_train.channels, num_classes, target_train.images.shape[-1]).to(target_train.images.device)
    if path.is_file():
        load_weights(model, path)
        model.eval()
        return model, path
    torch.manual_seed(seed)
    steps = max(1, cfg.eval_epochs * len(target_train) // cfg.eval_batch)
    train_classifier(model, model, target_train, steps, cfg.eval_batch, cfg.eval_lr, shift_augment, seed,
                     "evaluation classifier", autocast_dtype)
    save_weights(model, path)
    return model, path
