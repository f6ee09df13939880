"""How well a run's f reads the *target* test images (which it never trained on), and how much purer
its confident readings are: what a conditional D and L_LAYOUT learn a real class from.

    python bench/f_target_reading.py RUN [--reader] [--out bench/results/f_target_reading_NAME.json]

Per class c of f's head: precision (share of the targets f reads as c that are c) and recall; which
true classes f reads as each class; and for softmax thresholds 0.5-0.99, the share of targets kept and
the precision among them (train.target_min_confidence). With --reader, the same for the run's target
reader (RUN/reader.safetensors, loss.target_reader), which learned from f's confident readings: does it
inherit f's confusions? Target labels are read here for the diagnosis only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import RESULTS, machine_info  # noqa: E402

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)


def reading_report(labels: torch.Tensor, probs: torch.Tensor) -> dict:
    """labels (N,), probs (N, K) softmax of f's head -> precision/recall per class, confusion, thresholds."""
    k = probs.shape[1]
    confidence, pred = probs.max(1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {str(c): {"precision": round(confusion[c, c].item() / max(1, confusion[:, c].sum().item()), 4),
                          "recall": round(confusion[c, c].item() / max(1, confusion[c].sum().item()), 4),
                          "read_as_this_by_true_class": confusion[:, c].tolist()} for c in range(k)}
    kept = {}
    for t in THRESHOLDS:
        m = confidence >= t
        kept[str(t)] = {"kept": round(m.float().mean().item(), 4),
                        "precision": round((pred[m] == labels[m]).float().mean().item(), 4) if m.any() else None}
    return {"accuracy": round((pred == labels).float().mean().item(), 4), "per_class": per_class,
            "confidence_thresholds": kept}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--reader", action="store_true", help="also read the target with the run's target reader(s), RUN/reader*.safetensors")
    p.add_argument("--out")
    args = p.parse_args()
    from dtn.apply import DTN
    from dtn.metrics import batched
    from dtn.nets import Encoder, to_float
    from dtn.pretrain import ReaderEnsemble
    from dtn.run import load_domains
    from dtn.weights import load_weights

    model = DTN.load(args.run, device="cpu")
    test = load_domains(model.cfg).target_test

    def read(classify) -> dict:
        with torch.inference_mode():
            return reading_report(test.labels, batched(classify, to_float(test.images)).float().softmax(1))

    out = {"command": "python bench/f_target_reading.py " + " ".join(sys.argv[1:]), "run": args.run,
           "target": model.cfg.data.target, "n": len(test), **read(model.f.classify)}
    if args.reader:
        paths = sorted(Path(args.run).glob("reader*.safetensors"))     # reader-NAME.safetensors: an ensemble
        if not paths:
            raise SystemExit(f"{args.run}: no reader*.safetensors (was loss.target_reader on?)")
        readers = []
        for path in paths:
            readers.append(Encoder(model.cfg.nets))
            load_weights(readers[-1], path)
        out["reader"] = read(ReaderEnsemble(readers).eval().classify)
        out["reader_files"] = [path.name for path in paths]
    out["machine"] = machine_info()
    path = Path(args.out) if args.out else RESULTS / f"f_target_reading_{Path(args.run).name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}: f reads {out['accuracy']:.2%} of {out['target']} test right; at 0.99: "
          f"{out['confidence_thresholds']['0.99']}" + (f"; the reader {out['reader']['accuracy']:.2%}" if args.reader else ""))


if __name__ == "__main__":
    main()
