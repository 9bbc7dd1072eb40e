"""k-fold cross-validation: one training run per fold of a stratified, seeded partition of the training split,
each fold held out for validation in turn; the test split is never part of any fold.

Each fold is an ordinary run (its bundle in OUT/fold-K, its MLflow run nested under one parent run for the
cross-validation) and the summary is the mean ± standard deviation of the folds' validation accuracy, the figure
a search can optimise on a small dataset.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import replace
from pathlib import Path

from ..config import Config
from ..errors import ImagefitError
from ..files import atomic_write_text
from ..tracking import start_run
from ..training.train import RunOptions, train


def train_folds(cfg: Config, opts: RunOptions) -> dict:
    k = cfg.data.folds
    if k < 2:
        raise ImagefitError(f"--folds must be 2 or more (got {k})")
    if not 0 <= cfg.data.fold < k:
        raise ImagefitError(f"--fold must be between 0 and {k - 1} with --folds {k} (got {cfg.data.fold}); --folds "
                            f"trains every fold, --fold is for one run of one fold")
    out = Path(opts.out)
    # folds of a search trial nest under the trial's parent; otherwise under a parent run of their own
    parent = None if opts.parent_run_id else start_run(opts.tracking_uri, opts.experiment,
                                                       f"{out.name} ({k} folds)", cfg.to_dict())
    results = []
    try:
        for fold in range(k):
            fold_cfg = copy.deepcopy(cfg)
            fold_cfg.data.fold = fold
            r = train(fold_cfg.validate(), replace(opts, out=out / f"fold-{fold}",
                                                   parent_run_id=opts.parent_run_id or parent.run_id))
            if r.get("stopped") == "interrupted":
                raise ImagefitError(f"fold {fold} was interrupted; run --folds again with a new --out (folds "
                                    f"restart from their first epoch)")
            results.append(r)
    except BaseException:
        if parent:
            parent.end("FAILED")
        raise
    val = [r["val_accuracy"] for r in results]
    summary = {"folds": k, "val_accuracy_mean": statistics.mean(val), "val_accuracy_std": statistics.stdev(val),
               "val_accuracy": val, "bundles": [r["bundle"] for r in results], "run_dir": str(out)}
    if all("accuracy" in r for r in results):
        test = [r["accuracy"] for r in results]
        summary.update(test_accuracy_mean=statistics.mean(test), test_accuracy_std=statistics.stdev(test))
    atomic_write_text(out / "folds.json", json.dumps(summary, indent=1))
    if parent:
        parent.metrics({k_: v for k_, v in summary.items() if isinstance(v, float)})
        parent.artifact(out / "folds.json")
        parent.end("FINISHED")
        summary["mlflow_run_id"] = parent.run_id
    return summary
