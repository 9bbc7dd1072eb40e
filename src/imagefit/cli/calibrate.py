"""`imagefit calibrate`: temperature scaling for a bundle (`evaluation.calibrate.calibrate_bundle`)."""

from __future__ import annotations

from .common import add_json

NAME = "calibrate"


def add_arguments(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a bundle's temperature so its probabilities match how often it is right",
                       description="Temperature scaling (one number dividing the scores: accuracy unchanged) fitted "
                                   "on a split, stored in the bundle so evaluate, predict, serve and export apply it. "
                                   "Runs with a validation split do this at the end of training already. The "
                                   "original bundle is kept beside it as NAME.uncalibrated.safetensors.")
    p.add_argument("--bundle", required=True, help="run folder or bundle file")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="images to fit on: val, or test for a bundle trained without a validation split (its "
                        "error is then reported cross-fitted, on halves the temperature was not fitted on)")
    add_json(p)


def run(args) -> dict:
    from ..evaluation.calibrate import calibrate_bundle
    r = calibrate_bundle(args.bundle, data=args.data, split=args.split)
    if not args.json:
        cross = (f"; cross-fitted {100 * r['ece_after_crossfit']:.2f}%" if "ece_after_crossfit" in r else "")
        print(f"temperature {r['temperature']:.3f}: calibration error on {r['n']} {r['split']} images "
              f"{100 * r['ece_before']:.2f}% -> {100 * r['ece_after']:.2f}%{cross}; accuracy {r['accuracy']:.4f} "
              f"unchanged; bundle {r['bundle']} (original kept as {r['original']})")
    return r
