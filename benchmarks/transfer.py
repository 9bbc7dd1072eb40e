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
- probe: `imagefit features --init-from SOURCE --head svm` (a linear SVM on the frozen source features);
- with --process-sizes 16,32: `imagefit fine-tune --sizes 16,32` (the practitioner's process: both stages at each
  size), with half the all-layers epochs and one head epoch at each of the two sizes: 2 head + N all-layers
  epochs in all, against plain fine-tune's 3 + N (the process's smaller epochs are also cheaper).

--arms picks which arms run (e.g. `--arms fine-tune,process` to check a change to the process against plain
fine-tuning on new seeds without the scratch arms); --only-process is `--arms process`.

--source RUN reuses a trained source bundle (seeds of the target arms then share one source, as a practitioner
shares one pretrained model; --keep-source DIR saves the one trained here).

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
ARMS = ("scratch", "fine-tune", "process", "probe")
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
    p.add_argument("--source", help="a trained source run folder to reuse (default: train one)")
    p.add_argument("--keep-source", metavar="DIR", help="train the source into DIR and keep it")
    p.add_argument("--process-sizes", help="also the fine-tune process at these sizes (e.g. 16,32)")
    p.add_argument("--arms", help=f"comma-separated, of {', '.join(ARMS)} (default: all; process only with "
                   "--process-sizes)")
    p.add_argument("--only-process", action="store_true", help="with --source and --process-sizes: run the process "
                   "arm alone (e.g. again after a change to it; the other arms of the seed do not depend on it)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.only_process and not (args.source and args.process_sizes):
        p.error("--only-process needs --source and --process-sizes")
    arms = ["process"] if args.only_process else args.arms.split(",") if args.arms else \
        [a for a in ARMS if a != "process" or args.process_sizes]
    if set(arms) - set(ARMS) or ("process" in arms and not args.process_sizes):
        p.error(f"--arms takes {', '.join(ARMS)} (process with --process-sizes); got {args.arms}")
    data = ["--data", args.data, "--model", args.model, "--val-fraction", "0", "--seed", str(args.seed)]
    common = [*data, "--tracking-uri", "none", "--progress", "lines"]

    def target_with(epochs: int) -> list[str]:
        return [*common, "--classes", TARGET, "--per-class", str(args.per_class), "--epochs", str(epochs),
                "--batch-size", "50"]
    target = target_with(args.target_epochs)
    with tempfile.TemporaryDirectory() as tmp:
        if args.source:
            src = args.source
            source = json.loads((Path(src) / "metrics.json").read_text())
            source["wall_s"] = None
        else:
            src = args.keep_source or f"{tmp}/source"
            source = imagefit("train", *common, "--classes", SOURCE, "--epochs", str(args.source_epochs),
                              "--batch-size", "256", "--lr", "0.2", "--out", src)
        print(f"source ({SOURCE}): held-out {100 * source['accuracy']:.2f}% ({source['wall_s']} s)", flush=True)
        rows = {}
        if "scratch" in arms:
            rows["scratch"] = imagefit("train", *target, "--lr", "auto", "--out", f"{tmp}/scratch")
            for lr in filter(None, args.scratch_lrs.split(",")):
                rows[f"scratch lr {lr}"] = imagefit("train", *target, "--lr", lr, "--out", f"{tmp}/scratch-{lr}")
        if "fine-tune" in arms:
            rows["fine-tune"] = imagefit("fine-tune", *target, "--init-from", src, "--head-epochs", "3",
                                         "--out", f"{tmp}/ft")
        if "process" in arms:
            # the same total epochs as the plain arm: half its head and all-layers epochs at each of two sizes
            sizes = args.process_sizes.split(",")
            rows["fine-tune process"] = imagefit(
                "fine-tune", *target_with(args.target_epochs // len(sizes)), "--init-from", src,
                "--head-epochs", str(max(1, 3 // len(sizes))), "--sizes", args.process_sizes, "--out", f"{tmp}/proc")
        if "probe" in arms:
            rows["probe (svm)"] = imagefit("features", *data, "--classes", TARGET, "--per-class", str(args.per_class),
                                           "--init-from", src, "--head", "svm", "--out", f"{tmp}/probe")
    print(f"\ntarget ({TARGET}), {args.per_class} training images per class, {args.model}, seed {args.seed}")
    for name, r in rows.items():
        print(f"{name:>12}: held-out {100 * r['accuracy']:.2f}% on {r['n']} images ({r['wall_s']} s)")
    best, gain = None, None
    if "scratch" in arms and "fine-tune" in arms:
        best = max((k for k in rows if k.startswith("scratch")), key=lambda k: rows[k]["accuracy"])
        gain = 100 * (rows["fine-tune"]["accuracy"] - rows[best]["accuracy"])
        print(f"fine-tune - best scratch ({best}): {gain:+.2f} points (bar: +10)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    some = "" if set(arms) >= {"scratch", "fine-tune", "probe"} else "-" + "+".join(arms)
    stem = f"transfer-{date.today()}-{args.model}-seed{args.seed}{some}"
    path = out / f"{stem}.json"
    n = 1
    while path.exists():  # an earlier run's JSON is never overwritten
        n += 1
        path = out / f"{stem}-{n}.json"
    slim = {k: {f: v for f, v in r.items() if f not in ("confusion", "per_class", "head", "all", "report")}
            for k, r in rows.items()}
    path.write_text(json.dumps({"args": vars(args), "source": source["accuracy"], "rows": slim,
                                "best_scratch": best, "gain_points": gain}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
