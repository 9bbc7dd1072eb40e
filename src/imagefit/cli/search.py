"""`imagefit search`: an Optuna study over config fields (`search.search`), or its report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ImagefitError
from .common import add_json

NAME = "search"
RESUME_HINT = "finished trials too: run the same 'imagefit search' command again, the study continues"


def add_arguments(sub) -> None:
    p = sub.add_parser("search", help="hyperparameter search (Optuna) over config fields, on the validation split")
    p.add_argument("--space", help="YAML search space (recipe, fixed, objective, params, seeds)")
    p.add_argument("--trials", type=int, default=20, help="trials the study should reach, over all workers "
                                                          "(default: 20)")
    p.add_argument("--out", default="runs/search", help="folder for trial runs, the study and best.yaml "
                                                        "(default: runs/search)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/optuna.db; postgresql://… for "
                                     "workers on many machines)")
    p.add_argument("--study", default="imagefit", help="study name (default: imagefit)")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe", help="default: tpe")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="default: median")
    p.add_argument("--data", help="data folder (default: the space's, else $IMAGEFIT_DATA)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db; none: off)")
    p.add_argument("--experiment", default="imagefit", help="MLflow experiment name (default: imagefit)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    p.add_argument("--report", action="store_true", help="no new trials: best trials, importances, history plots")
    add_json(p)


def run(args) -> dict:
    from ..experiments import search
    from ..files import check_writable
    check_writable(args.out)
    storage = args.storage or f"sqlite:///{(Path(args.out) / 'optuna.db').resolve()}"
    if args.report:
        r = search.report(storage, args.study, args.out)
        if not args.json:
            _print_study(r, f"plots under {Path(args.out) / 'report'}")
        return r
    if not args.space:
        raise ImagefitError("--space SPACE.yaml is required to run trials (or pass --report)")
    r = search.search(args.space, args.trials, args.out, storage=storage, study_name=args.study,
                      sampler=args.sampler, pruner=args.pruner, data=args.data, tracking_uri=args.tracking_uri,
                      experiment=args.experiment, seed=args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    if not args.json:
        _print_study(r, f"recipe {r.get('best_recipe')}")
    return r


def _print_study(r: dict, where: str) -> None:
    """A study's counts and best trial, then (from --report) its top trials and importances, then whether the
    best really beats the base config."""
    from ..experiments.search import describe_margin
    print(f"study {r['study']}: {r['trials']}; best {r.get('best_value', float('nan')):.4f} "
          f"{json.dumps(r.get('best_params', {}))}; {where}")
    for t in r.get("best_trials", []):
        print(f"  trial {t['trial']:>4}  {t['value']:.4f}  {json.dumps(t['params'])}")
    if r.get("importances"):
        print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importances"].items()))
    if describe_margin(r):
        print("  " + describe_margin(r))
