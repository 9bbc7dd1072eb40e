"""`imagefit train`: train, evaluate and bundle a model (`imagefit.train`)."""

from __future__ import annotations

from pathlib import Path

from .common import given_options, run_group

NAME = "train"
RESUME_HINT = "a run's last checkpoint too: continue it with 'imagefit train --resume RUN_DIR'"


def add_arguments(sub) -> None:
    p = sub.add_parser("train", help="train, evaluate and bundle a model",
                       description="Train a model, evaluate it on the test split, and save a bundle.")
    run = run_group(p)
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly where it stopped")


def run(args) -> dict:
    from ..api import train
    result = train(args.recipe, out=args.out, resume=Path(args.resume) if args.resume else None,
                   tracking_uri=args.tracking_uri, experiment=args.experiment, progress=args.progress,
                   stop_after_steps=args.stop_after_steps, **given_options(args)).result
    if "folds" in result:
        if not args.json:
            print(f"{result['folds']}-fold validation accuracy {result['val_accuracy_mean']:.4f} ± "
                  f"{result['val_accuracy_std']:.4f}; bundles under {result['run_dir']}/fold-*")
        return result
    if result.get("rank"):  # another torchrun process: rank 0 reports for all
        args.json = False
        return result
    if not args.json and "accuracy" in result:
        print(f"test accuracy {result['accuracy']:.4f} (top-5 {result['top5']:.4f}) on {result['n']} images; "
              f"bundle {result['bundle']}")
    return result
