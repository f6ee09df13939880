"""The target reader of L_READ (loss.target_reader) at several confidence thresholds: how purely does
each read the target test images, and which of f's confusions does it inherit?

    python bench/target_reader.py RUN [--min-confidence 0.99,0.999,0.9999] [--steps 1500] [--out FILE]

For each threshold, trains a reader from RUN's f exactly as `dtn run` would (pretrain.train_target_reader,
the run's seed and pretrain settings but for reader_min_confidence), then reads the target test split
with it (bench/f_target_reading.reading_report: accuracy, per-class precision / recall, which true
classes it reads as each class). f's own reading is reported beside them. Target labels are read here
for the diagnosis only. Writes bench/results/target_reader_<run name>.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from f_target_reading import reading_report  # noqa: E402
from machine import RESULTS, machine_info  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--min-confidence", default="0.99,0.999,0.9999")
    p.add_argument("--steps", type=int, default=None, help="reader training steps (default: the run's)")
    p.add_argument("--out")
    args = p.parse_args()
    from dtn.apply import DTN
    from dtn.metrics import batched
    from dtn.nets import to_float
    from dtn.pretrain import train_target_reader
    from dtn.run import autocast_dtype, load_domains

    model = DTN.load(args.run, device="cpu")
    cfg, domains = model.cfg, load_domains(model.cfg)
    test = domains.target_test

    def read(classify) -> dict:
        with torch.inference_mode():
            return reading_report(test.labels, batched(classify, to_float(test.images)).float().softmax(1))

    out = {"command": "python bench/target_reader.py " + " ".join(sys.argv[1:]), "run": args.run,
           "target": cfg.data.target, "n": len(test), "f": read(model.f.classify), "readers": {}}
    for level in (float(v) for v in args.min_confidence.split(",")):
        pre = replace(cfg.pretrain, reader_min_confidence=level, reader_steps=args.steps or cfg.pretrain.reader_steps)
        t0 = time.time()
        reader, pseudo = train_target_reader(cfg.nets, pre, model.f, domains.target_train, cfg.train.seed,
                                             autocast_dtype(cfg))
        out["readers"][str(level)] = {"trained_on": len(pseudo), "seconds": round(time.time() - t0, 1),
                                      **read(reader.classify)}
        print(f"reader at {level}: {len(pseudo):,} targets, {out['readers'][str(level)]['accuracy']:.2%} on "
              f"{cfg.data.target} test", flush=True)
    out["machine"] = machine_info()
    path = Path(args.out) if args.out else RESULTS / f"target_reader_{Path(args.run).name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
