"""A faces-style run on a tiny synthetic celeba-sample tree: margin-softmax f, its held-out quality in
f.json, identity_retrieval in results.json / metrics.csv / report.html / `dtn evaluate`, the identity grid."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dtn.cli import main
from dtn.config import apply_overrides, preset
from dtn.domain import Domain
from dtn.errors import ConfigError
from dtn.rundir import RunDir
from dtn.run import Domains, f_cache_key, heldout_classes, load_domains, metrics_to_compute

N_IDS, PER_ID = 8, 3          # celeba holds out half of them (4 identities, 12 test images)


def write_faces(root: Path) -> Path:
    """identities.csv + 96x96 images: each identity a colour and a bar at its own height, each photo shifted."""
    folder = root / "celeba-sample"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["file,identity"]
    for ident in range(N_IDS):
        colour = rng.integers(40, 220, 3)
        for j in range(PER_ID):
            img = np.full((96, 96, 3), colour, np.uint8)
            img[10 * ident + 5 + 2 * j: 10 * ident + 13 + 2 * j] = 255 - colour
            name = f"images/{100 + ident}_{j:06d}.jpg"
            Image.fromarray(img).save(folder / name, quality=95)
            lines.append(f"{name},{100 + ident}")
    (folder / "identities.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def faces_run(tmp_path_factory, digit_folders, session_cache_dir) -> Path:
    return run_faces(tmp_path_factory.mktemp("faces-run"), digit_folders, session_cache_dir)


def run_faces(tmp: Path, digit_folders, cache_dir: Path, *extra: str) -> Path:
    """`dtn run tiny` as a faces run (margin f, flips, the judge) on the tiny celeba tree -> a digit folder;
    `extra`: more CLI arguments. Returns the run directory."""
    root = write_faces(tmp / "data")
    _, tgt = digit_folders
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTN_CACHE_DIR", str(cache_dir))
        mp.delenv("DTN_DATA_DIR", raising=False)
        assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp), "--name", "faces",
                     "--source", "celeba-sample", "--target", f"folder:{tgt}", "--set", f"data.data_dir={root}",
                     "--set", "nets.num_classes=0", "--set", "pretrain.f_head=cosface",
                     "--set", "pretrain.f_flip=true", "--set", "pretrain.judge=true", *extra]) == 0
    return tmp / "faces"


def test_the_run_trains_on_train_identities_only(faces_run):
    domains = load_domains(RunDir(faces_run).config())
    train_ids = set(domains.source_train.labels.tolist())
    test_ids = set(domains.source_test.labels.tolist())
    assert not train_ids & test_ids, "no identity on both sides"
    assert len(test_ids) == N_IDS // 2 and len(domains.source_test) == N_IDS // 2 * PER_ID
    assert heldout_classes(domains.source_train, domains.source_test)


def test_f_json_reports_held_out_quality(faces_run):
    facts = json.loads((faces_run / "f.json").read_text())
    assert facts["f_head"] == "cosface" and facts["heldout_identities"] == N_IDS // 2
    assert 1 <= facts["heldout_retrieval_median_rank"] <= N_IDS // 2 * PER_ID - 1
    assert 0 <= facts["heldout_verification_auc"] <= 1 and facts["heldout_retrieval_n"] == 12
    assert "source_test_accuracy" not in facts            # held-out identities: f cannot classify them


def test_results_hold_identity_retrieval_instead_of_f_consistency(faces_run):
    results = json.loads((faces_run / "results.json").read_text())
    assert results["identity_n"] == 12 and 1 <= results["identity_median_rank"] <= 12
    assert 0 <= results["identity_recall_at_1"] <= results["identity_recall_at_10"] <= 1
    assert results["identity_median_rank_percentile"] == pytest.approx(results["identity_median_rank"] / 12)
    assert "f_consistency" not in results and "transfer_accuracy" not in results
    assert "identity_retrieval is computed in its place" in results["skipped_metrics"]["f_consistency"]
    assert results["identity_grid"] == "identity_grid.png"


def test_an_independent_judge_scores_retrieval_too(faces_run, session_cache_dir):
    """pretrain.judge: a second f (seed + 1000, cached beside f) ranks the same transfers; g never saw it."""
    results = json.loads((faces_run / "results.json").read_text())
    assert results["judge_identity_n"] == results["identity_n"] == 12
    assert 1 <= results["judge_identity_median_rank"] <= 12
    judges = list((session_cache_dir / "encoders").glob("f-celeba-sample-*-seed1000-*.safetensors"))
    assert len(judges) == 1
    rows = [r for r in RunDir(faces_run).read_metrics() if r.get("judge_identity_median_rank")]
    assert rows, "the judge's retrieval is logged at each evaluation too"


def test_identity_grid_holds_twelve_pairs(faces_run):
    with Image.open(faces_run / "identity_grid.png") as img:   # 12 pairs: 2 rows of 8 pairs (16 cells) at 32 px
        assert img.size == ((16 * 34 + 2) * 2, (2 * 34 + 2) * 2)


def test_metrics_csv_and_report_show_it(faces_run):
    rows = RunDir(faces_run).read_metrics()
    evaluated = [r for r in rows if r.get("identity_median_rank")]
    assert [int(r["step"]) for r in evaluated] == [2, 4]
    assert all(0 <= float(r["identity_recall_at_1"]) <= 1 for r in evaluated)
    page = (faces_run / "report.html").read_text()
    assert "Held-out identities" in page and "identity_median_rank" in page and "16 of 100,001" in page
    assert page.count("data:image/png;base64,") >= 3


def test_dtn_evaluate_computes_identity_retrieval(faces_run, capsys):
    assert main(["--quiet", "evaluate", str(faces_run)]) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed[printed.index("{"):])          # after the evaluation classifier's log line
    results = json.loads((faces_run / "results.json").read_text())
    assert out["identity_n"] == 12
    assert out["identity_median_rank"] == results["identity_median_rank"]


# ----------------------------------------------------------------------------- config and plumbing
@pytest.mark.parametrize("size", [96, 128])
def test_faces_presets_at_96_and_128_px_change_only_the_size(size):
    cfg, base = preset(f"faces-{size}").validate(), preset("faces")
    assert cfg.nets.image_size == size and cfg.name == f"faces-{size}"
    assert replace(cfg, name="faces", nets=replace(cfg.nets, image_size=64)) == base


@pytest.mark.parametrize("size", [96, 128])
def test_a_faces_run_at_96_and_128_px_trains_and_ranks_identities(size, tmp_path, digit_folders, session_cache_dir):
    """The whole faces pipeline (margin f, the judge, retrieval, the identity grid) at the larger presets'
    sizes, on tiny nets: f, g and D take one stride-2 block more than at 64 px."""
    run = run_faces(tmp_path, digit_folders, session_cache_dir, "--steps", "2",
                    "--set", f"nets.image_size={size}", "--set", "nets.target_channels=3")
    assert RunDir(run).config().nets.image_size == size
    results = json.loads((run / "results.json").read_text())
    assert results["identity_n"] == 12 and 1 <= results["identity_median_rank"] <= 12
    assert results["judge_identity_n"] == 12
    with Image.open(run / "identity_grid.png") as img:   # 12 pairs of size-px cells, as above
        assert img.size == ((16 * (size + 2) + 2) * 2, (2 * (size + 2) + 2) * 2)


def test_stand_in_replaces_only_a_skipped_metric():
    skipped = {"f_consistency": "held out", "fld": "no labels", "identity_retrieval": "n/a"}
    assert metrics_to_compute(("transfer_accuracy", "f_consistency", "fld"), {"f_consistency": "x"}) == \
        ["transfer_accuracy", "identity_retrieval", "fld"]
    assert metrics_to_compute(("f_consistency", "fld"), skipped) == ["pixel_fd"]
    assert metrics_to_compute(("f_consistency", "fld"), {**skipped, "pixel_fd": "n/a"}) == []
    assert metrics_to_compute(("f_consistency", "identity_retrieval"), {}) == ["f_consistency", "identity_retrieval"]


def test_f_head_is_validated_and_the_faces_preset_uses_cosface():
    assert preset("digits").pretrain.f_head == "softmax"
    faces = preset("faces").pretrain
    assert (faces.f_head, faces.f_flip) == ("cosface", True)
    with pytest.raises(ConfigError, match="pretrain.f_head must be one of"):
        apply_overrides(preset("tiny"), {"pretrain.f_head": "sphereface"})


def test_f_cache_key_names_the_head_and_keeps_old_softmax_keys():
    d = Domain(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), "s", "train")
    domains = Domains(d, d, d, d)
    cfg = preset("digits-faithful")
    assert f_cache_key(cfg, domains).endswith("-a1-v3-seed0")         # unchanged for softmax f's
    keys = {f_cache_key(apply_overrides(cfg, o), domains) for o in
            ({}, {"pretrain.f_head": "cosface"}, {"pretrain.f_head": "arcface"},
             {"pretrain.f_head": "cosface", "pretrain.f_margin": 0.2},
             {"pretrain.f_head": "cosface", "pretrain.f_scale": 16.0}, {"pretrain.f_flip": True})}
    assert len(keys) == 6


def test_bench_faces_writes_its_json_and_the_grid(tmp_path, digit_folders, faces_run):
    """bench/faces.py at tiny size (the lead runs it at full size): JSON with the retrieval numbers and
    f's quality, and the grid copied where --grid says. Its f comes from the cache faces_run filled, and
    the f.json stored beside the cached f still tells its held-out quality."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dtn_bench_faces", Path(__file__).resolve().parents[1]
                                                  / "bench" / "faces.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = write_faces(tmp_path / "data")
    _, tgt = digit_folders
    out = bench.main(["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "faces.json"),
                      "--grid", str(tmp_path / "docs" / "faces_grid.png"),
                      "--set", "data.source=celeba-sample", "--set", f"data.target=folder:{tgt}",
                      "--set", f"data.data_dir={root}", "--set", "nets.num_classes=0",
                      "--set", "pretrain.f_head=cosface", "--set", "pretrain.f_flip=true"])
    written = json.loads((tmp_path / "faces.json").read_text())
    assert written == json.loads(json.dumps(out))
    assert written["identity_n"] == 12 and written["command"].startswith("python bench/faces.py --preset tiny")
    facts = written["f_pretraining"]
    assert facts["f_head"] == "cosface" and facts["loaded_from_cache"].endswith(".safetensors")
    assert facts["heldout_verification_auc"] == json.loads((faces_run / "f.json").read_text())["heldout_verification_auc"]
    assert written["wall_seconds_total"] > 0
    assert [r["step"] for r in written["curve_on_eval_subset"]] == [2.0, 4.0]
    assert (tmp_path / "docs" / "faces_grid.png").is_file()


def test_bench_faces_puts_an_experiment_s_grid_beside_its_json_not_over_the_readme_s():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dtn_bench_faces_args", Path(__file__).resolve().parents[1]
                                                  / "bench" / "faces.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse([]).grid == bench.REPO / "docs" / "faces_grid.png"
    assert bench.parse(["--out", "bench/results/exp_x.json"]).grid == Path("bench/results/exp_x.png")
    assert bench.parse(["--out", "a.json", "--grid", "b.png"]).grid == Path("b.png")


# ----------------------------------------------------------------------------- pretrain.f_target_options

def toy_options_domain(n: int = 24, sizes=(3, 2)):
    """Generated 'avatars' whose first option sets the brightness and the second a bar; -1 marks an
    unused category (another style's) in a few rows, as real option vectors have."""
    g = torch.Generator().manual_seed(1)
    options = torch.stack([torch.randint(0, s, (n,), generator=g) for s in sizes], 1)
    options[::5, 1] = -1
    images = (options[:, :1, None, None].clamp_min(0) * 80 + 30).expand(n, 3, 32, 32).to(torch.uint8).clone()
    images[options[:, 1] == 1, :, 10:14] = 255
    return Domain(images, options, "toy-avatars", "train"), list(sizes)


def test_margin_pretraining_adds_the_option_loss_in_one_batch(monkeypatch):
    """The option task reads the target batch through f together with the faces (one f call, so BN's
    statistics cover both) and adds the per-category cross-entropy: with a zero head, log(values) each."""
    from dtn import pretrain
    from dtn.nets import Encoder
    cfg = apply_overrides(preset("tiny"), {"pretrain.f_head": "cosface", "nets.num_classes": "4"})
    target, sizes = toy_options_domain()
    f = Encoder(cfg.nets)
    plain = pretrain.MarginPretraining(f, 4, cfg.pretrain)
    with_options = pretrain.MarginPretraining(f, 4, cfg.pretrain, target, sizes)
    with torch.no_grad():
        with_options.centres.copy_(plain.centres)
        with_options.options_head.weight.zero_()
        with_options.options_head.bias.zero_()
    calls = []
    original = Encoder.forward
    monkeypatch.setattr(Encoder, "forward", lambda self, x: (calls.append(x.shape[0]), original(self, x))[1])
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    f.eval()                                   # BN in eval: the face codes do not depend on the batch
    base = plain.loss(x, labels)
    calls.clear()
    total = with_options.loss(x, labels)
    assert calls == [12], "faces and target images go through f in one batch"
    expected_extra = sum(math.log(s) for s in sizes) / len(sizes)
    # rows with -1 add nothing to their category's sum, so that category's mean is a little below log(size)
    assert 0.5 * expected_extra < float((total - base).detach()) <= expected_extra + 1e-4


def test_f_target_options_learns_to_read_the_options():
    """Trained as pretrain_f trains it, the option head reads the toy avatars' options off f's code far
    better than chance (its loss falls well below log(values)) while the faces task trains beside it."""
    from dtn import pretrain
    from dtn.losses import category_loss
    from dtn.nets import Encoder
    cfg = apply_overrides(preset("tiny"), {"pretrain.f_head": "cosface", "nets.num_classes": "4"})
    target, sizes = toy_options_domain(48)
    g = torch.Generator().manual_seed(0)
    faces = Domain(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g),
                   torch.arange(32) % 4, "faces", "train")
    torch.manual_seed(0)
    model = pretrain.MarginPretraining(Encoder(cfg.nets), 4, cfg.pretrain, target, sizes)

    def option_loss() -> float:
        model.eval()
        with torch.no_grad():
            x, options = target.batch(torch.arange(len(target)))
            return float(category_loss(list(model.options_head(model.f(x)).split(sizes, 1)), options))
    before = option_loss()
    pretrain.train_classifier(model, None, faces, 100, 8, 3e-3, lambda x, gen: x, 0, "test", loss_fn=model.loss)
    after = option_loss()
    assert before > 0.5 and after < 0.5 * before, (before, after)


def test_f_target_options_needs_option_vectors_and_a_margin_head(tmp_path, digit_folders):
    from dtn.errors import DtnError
    from dtn.run import target_options
    with pytest.raises(ConfigError, match="f_target_options needs a margin head"):
        apply_overrides(preset("tiny"), {"pretrain.f_target_options": "true"}).validate()
    src, tgt = digit_folders
    cfg = apply_overrides(preset("tiny"), {"data.source": f"folder:{src}", "data.target": f"folder:{tgt}",
                                           "pretrain.f_head": "cosface", "pretrain.f_target_options": "true"})
    with pytest.raises(DtnError, match="no option vectors"):
        target_options(cfg, load_domains(cfg))
    d = Domain(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), "s", "train")
    keys = {f_cache_key(apply_overrides(cfg, {"pretrain.f_target_options": v}), Domains(d, d, d, d)) for v in ("true", "false")}
    assert len(keys) == 2
