"""`imagefit evaluate`: a bundle, or an ensemble of bundles, on a split (`evaluate.evaluate_bundles`); the confusion
matrix plotted beside the (first) bundle, and the evaluation tracked."""

from __future__ import annotations

from ..config import TTA_AVERAGES, TTA_MODES
from .common import add_json, add_tracking, print_evaluation

NAME = "evaluate"


def add_arguments(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a bundle (or an ensemble of bundles) on a test split")
    p.add_argument("--bundle", required=True, action="append",
                   help="run folder or bundle.safetensors; repeat it to evaluate an ensemble")
    p.add_argument("--data", help="data folder (default: the one the (first) bundle was trained on)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation (default: the one each bundle was trained with)")
    p.add_argument("--tta-average", choices=TTA_AVERAGES, help="how views combine (default: the bundle's)")
    p.add_argument("--vote", choices=("soft", "hard"),
                   help="ensembles: mean probability (soft) or majority (hard, ties broken by probability); "
                        "default: the ensemble folder's (boosting: hard), else soft")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    add_tracking(p)
    add_json(p)


def run(args) -> dict:
    from .. import plots
    from ..evaluation.evaluate import evaluate_bundles
    from ..runtime import resolve_device
    from ..tracking import check_store, record
    check_store(args.tracking_uri, args.experiment)  # a remote store that cannot be opened: refused before the work
    m, first = evaluate_bundles(args.bundle, data=args.data, split=args.split, batch_size=args.batch_size,
                                tta=args.tta, tta_average=args.tta_average, vote=args.vote,
                                device=resolve_device(args.device))
    try:
        m["confusion_png"] = str(plots.confusion_matrix(m["confusion"], first.classes,
                                                        first.path.parent / f"confusion-{args.split}.png",
                                                        f"{args.split} split"))
    except OSError:
        pass  # a read-only bundle folder: the numbers still print
    scalars = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    from ..tracking import default_uri
    trained_in = first.metrics.get("mlflow_run_id") if len(args.bundle) == 1 and \
        first.metrics.get("mlflow_uri") == (args.tracking_uri or default_uri()) else None
    m["mlflow_run_id"] = record(args.tracking_uri, args.experiment, f"evaluate {first.path.parent.name}",
                                {"bundles": ",".join(args.bundle), "split": args.split, "data": args.data,
                                 "tta": args.tta, "vote": args.vote}, scalars, [m.get("confusion_png", "")],
                                parent=trained_in)  # nested under the training run it evaluated
    if not args.json:
        print_evaluation(m, first.classes)
    return {**m, "split": args.split, "bundle": args.bundle[0] if len(args.bundle) == 1 else args.bundle}
