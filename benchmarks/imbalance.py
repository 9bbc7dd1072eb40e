"""Class imbalance remedies on long-tailed CIFAR-10: balanced accuracy of each remedy beside the plain run.

    python benchmarks/imbalance.py --data DIR --imbalance exp:100

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10. Every run is the `fast` recipe (its network,
schedule and TTA) on the same seeded long-tailed training set; the held-out 5,000 stay balanced. Rows: plain,
oversample, undersample, reweight, logit adjustment (strength 1, Menon et al.'s default, or chosen on validation
data), each adjustment also after oversampling. Prints the table; writes JSON to --out. The issue's bar: the best
remedy beats plain by at least 5 points of balanced accuracy.
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

REMEDIES = {"plain": [], "oversample": ["--balance", "oversample"], "undersample": ["--balance", "undersample"],
            "reweight": ["--balance", "reweight"], "logit-adjust 1": ["--logit-adjust", "1"],
            "oversample + logit-adjust 1": ["--balance", "oversample", "--logit-adjust", "1"],
            # the strength chosen on a 10% validation split (drawn from the long-tailed train, so these runs train on
            # 90% of what the others see): label smoothing bounds the logits, so a fixed strength 1 can overshoot
            "logit-adjust auto": ["--val-fraction", "0.1", "--logit-adjust", "auto"],
            "oversample + logit-adjust auto": ["--balance", "oversample", "--val-fraction", "0.1",
                                               "--logit-adjust", "auto"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--imbalance", default="exp:100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--remedies", help="comma-separated rows to run (default: all); rows of an earlier run with the "
                                      "same --imbalance and --seed are kept in its JSON")
    args = p.parse_args()
    chosen = args.remedies.split(",") if args.remedies else list(REMEDIES)
    unknown = set(chosen) - set(REMEDIES)
    if unknown:
        raise SystemExit(f"unknown remedies {sorted(unknown)}; choose from {', '.join(REMEDIES)}")
    out = Path(args.out)
    path = out / f"imbalance-{date.today()}-{args.imbalance.replace(':', '')}-seed{args.seed}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(chosen):
            extra = REMEDIES[name]
            start = time.perf_counter()
            argv = [sys.executable, "-m", "imagefit", "train", "--recipe", "fast-small", "--data", args.data,
                    "--imbalance", args.imbalance, "--seed", str(args.seed), "--tracking-uri", "none",
                    "--progress", "lines", "--out", f"{tmp}/{i}", *extra, "--json"]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            test = json.loads(Path(f"{tmp}/{i}/metrics.json").read_text())["test"]
            rows[name] = {"accuracy": r["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
                          "macro_f1": test["macro_f1"], "wall_s": round(time.perf_counter() - start, 1),
                          "recall": {c: v["recall"] for c, v in test["per_class"].items()}}
            print(json.dumps({"remedy": name, **{k: v for k, v in rows[name].items() if k != "recall"}}), flush=True)
    rows = {name: rows[name] for name in REMEDIES if name in rows}
    plain = rows["plain"]["balanced_accuracy"] if "plain" in rows else float("nan")
    print(f"\nfast recipe on CIFAR-10 {args.imbalance}, seed {args.seed}; held-out 5,000 (balanced)")
    for name, r in rows.items():
        print(f"{name:>28}: balanced {100 * r['balanced_accuracy']:.2f}% ({100 * (r['balanced_accuracy'] - plain):+.2f})"
              f"  accuracy {100 * r['accuracy']:.2f}%  macro-F1 {100 * r['macro_f1']:.2f}%")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
