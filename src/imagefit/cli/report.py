"""`imagefit report`: the error-analysis page of a run (`report.build_report`)."""

from __future__ import annotations

import json

from ..errors import ImagefitError
from .common import add_json

NAME = "report"


def add_arguments(sub) -> None:
    p = sub.add_parser("report", help="error-analysis report of a run: one HTML page with its figures",
                       description="Write RUN/report/index.html: curves, confusion matrix, per-class metrics, most "
                                   "confused pairs, highest-loss test images, calibration, the finder's plot, "
                                   "and a robustness probe (rotated, blurred, shrunk, darkened, brightened).")
    p.add_argument("run", help="run folder (or its bundle.safetensors)")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--top", type=int, default=16, help="highest-loss images to show (default: 16)")
    p.add_argument("--tracking-uri", help="MLflow store to attach the report to (default: the run's own store, "
                                          "where it was tracked; 'none': off)")
    p.add_argument("--experiment", default="imagefit", help="MLflow experiment for a store other than the run's "
                                                            "(default: imagefit)")
    add_json(p)


def run(args) -> dict:
    from ..evaluation.report import build_report
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
