"""Learning-rate finder quality: one-cycle at the finder's suggestion against a grid of fixed peak rates.

    python benchmarks/finder.py --data DIR --model fastnet-small --per-class 1000 --epochs 2 --batch-size 128
    python benchmarks/finder.py --data DIR --model resnet18 --per-class 50 --epochs 3 --batch-size 32 --test-images 2000

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10 (its test split is the 5,000 held-out images).
Every run is the same short budget (a seeded class-balanced subset of train, a few epochs, SGD + Nesterov,
one-cycle, crop + flip, no validation split) and is scored on --test-images held-out images (a seeded random
choice; all 5,000 by default). The grid is 6 rates log-spaced over 3 decades (--grid-low to 1000x it); the
issue's bar: the finder's run within 1 point of the grid's best. Prints a table; writes JSON to --out.

    python benchmarks/finder.py --summary finder-DATE-resnet18.json finder-DATE-resnet18-seed1.json ...

reads the JSONs of several seeds (same settings, same grid) and judges the bar on their means: the finder's mean
accuracy against the grid rate with the best mean. One seed of these short runs moves a rate's accuracy by points.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from imagefit.config import Config
from imagefit.evaluation.evaluate import gather_logits
from imagefit.data.loader import Loader
from imagefit.training.train import RunOptions, Trainer

# What makes two runs' JSONs the same benchmark; --grid-from also needs the same grid and seed.
SETTINGS = ("model", "per_class", "epochs", "batch_size", "test_images", "data")


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
        row.update(finder_s=round(finder_s, 1), rule=found.rule, steepest=found.steepest, valley=found.valley,
                   minimum=found.minimum, minimum_10=found.minimum_10, undone=round(found.undone, 3),
                   steps=len(found.lrs), stopped=found.stopped, warning=found.warning)
    print(json.dumps(row), flush=True)
    if found:
        row["curve"] = {"lrs": found.lrs, "losses": found.losses}  # kept in the JSON, to re-read the rules on it
    return row


def summary(paths: list[str]) -> None:
    """The bar on the means over seeds, with each seed's own gap and the standard error of the mean gap."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if any(run["args"].get("no_finder") for run in runs):
        raise SystemExit("a --no-finder JSON has no finder run to judge; leave it out of --summary")
    grids = [[r["lr"] for r in run["rows"] if not r["auto"]] for run in runs]
    if any([run["args"][k] for k in SETTINGS] != [runs[0]["args"][k] for k in SETTINGS] for run in runs) or \
            any(g != grids[0] for g in grids):
        raise SystemExit("the JSONs were run with other settings or other grids; summarize runs of one command")
    seeds = [run["args"]["seed"] for run in runs]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"seeds repeat ({seeds}); give one JSON per seed")
    found = [next(r for r in run["rows"] if r["auto"]) for run in runs]
    finder = np.array([r["accuracy"] for r in found]) * 100
    grid = np.array([[r["accuracy"] for r in run["rows"] if not r["auto"]] for run in runs]) * 100
    best = int(np.argmax(grid.mean(0)))
    gaps = grid[:, best] - finder
    a = runs[0]["args"]
    print(f"{a['model']}, {a['per_class']}/class x {a['epochs']} epochs, batch {a['batch_size']}, seeds {seeds}")
    rates = ", ".join(f"{r['lr']:.3g}" for r in found)
    print(f"{'finder':>10}  lr {rates}  held-out {', '.join(f'{x:.2f}' for x in finder)}  mean {finder.mean():.2f}%")
    for i, lr in enumerate(grids[0]):
        tag = "grid best" if i == best else "grid"
        print(f"{tag:>10}  lr {lr:.3g}  held-out {', '.join(f'{x:.2f}' for x in grid[:, i])}  mean "
              f"{grid[:, i].mean():.2f}%")
    se = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else math.nan
    print(f"finder vs grid best, on the means: {-gaps.mean():+.2f} points (standard error {se:.2f}; per seed "
          f"{', '.join(f'{-g:+.2f}' for g in gaps)}): {'within' if gaps.mean() <= 1 else 'NOT within'} 1 point")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--summary", nargs="+", metavar="JSON", help="judge the bar on the means of these runs' JSONs "
                                                                    "(one per seed) instead of training")
    p.add_argument("--data")
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
    once = p.add_mutually_exclusive_group()  # --grid-from trains only the finder's run, --no-finder only the grid
    once.add_argument("--grid-from", help="reuse the grid rows of an earlier JSON of the same settings (the runs are "
                                       "deterministic for a seed); only the finder's run is trained")
    once.add_argument("--no-finder", action="store_true", help="train the grid rates only (e.g. a rate another rule "
                                                            "read off a saved curve); no bar")
    args = p.parse_args()
    if args.summary:
        return summary(args.summary)
    if not args.data:
        p.error("--data is required (or --summary JSON ...)")
    grid = [float(r) for r in args.grid.split(",")] if args.grid else \
        [args.grid_low * 10 ** (3 * i / 5) for i in range(6)]
    if args.grid_from:
        earlier = json.loads(Path(args.grid_from).read_text())
        if any(earlier["args"].get(k) != vars(args)[k] for k in SETTINGS + ("grid_low", "grid", "seed")):
            raise SystemExit(f"{args.grid_from} was run with other settings; drop --grid-from")
        rows = [one_run(args, "auto")] + [r for r in earlier["rows"] if not r["auto"]]
    else:
        rows = ([] if args.no_finder else [one_run(args, "auto")]) + [one_run(args, lr) for lr in grid]
    best = max((r for r in rows if not r["auto"]), key=lambda r: r["accuracy"])
    gap = None if args.no_finder else 100 * (best["accuracy"] - rows[0]["accuracy"])
    print(f"\n{args.model}, {args.per_class}/class x {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")
    for r in rows:
        tag = "finder" if r["auto"] else ("grid best" if r is best else "grid")
        print(f"{tag:>10}  lr {r['lr']:.3g}  held-out {100 * r['accuracy']:.2f}%  ({r['seconds']} s)")
    if gap is not None:
        print(f"finder vs grid best: {-gap:+.2f} points ({'within' if gap <= 1 else 'NOT within'} 1 point)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"finder-{date.today()}-{args.model}{f'-seed{args.seed}' if args.seed else ''}"
            f"{'-grid-only' if args.no_finder else ''}")
    path, n = out / f"{stem}.json", 1
    while path.exists():  # an earlier run's JSON is never overwritten
        n += 1
        path = out / f"{stem}-{n}.json"
    path.write_text(json.dumps({"args": vars(args), "rows": rows, "gap_points": gap}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
