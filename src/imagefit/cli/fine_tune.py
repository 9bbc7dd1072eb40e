"""`imagefit fine-tune`: fastai's two-stage transfer recipe (`transfer.fine_tune`)."""

from __future__ import annotations

from .common import config_from_args, out_dir, run_group, run_options

NAME = "fine-tune"


def add_arguments(sub) -> None:
    p = sub.add_parser("fine-tune", help="transfer learning: train the head on a frozen body, then all layers",
                       description="fastai's recipe from trained weights (--pretrained imagenet or --init-from): "
                                   "stage 1 trains the head with the body frozen, stage 2 all layers with "
                                   "discriminative rates (--layer-lr-decay, default 2.6 here); each stage's rate "
                                   "from the range test unless --lr is given. Stages go to OUT/1-head, OUT/2-all.")
    run = run_group(p)
    run.add_argument("--head-epochs", type=int, default=1, help="epochs of stage 1 (default: 1); --epochs sets "
                                                                 "stage 2")


def run(args) -> dict:
    from ..training.transfer import fine_tune
    cfg = config_from_args(args)
    out = out_dir(args, "fine-tune", empty=True)
    result = fine_tune(cfg, run_options(args, out), args.head_epochs, lr_given="lr" in vars(args))
    if not args.json:
        print(f"fine-tuned: test accuracy {result['accuracy']:.4f} (head only: {result['head']['accuracy']:.4f}); "
              f"bundle {result['bundle']}")
    return result
