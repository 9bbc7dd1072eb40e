"""Learning-rate finder quality: one-cycle at the finder's suggestion against a grid of fixed peak rates.

    python benchmarks/finder.py --data DIR --model fastnet-small --per-class 1000 --epochs 2 --batch-size 128
    python benchmarks/finder.py --data DIR --model resnet18 --per-class 50 --epochs 3 --batch-size 32 --test-images 2000

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10 (its test split is the 5,000 held-out images).
Every run is the same short budget (a seeded class-balanced subset of train, a few epochs, SGD + Nesterov,
one-cycle, crop + flip, no validation split) and is scored on --test-images held-out images (a seeded random
choice; all 5,000 by default). The grid is 6 rates log-spaced over 3 decades (--grid-low to 1000x it); the
issue's bar: the finder's run within 1 point of the grid's best. Prints a table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from imagefit.config import Config
from imagefit.evaluate import gather_logits
from imagefit.loader import Loader
from imagefit.train import RunOptions, Trainer


def config(args, lr) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.val_fraction, cfg.data.per_class = args.data, 0.0, args.per_class
    cfg.model.model = args.model
    cfg.optim.optimizer, cfg.optim.lr = "sgd", lr
    cfg.train.epochs, cfg.train.batch_size, cfg.train.seed = args.epochs, args.batch_size, args.seed
    return cfg.validate()


def one_run(args, lr) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = Trainer(config(args, lr), RunOptions(out=Path(tmp) / "run", tracking_uri="none",
                                                       progress="lines"))
        found = trainer.lr_finder
        finder_s = time.perf_counter() - start
        trainer.test_loader = None  # scored below, on --test-images only
        trainer.fit()
        # A seeded random subset: the held-out split is stored sorted by class, so its first images are not a
        # sample of it.
        n = len(trainer.data.test)
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[: min(args.test_images, n)]
        subset = trainer.data.test.subset(pick.sort().values)
        logits, labels = gather_logits(trainer.model, Loader(subset, 256, trainer.normalize, device=trainer.device))
        accuracy = (logits.argmax(1) == labels).float().mean().item()
    row = {"lr": trainer.cfg.optim.lr, "auto": lr == "auto", "accuracy": accuracy,
           "seconds": round(time.perf_counter() - start, 1)}
    if found:
        row.update(finder_s=round(finder_s, 1), valley=found.valley, minimum_10=found.minimum_10,
                   steps=len(found.lrs), stopped=found.stopped, warning=found.warning)
    print(json.dumps(row), flush=True)
    if found:
        row["curve"] = {"lrs": found.lrs, "losses": found.losses}  # kept in the JSON, to re-read the rules on it
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="fastnet-small")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-images", type=int, default=5000)
    p.add_argument("--grid-low", type=float, default=1e-3)
    p.add_argument("--grid", help="comma-separated peak rates to run instead of the 6-rate grid (e.g. the best "
                                  "rate of a seed-0 grid, to see how another seed moves it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--grid-from", help="reuse the grid rows of an earlier JSON of the same settings (the runs are "
                                       "deterministic for a seed); only the finder's run is trained")
    args = p.parse_args()
    grid = [float(r) for r in args.grid.split(",")] if args.grid else \
        [args.grid_low * 10 ** (3 * i / 5) for i in range(6)]
    if args.grid_from:
        earlier = json.loads(Path(args.grid_from).read_text())
        same = ("model", "per_class", "epochs", "batch_size", "test_images", "grid_low", "grid", "seed", "data")
        if any(earlier["args"].get(k) != vars(args)[k] for k in same):
            raise SystemExit(f"{args.grid_from} was run with other settings; drop --grid-from")
        rows = [one_run(args, "auto")] + [r for r in earlier["rows"] if not r["auto"]]
    else:
        rows = [one_run(args, "auto")] + [one_run(args, lr) for lr in grid]
    best = max(rows[1:], key=lambda r: r["accuracy"])
    gap = 100 * (best["accuracy"] - rows[0]["accuracy"])
    print(f"\n{args.model}, {args.per_class}/class x {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")
    for r in rows:
        tag = "finder" if r["auto"] else ("grid best" if r is best else "grid")
        print(f"{tag:>10}  lr {r['lr']:.3g}  held-out {100 * r['accuracy']:.2f}%  ({r['seconds']} s)")
    print(f"finder vs grid best: {-gap:+.2f} points ({'within' if gap <= 1 else 'NOT within'} 1 point)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"finder-{date.today()}-{args.model}{f'-seed{args.seed}' if args.seed else ''}.json"
    path.write_text(json.dumps({"args": vars(args), "rows": rows, "gap_points": gap}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
