"""Files from elsewhere are data, never code: weights only through safetensors, every torch.load with
weights_only=True, every np.load with allow_pickle=False, configs parsed by tomllib and never run."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from dtn.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "dtn"


class _Evil:
    """Unpickling this writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle ran code"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def test_the_code_never_unpickles_or_evaluates_file_contents():
    """A scan of src/dtn: torch.load only with weights_only=True (once: the training-state file),
    np.load only with allow_pickle=False, and no pickle/marshal loads, eval, exec or yaml.load."""
    problems, torch_loads = [], []
    for path in sorted(SRC.rglob("*.py")):
        for call, name in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(SRC.parent)}:{call.lineno} {name}"
            if name == "torch.load":
                torch_loads.append(where)
                if _keyword(call, "weights_only") is not True:
                    problems.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
                problems.append(where + " without allow_pickle=False")
            elif name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "eval", "exec",
                          "yaml.load", "yaml.unsafe_load", "dill.load", "shelve.open"):
                problems.append(where)
    assert not problems, problems
    assert [w.split(":")[0] for w in torch_loads] == ["dtn/rundir.py"], torch_loads


def test_weights_are_read_only_through_safetensors():
    """Every weights file is read by weights.load_tensors (safetensors.load_file); nothing else opens one."""
    readers = [f"{p.relative_to(SRC.parent)}:{c.lineno}" for p in sorted(SRC.rglob("*.py"))
               for c, name in _calls(ast.parse(p.read_text())) if name.endswith("load_file")]
    assert readers and all(r.startswith("dtn/weights.py:") for r in readers), readers


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digit_folders) -> Path:
    tmp = tmp_path_factory.mktemp("untrusted")
    src, tgt = digit_folders
    assert main(["--quiet", "train", "tiny", "--runs-dir", str(tmp), "--name", "t", "--set", "train.steps=2",
                 "--set", "train.eval_every=0", "--set", f"data.source=folder:{src}",
                 "--set", f"data.target=folder:{tgt}"]) == 0
    return tmp / "t"


@pytest.mark.parametrize("how", ["object array", "object array beside valid images", "pickle named .npz",
                                 "object .npy named .npz"])
def test_transfer_refuses_pickled_npz_content_without_running_it(tiny_run, tmp_path, capsys, how):
    marker = tmp_path / "marker"
    evil = np.array([_Evil(marker)], dtype=object)
    path = tmp_path / "in.npz"
    if how == "object array":
        np.savez(path, images=evil)
    elif how == "object array beside valid images":
        np.savez(path, images=np.zeros((2, 8, 8), np.uint8), extra=evil)
    elif how == "pickle named .npz":
        import pickle
        path.write_bytes(pickle.dumps({"images": _Evil(marker)}))
    else:
        with open(path, "wb") as fh:
            np.save(fh, evil, allow_pickle=True)
    rc = main(["--quiet", "transfer", "--run", str(tiny_run), "--input", str(path), "--output",
               str(tmp_path / "out.npz"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert not marker.exists(), "unpickling ran code"
    if how == "object array beside valid images":  # the hostile array is never read
        assert rc == 0, err
        return
    assert rc == 2 and err.startswith("dtn: error: ") and err.count("\n") == 1 and "in.npz" in err, err


def test_a_config_with_code_looking_strings_is_only_data(tmp_path, capsys):
    """TOML is parsed by tomllib into typed values: strings stay strings, and a value that is not the
    right type is a one-line error, whatever it looks like."""
    marker = tmp_path / "marker"
    cfg = tmp_path / "evil.toml"
    payload = f"__import__('os').system('touch {marker}')"
    cfg.write_text(f'name = "{payload}"\n[data]\nsource = "$(touch {marker})"\ntarget = "`touch {marker}`"\n')
    assert main(["run", "tiny", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert payload in out and f"$(touch {marker})" in out and not marker.exists()
    cfg.write_text(f'[train]\nsteps = "{payload}"\n')
    assert main(["run", "tiny", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dtn: error: ") and "train.steps" in err and err.count("\n") == 1
    cfg.write_text(f'[train]\nsteps = {payload}\n')  # not even TOML
    assert main(["run", "tiny", "--config", str(cfg), "--dry-run"]) == 2
    assert "evil.toml" in capsys.readouterr().err and not marker.exists()
