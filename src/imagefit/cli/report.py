"""`imagefit report`: the error-analysis page of a run (`report.build_report`)."""

from __future__ import annotations

import json

from ..errors import ImagefitError
from .common import add_json

NAME = "report"


def add_arguments(sub) -> None:
    p = sub.add_parser("report", help="error-analysis report of a run (or a comparison of runs): one HTML page",
                       description="Write RUN/report/index.html: curves, confusion matrix, per-class metrics, most "
                                   "confused pairs, highest-loss test images, calibration, the finder's plot, "
                                   "a robustness probe (rotated, blurred, shrunk, darkened, brightened) and the "
                                   "run's setup. With two or more runs, a comparison page in --out instead: the "
                                   "curves overlaid, the metrics side by side and each class's recall per run.")
    p.add_argument("run", nargs="+", help="run folder (or its bundle.safetensors); two or more: compare them")
    p.add_argument("--out", default="comparison", help="with two or more runs: the folder for the comparison page "
                                                       "(new, empty or an earlier comparison; default: comparison)")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--top", type=int, default=16, help="highest-loss images to show (default: 16)")
    p.add_argument("--tracking-uri", help="MLflow store to attach the report to (default: the run's own store, "
                                          "where it was tracked; 'none': off)")
    p.add_argument("--experiment", default="imagefit", help="MLflow experiment for a store other than the run's "
                                                            "(default: imagefit)")
    add_json(p)


def run(args) -> dict:
    from ..evaluation.report import build_comparison, build_report
    if len(args.run) > 1:
        page = build_comparison(args.run, args.out, data=args.data)
        compared = json.loads((page.parent / "comparison.json").read_text())["runs"]
        if not args.json:
            for name, row in compared.items():
                print(f"{name}: accuracy {row['accuracy']:.4f}, calibration error {row['ece']:.4f}")
            print(f"comparison {page}")
        return {"report": str(page), "runs": compared}
    args.run = args.run[0]
    if args.top < 1:
        raise ImagefitError(f"--top must be 1 or more (got {args.top})")
    page = build_report(args.run, data=args.data, top=args.top, tracking_uri=args.tracking_uri,
                        experiment=args.experiment)
    summary = json.loads((page.parent / "report.json").read_text())
    if not args.json:
        for warning in summary["warnings"]:
            print(f"warning: {warning}")
        print(f"report {page} (accuracy {summary['accuracy']:.4f}, calibration error {summary['ece']:.4f})")
    return {"report": str(page), **summary}
