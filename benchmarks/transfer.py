"""Transfer on a small dataset: fine-tuned vs trained from scratch vs a linear probe, same 500 images.

    python benchmarks/transfer.py --data DIR

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10. The source task is 5 animal classes (bird,
cat, deer, dog, frog: all their training images); the target task is the other 5 classes (CIFAR-10 has only 4
vehicles: airplane, automobile, ship, truck, so horse, the sixth animal, completes the five) with --per-class
training images each. Each arm is one `imagefit` command, as a user would type it, and all are scored on the
target classes' held-out images:

- scratch: the target images alone, rate from the range test (--lr auto), and at each rate of --scratch-lrs: the
  bar is measured against the best of these, so a poor finder pick cannot flatter fine-tuning;
- fine-tune: `imagefit fine-tune --init-from SOURCE` (head, then all layers at discriminative rates, each rate
  from the range test);
- probe: `imagefit features --init-from SOURCE --head svm` (a linear SVM on the frozen source features).

Prints the table; writes JSON to --out. The issue's bar: fine-tuned beats scratch by at least 10 points.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

SOURCE = "bird,cat,deer,dog,frog"
TARGET = "airplane,automobile,horse,ship,truck"


def imagefit(*argv: str) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imagefit", *argv, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"imagefit {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="fastnet-small")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--source-epochs", type=int, default=6)
    p.add_argument("--target-epochs", type=int, default=30)
    p.add_argument("--scratch-lrs", default="", help="comma-separated fixed peak rates for more scratch arms")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    data = ["--data", args.data, "--model", args.model, "--val-fraction", "0", "--seed", str(args.seed)]
    common = [*data, "--tracking-uri", "none", "--progress", "lines"]
    target = [*common, "--classes", TARGET, "--per-class", str(args.per_class), "--epochs", str(args.target_epochs),
              "--batch-size", "50"]
    with tempfile.TemporaryDirectory() as tmp:
        source = imagefit("train", *common, "--classes", SOURCE, "--epochs", str(args.source_epochs),
                          "--batch-size", "256", "--lr", "0.2", "--out", f"{tmp}/source")
        print(f"source ({SOURCE}): held-out {100 * source['accuracy']:.2f}% in {source['wall_s']} s", flush=True)
        rows = {
            "scratch": imagefit("train", *target, "--lr", "auto", "--out", f"{tmp}/scratch"),
            **{f"scratch lr {lr}": imagefit("train", *target, "--lr", lr, "--out", f"{tmp}/scratch-{lr}")
               for lr in filter(None, args.scratch_lrs.split(","))},
            "fine-tune": imagefit("fine-tune", *target, "--init-from", f"{tmp}/source", "--head-epochs", "3",
                                  "--out", f"{tmp}/ft"),
            "probe (svm)": imagefit("features", *data, "--classes", TARGET, "--per-class", str(args.per_class),
                                    "--init-from", f"{tmp}/source", "--head", "svm", "--out", f"{tmp}/probe"),
        }
    print(f"\ntarget ({TARGET}), {args.per_class} training images per class, {args.model}, seed {args.seed}")
    for name, r in rows.items():
        print(f"{name:>12}: held-out {100 * r['accuracy']:.2f}% on {r['n']} images ({r['wall_s']} s)")
    best = max((k for k in rows if k.startswith("scratch")), key=lambda k: rows[k]["accuracy"])
    gain = 100 * (rows["fine-tune"]["accuracy"] - rows[best]["accuracy"])
    print(f"fine-tune - best scratch ({best}): {gain:+.2f} points (bar: +10)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"transfer-{date.today()}-{args.model}.json"
    slim = {k: {f: v for f, v in r.items() if f not in ("confusion", "per_class", "head", "all", "report")}
            for k, r in rows.items()}
    path.write_text(json.dumps({"args": vars(args), "source": source["accuracy"], "rows": slim,
                                "best_scratch": best, "gain_points": gain}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
