"""`imagefit find-lr`: the learning-rate range test (`imagefit.find_lr`)."""

from __future__ import annotations

from .common import add_tracking, config_command, given_options, out_dir

NAME = "find-lr"


def add_arguments(sub) -> None:
    p = sub.add_parser("find-lr", help="learning-rate range test: plot, a one-cycle peak rate, every candidate",
                       description="Train briefly at exponentially growing rates (weights and optimizer are "
                                   "restored after) and suggest a peak rate for one-cycle: the rate at the smoothed "
                                   "loss's minimum when the test diverged after it, else its steepest descent. "
                                   "Every candidate (steepest, valley, minimum, minimum/10) is reported and drawn.")
    run = config_command(p, "range test", "folder for lr_finder.png and lr_finder.json (default: "
                                          "runs/find-lr-TIMESTAMP)")
    run.add_argument("--start-lr", type=float, default=1e-7, help="first rate (default: 1e-7)")
    run.add_argument("--end-lr", type=float, default=10.0, help="last rate (default: 10)")
    run.add_argument("--steps", type=int, default=100, help="mini-batches at most (default: 100)")
    add_tracking(run)


def run(args) -> dict:
    from ..api import find_lr
    out = out_dir(args, "find-lr")
    result = find_lr(args.recipe, out=out, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                     tracking_uri=args.tracking_uri, experiment=args.experiment, **given_options(args))
    plot = out / "lr_finder.png"
    if not args.json:
        from ..training.lr_finder import describe_candidates
        print(f"suggested peak rate {result.suggestion:.2e}, the {result.rule} ({describe_candidates(result)}; "
              f"{len(result.lrs)} steps, {result.stopped}); plot {plot}")
        if result.warning:
            print(f"warning: {result.warning}")
    return {"suggestion": result.suggestion, "rule": result.rule, "steepest": result.steepest,
            "valley": result.valley, "minimum": result.minimum, "minimum_10": result.minimum_10,
            "undone": result.undone, "steps": len(result.lrs), "stopped": result.stopped,
            "warning": result.warning, "plot": str(plot), "out": str(out)}
