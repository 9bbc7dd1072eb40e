"""`imagefit fine-tune`: fastai's two-stage transfer recipe (`transfer.fine_tune`)."""

from __future__ import annotations

from ..errors import ImagefitError
from .common import config_from_args, out_dir, run_group, run_options

NAME = "fine-tune"
RESUME_HINT = ("finished stages and the last checkpoint too: continue with 'imagefit fine-tune --resume "
               "--out OUT' and the same options")


def add_arguments(sub) -> None:
    p = sub.add_parser("fine-tune", help="transfer learning: train the head on a frozen body, then all layers",
                       description="fastai's recipe from trained weights (--pretrained imagenet or --init-from): "
                                   "stage 1 trains the head with the body frozen, stage 2 all layers with "
                                   "discriminative rates (--layer-lr-decay, default 2.6 here); each stage's rate "
                                   "from the range test unless --lr is given. Stages go to OUT/1-head, OUT/2-all. "
                                   "With --sizes 16,32 the practitioner's process instead: both stages at each "
                                   "size (OUT/1-head-16, OUT/2-all-16, OUT/3-head-32, OUT/4-all-32), each size from "
                                   "the last one's weights; later sizes' head stages at the first head stage's "
                                   "rate, the all-layers stages at rates from their own range test (earliest "
                                   "layers) up to the head stage's rate / 10 (the head).",
)
    run = run_group(p)
    for action in p._actions:  # the config flag's default is 1.0 (one rate); fine-tune's stage 2 uses 2.6
        if action.dest == "layer_lr_decay":
            action.help = action.help.replace("(default: 1.0)", "(default here: 2.6, ULMFiT's factor; with --sizes: "
                                                                 "from the range test)")
    run.add_argument("--head-epochs", type=int, default=1, help="epochs of each head stage (default: 1); --epochs "
                                                                 "sets each all-layers stage")
    run.add_argument("--sizes", help="image sides, smallest first (e.g. 16,32): the two stages at each size, each "
                                     "size from the last one's weights (default: one size, --size)")
    run.add_argument("--resume", action="store_true", help="continue the fine-tuning in --out: finished stages "
                                                           "are kept, an interrupted one continues, the rest run")


def run(args) -> dict:
    from ..training.transfer import fine_tune
    cfg = config_from_args(args)
    if args.resume and not args.out:
        raise ImagefitError("--resume continues the fine-tuning in --out: give --out")
    out = out_dir(args, "fine-tune", empty=not args.resume)
    result = fine_tune(cfg, run_options(args, out), args.head_epochs, lr_given="lr" in vars(args),
                       sizes=parse_sizes(args.sizes), resume=args.resume)
    if not args.json:
        stages = ", ".join(f"{name} {r['accuracy']:.4f}" for name, r in result["stages"].items()
                           if r.get("accuracy") is not None)
        print(f"fine-tuned: test accuracy {result['accuracy']:.4f} (stages: {stages}); bundle {result['bundle']}")
    return result


def parse_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise ImagefitError(f"--sizes takes comma-separated image sides in pixels, e.g. 16,32 (got {text!r})") \
            from None
    if sizes != sorted(set(sizes)):
        raise ImagefitError(f"--sizes must grow, each side once (got {text}); e.g. 16,32")
    return sizes
