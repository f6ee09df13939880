"""`dtn run` end to end: load domains, pretrain f, get the evaluation classifier, train the DTN
with periodic evaluation and checkpoints, evaluate at the end, write results.json."""
from __future__ import annotations

import json
import math
import platform
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics
from .config import Config, reader_augments, to_toml
from .distributed import Dist, prepare, process_device, session
from .domain import Domain, load_domain
from .errors import DtnError, RunError
from .nets import Encoder, LeNet, to_float
from .data import load as load_split
from .data.base import cache_root
from .data.classes import parse_classes, select_classes
from .data.shapes import class_count, native_channels
from .metrics.retrieval import encoder_quality
from .precision import emulated_bf16_warning, resolve_precision
from .pretrain import (PRETRAIN_VERSION, ReaderEnsemble, accuracy, data_fingerprint, eval_classifier, pretrain_f,
                       self_train_f, train_target_reader)
from .report import save_grid, save_pairs_grid
from .rundir import RunDir, claim
from .train import Trainer, pick_device
from .weights import atomic_write, load_weights, save_weights

LOG = print


@dataclass
class Domains:
    source_train: Domain
    source_test: Domain
    target_train: Domain
    target_test: Domain


def load_domains(cfg: Config) -> Domains:
    """The four splits at the nets' size, kept to data.classes; source train sampled class-balanced
    when data.balanced (f pretraining and DTN training both draw from it)."""
    n, d, mm, k = cfg.nets, cfg.data.data_dir or None, cfg.data.memmap, parse_classes(cfg.data.classes)
    return Domains(
        load_domain(cfg.data.source, "train", n.image_size, n.source_channels, d, mm, classes=k)
        .with_balance(cfg.data.balanced),
        load_domain(cfg.data.source, "test", n.image_size, n.source_channels, d, mm, classes=k),
        load_domain(cfg.data.target, "train", n.image_size, n.target_channels, d, mm, classes=k),
        load_domain(cfg.data.target, "test", n.image_size, n.target_channels, d, mm, classes=k),
    )


def fill_from_data(cfg: Config) -> Config:
    """nets.source_channels, target_channels and num_classes left at 0 (`--source/--target`, the faces
    and fashion presets) taken from the train splits: 1 channel when every image is grey, the source's
    class count for f's head. Runs before the run directory is written, so config.toml holds the values."""
    n, d, k = cfg.nets, cfg.data.data_dir or None, parse_classes(cfg.data.classes)
    updates = {}
    if n.source_channels == 0 or n.num_classes == 0:
        source = select_classes(load_split(cfg.data.source, "train", d), k)
        if n.source_channels == 0:
            updates["source_channels"] = native_channels(source)
        if n.num_classes == 0:
            updates["num_classes"] = class_count(source) if cfg.train.f_mode == "pretrained" else 10
    if n.target_channels == 0:
        updates["target_channels"] = native_channels(select_classes(load_split(cfg.data.target, "train", d), k))
    if updates:
        LOG("from the data: " + ", ".join(f"nets.{key} = {value}" for key, value in updates.items()))
    return replace(cfg, nets=replace(n, **updates)) if updates else cfg


def autocast_dtype(cfg: Config):
    """bf16 for pretraining's autocast when the run's precision (auto resolved on its device) is bf16."""
    return torch.bfloat16 if resolve_precision(cfg.train.precision, pick_device(cfg.train.device)) == "bf16" else None


def with_precision_for(cfg: Config, device: torch.device) -> Config:
    """train.precision "auto" replaced by what it means on `device`, so config.toml records what ran."""
    chosen = resolve_precision(cfg.train.precision, device)
    if cfg.train.precision == "auto" and chosen == "fp32":
        LOG(f"precision: fp32 ({device.type} has no native bf16, where bf16 autocast runs many times slower; "
            "train.precision=bf16 forces it)")
    if warning := emulated_bf16_warning(chosen, device):
        LOG(warning)
    return replace(cfg, train=replace(cfg.train, precision=chosen))


def device_description(device: torch.device) -> str:
    """Where a run trained, for results.json: figures from a GPU and from a 2-core CPU differ in time
    (and bf16 against fp32 may differ in the last digits), so a table gathered from runs says which."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return device.type
    return f"cpu: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (platform.processor() is empty on most Linux builds)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:        # not Linux
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def f_cache_key(cfg: Config, domains: Domains) -> str:
    """f depends only on the source data, f's architecture, the pretraining schedule and head, and the
    seed: runs that share them (ablations, seeds of g) share one cached f. Options at their defaults
    add nothing, so the keys of f's cached before they existed still match."""
    n, p = cfg.nets, cfg.pretrain
    return (f"f-{cfg.data.source}-{data_fingerprint(domains.source_train)}-w{n.f_width}-c{n.code_dim}"
            f"-s{n.image_size}-{p.f_steps}-{p.f_batch}-{p.f_lr}"
            f"-a{int(p.f_augment)}-v{PRETRAIN_VERSION}-seed{cfg.train.seed}"
            + ("-balanced" if cfg.data.balanced else "") + (f"-k{n.num_classes}" if n.num_classes != 10 else "")
            + ("-flip" if p.f_flip else "")
            + (f"-{p.f_head}-m{p.f_margin}-sc{p.f_scale}" if p.f_head != "softmax" else "")
            + (f"-st{p.f_self_train}x{p.f_self_train_steps}-{cfg.data.target}-{data_fingerprint(domains.target_train)}"
               if p.f_self_train else "")
            + (f"-opt-{cfg.data.target}-{data_fingerprint(domains.target_train)}" if p.f_target_options else ""))


def f_cache_path(cfg: Config, domains: Domains) -> Path:
    """Where this machine keeps the pretrained f (or judge) that f_cache_key names."""
    return cache_root() / "encoders" / f"{f_cache_key(cfg, domains)}.safetensors"


def heldout_classes(source_train: Domain, source_test: Domain) -> bool:
    """True when the source test split is labelled with classes f never trained on: held-out
    identities (celeba-sample). f cannot classify them; it can still tell them apart (retrieval)."""
    test = torch.unique(source_test.labels)
    return len(test) > 1 and bool((test >= 0).all()) and not torch.isin(
        test, torch.unique(source_train.labels.to(test.device))).any()


def f_quality(cfg: Config, f: Encoder, domains: Domains, device: torch.device) -> dict:
    """What f.json records about the pretrained f: accuracy on source test and target test where their
    classes are f's, and on held-out identities its identity retrieval and verification AUC."""
    out = {}
    if heldout_classes(domains.source_train, domains.source_test):
        test = domains.source_test.to(device)
        codes = metrics.batched(f, to_float(test.images))
        out.update(encoder_quality(codes, test.labels))
        LOG(f"f on {out['heldout_identities']:,} held-out identities ({len(test):,} images): another photo of "
            f"the same person ranks {out['heldout_retrieval_median_rank']:g} (median), recall@1 "
            f"{out['heldout_retrieval_recall_at_1']:.2%}, recall@10 {out['heldout_retrieval_recall_at_10']:.2%}; "
            f"verification AUC {out['heldout_verification_auc']:.4f}")
    else:
        out["source_test_accuracy"] = accuracy(f.classify, domains.source_test.subset(5000).to(device))
    if len(domains.target_test) and domains.target_test.labels.min() >= 0:      # avatars have no labels
        out["target_test_accuracy"] = accuracy(f.classify, domains.target_test.to(device))
    return out


JUDGE_SEED_OFFSET = 1000


def get_judge(cfg: Config, domains: Domains, device: torch.device) -> Encoder | None:
    """pretrain.judge: an f of the same recipe and seed + 1000, trained (once, cached beside f's) but never
    used in training, to score identity retrieval with an encoder g could not learn to fool."""
    if not cfg.pretrain.judge or cfg.train.f_mode != "pretrained":
        return None
    judge_cfg = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + JUDGE_SEED_OFFSET))
    cached = f_cache_path(judge_cfg, domains)
    judge = Encoder(cfg.nets).to(device)
    if cached.is_file():
        load_weights(judge, cached)
        return judge.eval()
    t0 = time.time()
    judge, _ = train_f(judge_cfg, domains, device)
    save_weights(judge, cached)
    LOG(f"judge encoder (seed {judge_cfg.train.seed}) pretrained in {time.time() - t0:.0f}s")
    return judge.eval()


def target_options(cfg: Config, domains: Domains) -> tuple[Domain, list[int]]:
    """The target train images with the option vector each was drawn with (labels (N, K)) and the number
    of values per category, for pretrain.f_target_options; only generated avatars carry them."""
    split = load_split(cfg.data.target, "train", cfg.data.data_dir or None)
    options, vocab = split.extras.get("options"), split.extras.get("vocabulary")
    if options is None or vocab is None:
        raise DtnError(f"pretrain.f_target_options: the target {cfg.data.target!r} has no option vectors "
                       "(only generated avatars do); turn the option off")
    if len(options) != len(domains.target_train):
        raise DtnError(f"pretrain.f_target_options: {len(options)} option vectors for {len(domains.target_train)} "
                       f"{cfg.data.target} train images (a class subset?); they must match one to one")
    labels = torch.from_numpy(np.asarray(options, dtype=np.int64))
    return Domain(domains.target_train.images, labels, cfg.data.target, "train"), [len(c.values) for c in vocab.categories]


def train_f(cfg: Config, domains: Domains, device: torch.device) -> tuple[Encoder, list[dict]]:
    """pretrain_f on the labelled source, then pretrain.f_self_train rounds on pseudo-labelled target
    images. The second value says per round how many target images were pseudo-labelled and, where the
    target has labels (read here for this diagnostic only, never by training), how many rightly."""
    options, sizes = target_options(cfg, domains) if cfg.pretrain.f_target_options else (None, ())
    f = pretrain_f(cfg.nets, cfg.pretrain, domains.source_train.to(device), cfg.train.seed, autocast_dtype(cfg),
                   options.to(device) if options is not None else None, sizes)
    if not cfg.pretrain.f_self_train:
        return f, []
    rounds = self_train_f(f, cfg.pretrain, domains.source_train.to(device), domains.target_train.to(device),
                          cfg.train.seed, autocast_dtype(cfg))
    facts = []
    for r in rounds:
        truth = domains.target_train.labels[r["target_indices"]]
        right = float((truth == r["pseudo_labels"]).double().mean()) if bool((truth >= 0).all()) else None
        facts.append({"round": r["round"], "pseudo_labelled": r["pseudo_labelled"],
                      "pseudo_labels_right_diagnostic_only": right})
        LOG(f"self-training round {r['round']}: {r['pseudo_labelled']:,} target images pseudo-labelled"
            + (f" ({right:.1%} rightly; target labels read for this line only)" if right is not None else ""))
    return f, facts


def get_f(cfg: Config, run: RunDir, domains: Domains, device: torch.device) -> Encoder:
    """The pretrained f of this run (trained once, saved as f.safetensors), or a random one."""
    path = run.path / "f.safetensors"
    f = Encoder(cfg.nets).to(device)
    if cfg.train.f_mode != "pretrained":
        torch.manual_seed(cfg.train.seed)
        from .nets import init_weights
        init_weights(f)
        return f.eval()
    if path.is_file():
        load_weights(f, path)
        return f.eval()
    cached = f_cache_path(cfg, domains)
    facts = cached.with_suffix(".json")          # f.json of the run that trained it, kept beside it
    if cached.is_file():
        load_weights(f, cached)
        save_weights(f, path)
        if facts.is_file():
            try:
                run.write_json("f.json", {**json.loads(facts.read_text()), "loaded_from_cache": cached.name})
            except (OSError, json.JSONDecodeError) as exc:
                LOG(f"warning: {facts}: unreadable ({exc}); this run has no f.json (delete it, or the cached f "
                    "beside it to retrain f)")
        LOG(f"f loaded from cache {cached.name}")
        return f.eval()
    t0 = time.time()
    f, self_training = train_f(cfg, domains, device)
    save_weights(f, path)
    save_weights(f, cached)
    seconds = time.time() - t0
    quality = {**f_quality(cfg, f, domains, device), "f_head": cfg.pretrain.f_head, "seconds": seconds,
               **({"self_training": self_training} if self_training else {})}
    run.write_json("f.json", quality)
    atomic_write(facts, lambda tmp: Path(tmp).write_text(json.dumps(quality, indent=2) + "\n"))
    if "source_test_accuracy" in quality:
        LOG(f"f pretrained in {seconds:.0f}s: {quality['source_test_accuracy']:.2%} on {cfg.data.source} test, "
            f"{quality.get('target_test_accuracy', float('nan')):.2%} on {cfg.data.target} test (diagnostic only)")
    else:
        LOG(f"f pretrained in {seconds:.0f}s ({cfg.pretrain.f_head} head)")
    return f.eval()


def reader_cache_key(cfg: Config, domains: Domains) -> str:
    """What the target reader depends on: f, the target data and every pretrain.reader_* setting."""
    p = cfg.pretrain
    return (f"reader-{f_cache_key(cfg, domains)}-{cfg.data.target}-{data_fingerprint(domains.target_train)}"
            f"-r{p.reader_steps}"
            + (f"-share{p.reader_class_share}" if p.reader_class_share else f"-c{p.reader_min_confidence}")
            + (f"-shot{p.reader_refine_steps}" if p.reader_refine_steps else "")
            + (f"-{p.reader_augment}" if p.reader_augment != "shift" else "")
            + (f"-adv{p.reader_adversarial}" if p.reader_adversarial else ""))


def get_reader(cfg: Config, run: RunDir, f: Encoder, domains: Domains, device: torch.device) -> nn.Module | None:
    """loss.target_reader: the run's target reader (reader.safetensors), trained once per f and target
    data and cached beside f; None when the option is off. Several pretrain.reader_augment names give one
    reader each (reader-NAME.safetensors / .json), read together as a ReaderEnsemble."""
    if not cfg.loss.target_reader:
        return None
    names = reader_augments(cfg.pretrain.reader_augment)
    if len(names) == 1:
        return _one_reader(cfg, run, f, domains, device, "reader")
    return ReaderEnsemble([_one_reader(replace(cfg, pretrain=replace(cfg.pretrain, reader_augment=name)), run, f,
                                       domains, device, f"reader-{name}") for name in names]).eval()


def _one_reader(cfg: Config, run: RunDir, f: Encoder, domains: Domains, device: torch.device, stem: str) -> Encoder:
    """One target reader: from the run dir (a resumed run), else the cache, else trained (and cached)."""
    path, reader = run.path / f"{stem}.safetensors", Encoder(cfg.nets).to(device)
    p = cfg.pretrain
    cached = cache_root() / "encoders" / f"{reader_cache_key(cfg, domains)}.safetensors"
    for source in (path, cached):
        if source.is_file():
            load_weights(reader, source)
            if source == cached:
                save_weights(reader, path)
                LOG(f"target reader loaded from cache {cached.name}")
            return reader.eval()
    t0 = time.time()
    reader, pseudo = train_target_reader(cfg.nets, p, f, domains.target_train.to(device), cfg.train.seed,
                                         autocast_dtype(cfg))
    save_weights(reader, path)
    save_weights(reader, cached)
    facts = {"trained_on": len(pseudo), "of": len(domains.target_train), "min_confidence": p.reader_min_confidence,
             "class_share": p.reader_class_share,
             "refine_steps": p.reader_refine_steps, "augment": p.reader_augment, "adversarial": p.reader_adversarial,
             "per_class": torch.bincount(pseudo.labels.cpu(), minlength=cfg.nets.num_classes).tolist(),
             "seconds": round(time.time() - t0, 1)}
    if len(domains.target_test) and domains.target_test.labels.min() >= 0:
        facts["target_test_accuracy_diagnostic_only"] = accuracy(reader.classify, domains.target_test.to(device))
    run.write_json(f"{stem}.json", facts)
    LOG(f"target reader trained in {facts['seconds']:.0f}s on the {len(pseudo):,} of {len(domains.target_train):,} "
        f"{cfg.data.target} train images "
        + (f"f reads most confidently as each class (share {p.reader_class_share})" if p.reader_class_share
           else f"f reads with confidence >= {p.reader_min_confidence}")
        + (f", then refined on all of them for {p.reader_refine_steps} steps" if p.reader_refine_steps else "")
        + (f"; {facts['target_test_accuracy_diagnostic_only']:.2%} on {cfg.data.target} test (diagnostic only)"
           if "target_test_accuracy_diagnostic_only" in facts else ""))
    return reader


def get_classifier(cfg: Config, domains: Domains, device: torch.device) -> LeNet | None:
    """The evaluation classifier trained on the target's labels; None when the target has none
    (avatars): the label metrics are then skipped (see unavailable_metrics)."""
    labels = domains.target_train.labels
    if len(labels) == 0 or labels.min() < 0:
        LOG(f"no evaluation classifier: {cfg.data.target} has no class labels")
        return None
    t0 = time.time()
    num_classes = max(cfg.nets.num_classes, int(labels.max()) + 1)
    clf, path = eval_classifier(cfg.pretrain, domains.target_train.to(device), num_classes,
                                autocast_dtype=autocast_dtype(cfg))
    acc = accuracy(clf, domains.target_test.to(device))
    LOG(f"evaluation classifier {path.name}: {acc:.2%} on {cfg.data.target} test ({time.time() - t0:.0f}s)")
    return clf


#: Label-free metrics that stand in for a label metric the domains cannot support. On held-out
#: identities f cannot classify G(x) (f_consistency), but it can still find x among all held-out
#: faces by f(G(x)): the paper's face metric asks the same question of f. Without an evaluation
#: classifier there is no FLD, but a Fréchet distance on coarse pixels still says whether G(x) looks
#: like the target (metrics/pixel_fd.py).
STAND_INS = {"f_consistency": "identity_retrieval", "fld": "pixel_fd"}


def metrics_to_compute(names: tuple[str, ...], skipped: dict[str, str]) -> list[str]:
    """The requested names less the skipped ones, each skipped name with a stand-in replaced by it."""
    out = []
    for name in names:
        name = STAND_INS.get(name, name) if name in skipped else name
        if name not in skipped and name not in out:
            out.append(name)
    return out


def evaluate(trainer: Trainer, classifier: LeNet, source_test: Domain, target_test: Domain,
             names: tuple[str, ...] = ("transfer_accuracy", "f_consistency", "fld"),
             source_train: Domain | None = None, judge: Encoder | None = None) -> dict:
    names = metrics_to_compute(names, unavailable_metrics(classifier, trainer.source, source_test))
    ctx = metrics.EvalContext(transfer=trainer.transfer, source_test=source_test.to(trainer.device),
                              target_test=target_test.to(trainer.device), classifier=classifier, f=trainer.f,
                              standardise_codes=trainer.cfg.loss.code_scale == "domain", judge=judge,
                              source_train=source_train.to(trainer.device) if source_train is not None else None)
    return metrics.compute(list(names), ctx)


def unavailable_metrics(classifier: LeNet | None, source_train: Domain, source_test: Domain) -> dict[str, str]:
    """Metrics this pair of domains cannot support, each with the reason (results.json lists them)."""
    out = {}
    if classifier is None:
        why = "the target has no class labels, so there is no evaluation classifier to read G(x)"
        out.update(dict.fromkeys(("transfer_accuracy", "fld", "source_baseline", "adaptation_accuracy"), why))
        out["fld"] = why + "; pixel_fd is computed in its place"
    test = torch.unique(source_test.labels)
    if (test < 0).any() or not torch.isin(test, torch.unique(source_train.labels.to(test.device))).all():
        why = ("source test classes are not classes f was trained on (unlabelled, or held-out identities): "
               "transfer accuracy needs source labels in the target's label space")
        out["f_consistency"] = why + ("; identity_retrieval is computed in its place"
                                      if heldout_classes(source_train, source_test) else "")
        out.setdefault("transfer_accuracy", why)
    if not heldout_classes(source_train, source_test):
        out["identity_retrieval"] = "defined on held-out identities only (the source test split has none)"
    return out


def summary(final: dict, source: str, run_path: Path) -> str:
    """The last line of a run: the metrics it could compute."""
    parts = [f"transfer accuracy {final['transfer_accuracy']:.2%} on {final['n_source_test']} {source} test images"
             if "transfer_accuracy" in final else "no transfer accuracy (" + final["skipped_metrics"].get(
                 "transfer_accuracy", "not computed") + ")"]
    if "fld" in final:
        parts.append(f"FLD {final['fld']:.2f}")
    if "f_consistency" in final:
        parts.append(f"f-consistency {final['f_consistency']:.2%}")
    if "pixel_fd" in final:
        parts.append(f"pixel FD {final['pixel_fd']:.2f}" + (f" (source images unchanged: {final['pixel_fd_source']:.2f})"
                                                             if "pixel_fd_source" in final else ""))
    if "identity_median_rank" in final:
        parts.append(f"identity retrieval: median rank {final['identity_median_rank']:g} of {final['identity_n']:,} "
                     f"(percentile {final['identity_median_rank_percentile']:.2e}; paper 16 of 100,001 = 1.60e-04), "
                     f"recall@1 {final['identity_recall_at_1']:.2%}, recall@10 {final['identity_recall_at_10']:.2%}")
    return "; ".join(parts) + f"; run in {run_path}"


class DivergenceError(RunError):
    """A loss or a weight became NaN/Inf; the last good checkpoint is kept."""


class StopRequested(RunError):
    """SIGINT/SIGTERM during training: a checkpoint was saved, resume with --resume."""


class _StopSignals:
    """While training, SIGINT and SIGTERM only set a flag; the loop saves a checkpoint and stops."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def checkpoint_bytes(trainer: Trainer) -> int:
    """Weights plus Adam's two moments, roughly: what one checkpoint takes on disk."""
    return sum(p.numel() * 4 * 3 for m in trainer.modules().values() for p in m.parameters())


def check_finite(trainer: Trainer, losses: dict[str, float], step: int) -> None:
    """Raise before anything is written when a loss or a weight is NaN/Inf."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise DivergenceError(f"training diverged at step {step}: loss {bad[0]} = {losses[bad[0]]}; "
                              "the last good checkpoint is kept (try a lower lr, or --resume after a change)")
    for name, module in trainer.modules().items():
        for pname, p in module.named_parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"training diverged at step {step}: {name}.{pname} holds NaN/Inf; "
                                      "the last good checkpoint is kept")


def fit(trainer: Trainer, run: RunDir, classifier: LeNet | None, domains: Domains, fixed: torch.Tensor,
        dist: Dist = Dist(), judge: Encoder | None = None) -> None:
    """The loop: step, log every log_every, evaluate every eval_every, checkpoint every ckpt_every.
    NaN/Inf stops the run before a bad checkpoint is written; SIGINT/SIGTERM save one and stop.
    Several processes: every rank logs the global-batch losses and stops together; rank 0 alone
    evaluates and writes (classifier is None elsewhere)."""
    from .progress import progress

    t = trainer.cfg.train
    eval_src = domains.source_test.subset(t.eval_samples, seed=2)
    eval_tgt = domains.target_test.subset(t.eval_samples, seed=2)
    sums: dict[str, torch.Tensor] = {}
    # The seconds column is training time across resumes: a resumed run continues the clock of the
    # row it resumed from, so curves and time-to-accuracy read the same as an uninterrupted run's.
    done = [r for r in run.read_metrics() if int(r["step"]) <= trainer.step] if dist.is_main else []
    count, t0 = 0, time.time() - (float(done[-1]["seconds"]) if done else 0.0)
    with _StopSignals() as stop:
        for _ in progress(range(trainer.step, t.steps), desc="train DTN", total=t.steps - trainer.step):
            for k, v in trainer.train_step().values.items():
                sums[k] = sums.get(k, 0) + v.float()
            count += 1
            step, row = trainer.step, {}
            stopping = dist.any(bool(stop.requested))
            checkpoint = step % t.ckpt_every == 0 or step == t.steps or stopping
            if step % t.log_every == 0 or checkpoint:
                row = {k: round(float(v) / count, 5) for k, v in dist.mean(sums).items()}
                check_finite(trainer, row, step)
                sums, count = {}, 0
            if dist.is_main and ((t.eval_every and step % t.eval_every == 0) or step == t.steps):
                m = evaluate(trainer, classifier, eval_src, eval_tgt, judge=judge)
                row.update({k: round(v, 5) for k, v in m.items() if isinstance(v, float)})
                save_grid(run.path / "samples" / f"step-{step:06d}.png", fixed, trainer.transfer(fixed))
            if row and dist.is_main:
                row = {"step": step, "seconds": round(time.time() - t0, 1), **row}
                run.append_metrics(row)
                LOG(" ".join(f"{k}={v}" for k, v in row.items()))
            if checkpoint:
                if dist.is_main:
                    run.save_checkpoint(trainer, t.keep_last)
                dist.barrier()                  # no rank runs ahead of a checkpoint being written
            if stopping:
                if dist.is_main:
                    run.set_status("interrupted")
                raise StopRequested(f"{stop.requested or 'a stop signal to another process'} at step {step}: "
                                    f"checkpoint saved in {run.path}; "
                                    f"continue with `dtn run --resume --runs-dir {run.path.parent} --name {run.path.name}`")


@torch.no_grad()
def write_identity_grid(run: RunDir, trainer: Trainer, source_test: Domain, n: int = 32, seed: int = 5) -> Path:
    """RUN/identity_grid.png: n held-out faces (a fixed, seeded choice) each beside its transfer G(x),
    8 pairs a row; report.html shows it and bench/faces.py copies it to docs/faces_grid.png."""
    shown = source_test.subset(n, seed=seed)
    x, _ = shown.to(trainer.device).batch(torch.arange(len(shown)))
    path = run.path / "identity_grid.png"
    save_pairs_grid(path, x, trainer.transfer(x))
    return path


def write_run_report(run: RunDir) -> None:
    """report.html at the end of a run. The run itself is complete by then, so a report that cannot
    be written is a warning line (fix it, then `dtn report RUN`), not a failed run."""
    from .report import write_report

    try:
        LOG(f"report: {write_report(run.path)}")
    except DtnError as exc:
        LOG(f"warning: report not written: {exc}")


def open_scalar_log(run: RunDir, resume: bool) -> None:
    """--tensorboard: mirror metrics.csv rows to RUN/tensorboard/, opened before any training so that a
    missing package fails at once; on resume, events after the checkpoint we go back to are purged."""
    from .tensorboard_log import TensorBoardLog

    ckpts = run.checkpoints() if resume else []
    run.scalar_log = TensorBoardLog(run.path / "tensorboard", purge_step=ckpts[-1][0] + 1 if ckpts else 1)


def start_run(cfg: Config, path: Path, resume: bool, dist: Dist) -> RunDir:
    """Rank 0 creates (or reopens) the run directory; the other processes wait for it, then only read it."""
    if dist.is_main:
        run = RunDir.create(path, cfg, resume=resume)
        if resume:
            run.write_text("config.toml", to_toml(cfg))
    dist.barrier()
    return run if dist.is_main else RunDir(path)


def run_dtn(cfg: Config, runs_dir: Path, name: str, resume: bool = False, until: str = "evaluate",
            tensorboard: bool = False) -> dict:
    """until: "pretrain" (f and the evaluation classifier only), "train" (no final full evaluation)
    or "evaluate" (everything). tensorboard: also write the metrics.csv rows to RUN/tensorboard/.
    Under torchrun every process calls this and joins the process group (see distributed.py)."""
    cfg = fill_from_data(cfg.validate())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    path = Path(runs_dir) / name
    with session(pick_device(cfg.train.device)) as dist, claim(path, enabled=dist.is_main):
        return _run_dtn(cfg, path, resume, until, tensorboard, dist)


def _run_dtn(cfg: Config, path: Path, resume: bool, until: str, tensorboard: bool, dist: Dist) -> dict:
    device = process_device(dist, pick_device(cfg.train.device))
    cfg = with_precision_for(cfg, device)
    run = start_run(cfg, path, resume, dist)
    if tensorboard and until != "pretrain" and dist.is_main:
        open_scalar_log(run, resume)
    t0 = time.time()
    domains = load_domains(cfg)
    LOG(f"data: {cfg.data.source} {len(domains.source_train)}/{len(domains.source_test)}, "
        f"{cfg.data.target} {len(domains.target_train)}/{len(domains.target_test)} ({time.time() - t0:.0f}s)")
    classifier = get_classifier(cfg, domains, device) if dist.is_main else None
    f = get_f(cfg, run, domains, device) if dist.is_main else None
    reader = get_reader(cfg, run, f, domains, device) if dist.is_main else None
    judge = get_judge(cfg, domains, device) if dist.is_main and until != "pretrain" else None
    dist.barrier()                      # rank 0 has pretrained f (and the target reader) into the run dir
    if f is None:
        f = get_f(cfg, run, domains, device)
        reader = get_reader(cfg, run, f, domains, device)
    if until == "pretrain":
        if dist.is_main:
            run.set_status("pretrained")
        return run.read_json("f.json") if (run.path / "f.json").exists() else {}
    # g and D are initialised from the global RNG: seed it here, or their first weights would depend on
    # whether f and the classifier were just trained or loaded from a cache (a resume before the first
    # checkpoint, or `dtn pretrain` then `dtn train`, would not reproduce one uninterrupted run).
    torch.manual_seed(cfg.train.seed)
    trainer = prepare(Trainer(cfg, f, domains.source_train, domains.target_train, device, reader), dist)
    if cfg.train.target_min_confidence:
        LOG(f"training on the {len(trainer.target):,} of {len(domains.target_train):,} {cfg.data.target} train images f reads "
            f"with confidence >= {cfg.train.target_min_confidence} (train.target_min_confidence)")
    if dist.is_main:
        run.check_space(checkpoint_bytes(trainer) * (cfg.train.keep_last + 1) + 50 * 2**20)
    if resume and run.checkpoints():
        step = run.load_checkpoint(trainer)
        if dist.is_main:
            run.truncate_metrics(step)
        LOG(f"resumed {run.path} at step {step}")
    shown = domains.source_test.subset(16, seed=3)          # fewer when a class subset leaves fewer
    fixed, _ = shown.to(device).batch(torch.arange(len(shown)))
    if dist.is_main:
        run.set_status("training")
    t1 = time.time()
    try:
        fit(trainer, run, classifier, domains, fixed, dist, judge)
    finally:
        if run.scalar_log is not None:
            run.scalar_log.close()
    if not dist.is_main:                # rank 0 alone evaluates and reports
        return {"steps": trainer.step, "train_seconds": round(time.time() - t1, 1)}
    if until == "train":
        run.set_status("trained")
        write_run_report(run)
        return {"steps": trainer.step, "train_seconds": round(time.time() - t1, 1)}
    wanted = ("transfer_accuracy", "f_consistency", "fld", "source_baseline")
    final = evaluate(trainer, classifier, domains.source_test, domains.target_test, wanted, judge=judge)
    skipped = unavailable_metrics(classifier, trainer.source, domains.source_test)
    final["skipped_metrics"] = {k: v for k, v in skipped.items() if k in wanted}
    if heldout_classes(trainer.source, domains.source_test):
        final["identity_grid"] = write_identity_grid(run, trainer, domains.source_test).name
    final.update({"steps": trainer.step, "train_seconds": round(time.time() - t1, 1),
                  "total_seconds": round(time.time() - t0, 1), "source": cfg.data.source,
                  "target": cfg.data.target, "uses_source_labels_in_dtn": cfg.loss.const_distance == "ce",
                  # data.classes keeps target images by their labels: a curation, not part of the method
                  "target_kept_to_classes_by_labels": list(parse_classes(cfg.data.classes)),
                  "n_source_test": len(domains.source_test),
                  # the device of the run's last part (a resumed run may have moved), with its precision
                  "trained_on": f"{device_description(device)}, {cfg.train.precision}"})
    run.write_json("results.json", final)
    run.set_status("done")
    write_run_report(run)
    LOG(summary(final, cfg.data.source, run.path))
    return final
