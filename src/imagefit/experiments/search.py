"""Hyperparameter search: an Optuna study over any config field, scored on the validation split.

A space file (YAML) names the base recipe, fixed overrides, the objective and the parameters:

    recipe: fast                      # optional; the defaults otherwise
    fixed: {train: {epochs: 4}}       # optional overrides for every trial
    objective: val_accuracy           # or val_loss (minimised)
    params:
      optim.lr: {low: 0.01, high: 1.0, log: true}
      optim.label_smoothing: {low: 0.0, high: 0.3}
      train.batch_size: {low: 128, high: 512, step: 128}      # ints when the field is an int
      model.model: {choices: [fastnet-small, resnet20]}
      optim.weight_decay: {low: 1e-4, high: 1e-2, log: true, grid: [1e-4, 1e-3, 1e-2]}   # values for --sampler grid
    seeds: 3                          # optional: score each trial as the mean of 3 runs (seeds S, S+1, S+2)

The study lives in an Optuna storage (a local SQLite file by default; `--storage postgresql://…` for workers on many
machines) and is resumed by running the same command again: `--trials N` is the total the study should reach,
counted across every worker (Optuna's MaxTrialsCallback), so two workers never run N each. Each trial is an ordinary
training run in OUT/trial-K (trial 0 is the base config itself when its values lie in the space), its MLflow run
nested under the study's parent run, its per-epoch validation accuracy reported so the pruner (median or Hyperband)
can stop it early. With `--folds K` in the fixed part, a trial's score is the mean validation accuracy over K folds
(no pruning then). With `seeds: N`, each trial is trained N times, with the base config's seed and the N-1 after it;
the seed also draws the validation split, so each run is scored on its own held-out share, and the trial's score is
the mean (a repeated hold-out). One run's validation accuracy on a few thousand images moves by about half a point
from seed to seed, as much as the rates being searched change it, so on a plateau a one-seed search picks noise; N
seeds cut that noise by sqrt(N) (benchmarks/RESULTS.md, issue 8). The runs are trial-K/seed-S. The pruner judges the
second half of the first seed's epochs, before the last (see `objective`); every seed's epochs are reported, as
steps of their own. The best trial's config is written as a recipe (OUT/best.yaml) that `imagefit train --recipe
OUT/best.yaml` takes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import yaml

from ..config import SECTIONS, Config, _closest, field_types, load_recipe, read_yaml
from ..errors import ImagefitError
from ..files import atomic_write_text
from ..tracking import _mask, start_run, tracking_off

OBJECTIVES = {"val_accuracy": "maximize", "val_loss": "minimize"}


def load_space(path: str | Path) -> dict:
    path = Path(path)
    space = read_yaml(path, "search space", "write a YAML file with 'params:' (see 'imagefit search --help')")
    unknown = set(space) - {"recipe", "fixed", "objective", "params", "seeds"}
    if unknown:
        raise ImagefitError(f"search space {path}: unknown key(s) {', '.join(sorted(unknown))}; use recipe, fixed, "
                            f"objective, params, seeds")
    seeds = space.setdefault("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise ImagefitError(f"search space {path}: seeds must be a whole number from 1 to 100 (got {seeds!r})")
    space.setdefault("objective", "val_accuracy")
    if space["objective"] not in OBJECTIVES:
        raise ImagefitError(f"search space {path}: objective must be {' or '.join(OBJECTIVES)} "
                            f"(got {space['objective']!r})")
    params = space.get("params") or {}
    if not params:
        raise ImagefitError(f"search space {path} has no params to search; add e.g. 'params: {{optim.lr: "
                            f"{{low: 0.01, high: 1, log: true}}}}'")
    every = {f"{s}.{f.name}": (s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for name, spec in params.items():
        if name not in every:
            raise ImagefitError(f"search space {path}: unknown field '{name}'{_closest(name, every)}")
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ImagefitError(f"search space {path}: '{name}' needs 'choices: [...]' or 'low:' and 'high:'")
        if "low" in spec and not spec["low"] < spec["high"]:
            raise ImagefitError(f"search space {path}: '{name}' has low {spec['low']} ≥ high {spec['high']}")
    base = Config()
    if space.get("recipe"):
        base.update(load_recipe(space["recipe"]), where=f"recipe {space['recipe']}")
    base.update(space.get("fixed") or {}, where=f"{path}: fixed")
    space["base"] = base.validate()
    if seeds > 1 and base.data.folds:
        raise ImagefitError(f"search space {path}: seeds and data.folds both repeat each trial; use one of them")
    return space


def _suggest(trial, name: str, spec: dict, cfg: Config):
    section, field = name.split(".", 1)
    kind = field_types(getattr(cfg, section))[field]
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    if kind in (int, int | None, int | str):
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                 log=bool(spec.get("log", False)))
    step = spec.get("step")
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                               step=float(step) if step else None)


def base_values(space: dict) -> dict:
    """The base config's value of every searched field, when all of them lie inside their ranges (else {})."""
    values = {}
    for name, spec in space["params"].items():
        section, field = name.split(".", 1)
        value = getattr(getattr(space["base"], section), field)
        inside = value in spec["choices"] if "choices" in spec else \
            isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]
        if not inside:
            return {}
        values[name] = value
    return values


def trial_config(space: dict, values: dict) -> Config:
    cfg = copy.deepcopy(space["base"])
    tree: dict = {}
    for name, value in values.items():
        section, field = name.split(".", 1)
        tree.setdefault(section, {})[field] = value
    cfg.update(tree, where="trial")
    return cfg.validate()


def _sampler(kind: str, space: dict, seed: int):
    import optuna
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        grid = {}
        for name, spec in space["params"].items():
            values = spec.get("choices") or spec.get("grid")
            if not values:
                raise ImagefitError(f"--sampler grid needs 'grid: [...]' (or choices) for '{name}'")
            grid[name] = list(values)
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise ImagefitError(f"--sampler must be tpe, random or grid (got {kind!r})")


def _pruner(kind: str):
    import optuna
    if kind == "median":
        # which epochs it is asked about is decided in `search` (the second half of the first seed's)
        return optuna.pruners.MedianPruner(n_startup_trials=3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ImagefitError(f"--pruner must be median, hyperband or none (got {kind!r})")


def open_study(storage: str, name: str, space: dict | None = None, sampler: str = "tpe", pruner: str = "median",
               seed: int = 0, create: bool = True):
    import optuna
    import sqlalchemy.exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    def connect():
        # The heartbeat marks a trial failed when its worker (on any machine) stops beating for the grace period, and
        # queues its parameters again; retry_dead_trials does it at once for this machine's dead workers.
        import warnings

        from optuna.storages import RetryHeartbeatStaleTrialCallback
        with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
            beat = dict(heartbeat_interval=30, grace_period=90,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(3))
            if storage.startswith(("postgresql", "mysql")):
                return optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"connect_timeout": 10}},
                                                  **beat)
            return optuna.storages.RDBStorage(storage, **beat) if storage.startswith("sqlite") else storage

    try:
        if not create:
            return optuna.load_study(study_name=name, storage=connect())
        direction = OBJECTIVES[space["objective"]]
        for attempt in range(5):
            try:  # connecting creates the schema on first use
                study = optuna.create_study(study_name=name, storage=connect(), direction=direction,
                                            load_if_exists=True, sampler=_sampler(sampler, space, seed),
                                            pruner=_pruner(pruner))
                break
            except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
                # workers starting together race to create the schema ("already exists", a duplicate version row)
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not racing or attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError, ValueError, KeyError, RuntimeError) as e:
        if isinstance(e, KeyError):
            raise ImagefitError(f"no study '{name}' in {_mask(storage)}; run 'imagefit search' first") from None
        raise ImagefitError(f"cannot open the Optuna storage {_mask(storage)} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120]}); check --storage") from None
    if create:
        mine = {"objective": space["objective"], "params": sorted(space["params"])}
        theirs = study.user_attrs.get("imagefit")
        if theirs is None:
            study.set_user_attr("imagefit", mine)
        elif theirs != mine:
            raise ImagefitError(f"study '{name}' in {_mask(storage)} was created for objective {theirs['objective']} "
                                f"over {', '.join(theirs['params'])}; this space has {mine['objective']} over "
                                f"{', '.join(mine['params'])}: use another --study")
    return study


def _worker() -> str:
    import socket
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True


def retry_dead_trials(study, log=print) -> list[int]:
    """Trials left RUNNING by a worker of this machine that is gone (killed mid-trial) are marked failed and their
    parameters queued again, so the study neither waits on them forever nor loses them (the base config's trial
    included). Workers on other machines are covered by the storage's heartbeat (`open_study`)."""
    from optuna.trial import TrialState
    host = _worker().split(":")[0]
    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        # A trial killed after it was claimed but before it suggested its values has no params yet: what it was
        # queued with (the base config, or an earlier retry) is still in its fixed_params, so that is queued again.
        values = {**t.system_attrs.get("fixed_params", {}), **t.params}
        study.enqueue_trial(values, user_attrs={"retry_of": t.number})
        retried.append(t.number)
        log(f"trial {t.number} was left running by a process that is gone ({worker}); its parameters are queued "
            f"again")
    return retried


def search(space_path: str, trials: int, out: str | Path, *, storage: str | None = None, study_name: str = "imagefit",
           sampler: str = "tpe", pruner: str = "median", data: str | None = None, tracking_uri: str | None = None,
           experiment: str = "imagefit", seed: int = 0, log=print) -> dict:
    import optuna

    from ..training.train import RunOptions, train
    if trials < 1:
        raise ImagefitError(f"--trials must be 1 or more (got {trials})")
    space = load_space(space_path)
    if data:
        space["base"].data.data = data
    if space["base"].data.val_fraction <= 0 and not space["base"].data.folds:
        raise ImagefitError("a search scores trials on validation data: set data.val_fraction > 0 (or data.folds) "
                            "in the space's fixed part")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    study = open_study(storage, study_name, space, sampler, pruner, seed)
    if sampler != "grid" and not study.get_trials(deepcopy=False):
        baseline = base_values(space)
        if baseline:  # the space's own starting point is trial 0: the best found is never worse than it on val
            study.enqueue_trial(baseline, skip_if_exists=True)
    parent_params = {"space": space_path, "sampler": sampler, "pruner": pruner, "storage": _mask(storage)}
    objective_key = space["objective"]

    retry_dead_trials(study, log)

    def objective(trial):
        trial.set_user_attr("worker", _worker())
        parent_id = None if tracking_off(tracking_uri) else study_parent_run(
            study, trial, lambda: start_run(tracking_uri, experiment, f"study {study_name}", parent_params).run_id)
        values = {name: _suggest(trial, name, spec, space["base"]) for name, spec in space["params"].items()}
        cfg = trial_config(space, values)
        folder = out / f"trial-{trial.number}"
        if values == base_values(space):
            trial.set_user_attr("base", True)

        seeds = space["seeds"]
        epochs = cfg.train.epochs

        def report(repeat: int, trainer, row):  # train's on_epoch_end, for the repeat-th seed
            value = row.get(objective_key)
            if value is None:
                return
            if row["epoch"] == 1 and repeat == 0:
                trial.set_user_attr("val_images", len(trainer.data.val))
            trial.report(value, repeat * epochs + row["epoch"])  # step: this epoch of this seed, in every trial
            # Judged: the first seed's epochs in the second half of its schedule, before its last. Earlier
            # epochs rank trials by noise: in the 4-epoch fast recipes one config read 0.42 to 0.66 at epoch 2
            # over three seeds, and 0.835 to 0.843 at the end (benchmarks/RESULTS.md, issue 8). The last epoch
            # is never judged (nothing is left to save), nor are later seeds: on a plateau each judged step
            # prunes about half the trials by noise, so judging every seed would leave almost none; a trial
            # that survives its first seed is trained on all of them.
            judged = repeat == 0 and epochs // 2 < row["epoch"] < epochs
            if judged and trial.should_prune():
                raise optuna.TrialPruned(f"seed {trainer.cfg.train.seed} epoch {row['epoch']}: {objective_key} "
                                         f"{value:.4f}")

        opts = RunOptions(out=folder, tracking_uri=tracking_uri, experiment=experiment, progress="lines",
                          parent_run_id=parent_id, log=lambda m: None)
        if cfg.data.folds:
            from .crossval import train_folds
            r = train_folds(cfg, opts)
            score = r["val_accuracy_mean"]
            if objective_key != "val_accuracy":
                raise ImagefitError("with data.folds the objective is val_accuracy (the folds' mean)")
        else:
            scores = []
            for repeat in range(seeds):
                run_cfg, run_opts = cfg, replace(opts, on_epoch_end=partial(report, repeat))
                if seeds > 1:
                    run_cfg = copy.deepcopy(cfg)
                    run_cfg.train.seed = cfg.train.seed + repeat
                    run_cfg.validate()
                    run_opts = replace(run_opts, out=folder / f"seed-{run_cfg.train.seed}",
                                       run_name=f"trial-{trial.number} seed {run_cfg.train.seed}")
                r = train(run_cfg, run_opts)
                if r.get("stopped") == "interrupted":  # Ctrl-C stops the search, not just this trial
                    study.stop()
                    raise ImagefitError(f"trial {trial.number} was interrupted; run the same command again to go on")
                scores.append(r["val_accuracy"] if objective_key == "val_accuracy" else
                              min(h["val_loss"] for h in
                                  json.loads((run_opts.out / "metrics.json").read_text())["history"]))
            score = sum(scores) / seeds
            if seeds > 1:
                trial.set_user_attr("seed_scores", scores)
        trial.set_user_attr("run_dir", str(folder))
        log(f"trial {trial.number}: {objective_key} {score:.4f}  {json.dumps(values)}")
        return score

    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=done)) < trials:
        study.optimize(objective, n_trials=trials, callbacks=[MaxTrialsCallback(trials, states=done)],
                       catch=(ImagefitError,))
    result = summarize(study, out, space)
    parent = study.user_attrs.get(PARENT_KEY)
    # The study's run: its outcome at this many finished trials, then ended (it stayed RUNNING with no metrics)
    if parent and not tracking_off(tracking_uri):
        tracker = start_run(tracking_uri, experiment, f"study {study_name}", {}, run_id=parent)
        tracker.metrics({k: v for k, v in (("best_value", result.get("best_value")),
                                           ("best_trial", result.get("best_trial")),
                                           *((f"{state}_trials", n) for state, n in result["trials"].items()))
                         if v is not None}, step=result["trials"]["complete"] + result["trials"]["pruned"])
        if result.get("best_recipe"):
            tracker.artifact(Path(result["best_recipe"]))
        tracker.end("FINISHED")
    return result


PARENT_KEY = "mlflow_parent_run_id"


def study_parent_run(study, trial, create, wait_s: float = 60.0) -> str:
    """The study's parent MLflow run id, the same for every worker. Reading the id from the study and creating a
    run when it is missing would race: two workers starting together both find none and both create one. The
    storage hands out each trial number once, so the worker that draws trial 0 creates the run; the others wait
    (while trial 0 is running) for its id. A study without one whose trial 0 has finished (resumed with tracking
    newly on, or trial 0's worker died first) gets one from whichever worker asks next."""
    known = study.user_attrs.get(PARENT_KEY)
    if known:
        return known
    if trial.number != 0:
        from optuna.trial import TrialState
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            first = study.get_trials(deepcopy=False)[0]
            if first.state != TrialState.RUNNING:
                break
            time.sleep(0.2)
            known = study.user_attrs.get(PARENT_KEY)
            if known:
                return known
    run_id = create()
    study.set_user_attr(PARENT_KEY, run_id)
    return run_id


def summarize(study, out: Path, space: dict | None = None) -> dict:
    from optuna.trial import TrialState
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    result = {"study": study.study_name, "trials": counts, "direction": study.direction.name.lower()}
    if not complete:
        return result
    best = study.best_trial
    result.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                  best_run_dir=best.user_attrs.get("run_dir"))
    result.update(_margin_over_base(study, complete, best))
    if space is not None:
        recipe = _as_recipe(space, best.params)
        atomic_write_text(out / "best.yaml", f"# best of study '{study.study_name}': trial {best.number}, "
                          f"{space['objective']} {best.value:.4f}\n" + yaml.safe_dump(recipe, sort_keys=False))
        result["best_recipe"] = str(out / "best.yaml")
    return result


def _margin_over_base(study, complete: list, best) -> dict:
    """How far the best trial's validation accuracy is above the base config's (trial 0), in standard errors of
    the difference of two accuracies on the same n images (binomial, taken as independent: an upper bound for the
    paired difference). Trials whose configs differ little score within noise of each other on a few thousand
    images; a margin under two standard errors is no evidence that the best beats the base."""
    base = next((t for t in complete if t.user_attrs.get("base")), None)
    # with seeds: N, each trial's score is a mean over N runs, each on its own split of val_images
    n = best.user_attrs.get("val_images", 0) * len(best.user_attrs.get("seed_scores", [None]))
    if base is None or base.number == best.number or not n or study.direction.name != "MAXIMIZE":
        return {}
    p = (best.value + base.value) / 2
    se = (2 * p * (1 - p) / n) ** 0.5
    margin = best.value - base.value
    return {"base_trial": base.number, "base_value": base.value, "margin_over_base": margin, "margin_se": se,
            "within_noise": margin < 2 * se}


def describe_margin(r: dict) -> str:
    """One line on whether the best trial really beats the base config (empty when unknown)."""
    if "margin_over_base" not in r:
        return ""
    verdict = ("within noise: no evidence it beats the base config; retrain both on several seeds before "
               "switching" if r["within_noise"] else "more than two standard errors")
    return (f"best is {100 * r['margin_over_base']:+.2f} points over the base config (trial {r['base_trial']}) on "
            f"validation, standard error {100 * r['margin_se']:.2f}: {verdict}")


def _as_recipe(space: dict, params: dict) -> dict:
    """The differences from the defaults of the best trial's config, as a recipe tree."""
    cfg, default = trial_config(space, params).to_dict(), Config().to_dict()
    tree = {s: {k: v for k, v in fields.items() if v != default[s][k] and k not in ("data", "fold")}
            for s, fields in cfg.items()}
    return {s: fields for s, fields in tree.items() if fields}


def report(storage: str, study_name: str, out: str | Path, top: int = 5) -> dict:
    """Best trials, parameter importances and the optimisation history, as PNGs and a JSON summary."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from ..files import atomic_path
    out = Path(out)
    study = open_study(storage, study_name, create=False)
    result = summarize(study, out)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    result["best_trials"] = [{"trial": t.number, "value": t.value, "params": t.params,
                              **({"seed_scores": t.user_attrs["seed_scores"]} if "seed_scores" in t.user_attrs else {})}
                             for t in sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]]
    figures = {"history.png": ovm.plot_optimization_history}
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        figures["importances.png"] = ovm.plot_param_importances
        result["importances"] = optuna.importance.get_param_importances(study)
    import warnings
    for name, plot in figures.items():
        with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
            ax = plot(study)
        with atomic_path(folder / name) as tmp:
            ax.figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        result.setdefault("plots", []).append(str(folder / name))
    result["importances"] = {k: round(v, 4) for k, v in result.get("importances", {}).items()}
    atomic_write_text(folder / "report.json", json.dumps(result, indent=1, default=str))
    return result

