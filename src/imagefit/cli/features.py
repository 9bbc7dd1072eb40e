"""`imagefit features`: a linear probe on a frozen model's features (`transfer.linear_probe`)."""

from __future__ import annotations

from ..errors import ImagefitError
from .common import config_command, config_from_args, out_dir

NAME = "features"


def add_arguments(sub) -> None:
    p = sub.add_parser("features", help="linear probe: a scikit-learn head on a frozen model's features",
                       description="Penultimate features of a frozen model (--pretrained imagenet or --init-from), "
                                   "then a linear SVM or logistic regression fitted on the training split and "
                                   "reported on the test split like any model.")
    run = config_command(p, "probe", "folder for linear_probe.json (default: runs/features-TIMESTAMP)")
    run.add_argument("--head", choices=("svm", "logistic"), default="svm", help="the classifier (default: svm)")
    run.add_argument("--c", type=float, default=1.0, help="inverse regularization strength C (default: 1)")


def run(args) -> dict:
    from ..training.transfer import linear_probe
    cfg = config_from_args(args)
    out = out_dir(args, "features")
    if args.c <= 0:
        raise ImagefitError(f"--c must be above 0 (got {args.c:g})")
    result = linear_probe(cfg, out, args.head, args.c)
    report = result.pop("report")
    if not args.json:
        print(f"{args.head} on {result['features']} features of {result['start']}, {result['train_images']} "
              f"training images\n{report}")
    return result
