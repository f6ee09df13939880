"""Where a digits run's transfer errors come from: f or g.

    python bench/error_split.py RUN [--out bench/results/error_split_NAME.json]

For every source test image x: is f's own head right about x (source label), and is the evaluation
LeNet right about G(x)? Transfer accuracy = both + reader-only. L_CONST can keep only what f knows, so
"f wrong" is (nearly) a ceiling that g cannot lift, and "f right, reader wrong" is what g loses: it
drew x's class in a shape f accepts and a MNIST reader does not. Per class, and the commonest
(true class -> read as) confusions of the second kind. Labels are read here for the diagnosis only.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, machine_info  # noqa: E402


def error_split(labels: torch.Tensor, f_pred: torch.Tensor, reader_pred: torch.Tensor, top: int = 10) -> dict:
    """Shares of the four (f right?, reader right?) cases, overall and per class, and the `top` commonest
    (label -> reader) confusions among the images f reads right."""
    f_ok, r_ok = f_pred == labels, reader_pred == labels
    cases = {"both_right": f_ok & r_ok, "f_right_reader_wrong": f_ok & ~r_ok,
             "f_wrong_reader_right": ~f_ok & r_ok, "both_wrong": ~f_ok & ~r_ok}

    def shares(mask: torch.Tensor) -> dict:
        n = int(mask.sum())
        out = {name: round(float((case & mask).sum()) / n, 4) if n else None for name, case in cases.items()}
        out.update(n=n, f_accuracy=round(float((f_ok & mask).sum()) / n, 4) if n else None,
                   transfer_accuracy=round(float((r_ok & mask).sum()) / n, 4) if n else None)
        return out

    lost = cases["f_right_reader_wrong"]
    pairs = Counter(zip(labels[lost].tolist(), reader_pred[lost].tolist())).most_common(top)
    return {"overall": shares(torch.ones_like(f_ok)),
            "per_class": {str(c): shares(labels == c) for c in sorted(set(labels.tolist()))},
            "f_right_reader_wrong_commonest": [{"label": a, "read_as": b, "count": n} for (a, b), n in pairs]}


@torch.inference_mode()
def predictions(run_path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, f's head on x, the evaluation LeNet on G(x)) for the whole source test split. f and its
    head come from the run's latest checkpoint (DTN.load), g is the one the run evaluated."""
    from dtn.apply import DTN
    from dtn.metrics import batched
    from dtn.nets import to_float
    from dtn.run import get_classifier, load_domains

    model = DTN.load(run_path, device="cpu")
    domains = load_domains(model.cfg)
    reader = get_classifier(model.cfg, domains, torch.device("cpu"))
    if reader is None:
        raise SystemExit(f"{run_path}: the target {model.cfg.data.target} has no labels, so no evaluation classifier")
    reader.eval()
    test = domains.source_test
    f_pred = batched(lambda u8: model.f.classify(to_float(u8)), test.images, 1000).argmax(1)
    reader_pred = batched(lambda u8: reader(model.transfer_tensor(to_float(u8))), test.images, 1000).argmax(1)
    return test.labels, f_pred, reader_pred


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--out", help="default: bench/results/error_split_<run name>.json")
    args = p.parse_args()
    run = Path(args.run)
    out = Path(args.out) if args.out else RESULTS / f"error_split_{run.name}.json"
    split = error_split(*predictions(run))
    payload = {"command": "python bench/error_split.py " + " ".join(sys.argv[1:]), "run": args.run, **split,
               "machine": machine_info()}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    o = split["overall"]
    print(f"wrote {out}: f right {o['f_accuracy']:.2%}, transfer {o['transfer_accuracy']:.2%}; "
          f"f right but reader wrong {o['f_right_reader_wrong']:.2%}, f wrong {1 - o['f_accuracy']:.2%}")


if __name__ == "__main__":
    main()
