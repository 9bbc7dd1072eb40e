"""Run tracking: every run is an MLflow run, in a local SQLite store unless told otherwise.

The default store is `mlflow.db` (SQLite) with artifacts under `mlartifacts/`, both in the working folder, so
`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows every run with no server to start. `--tracking-uri`
points elsewhere (a team's server); `--tracking-uri none` turns tracking off. MLflow is imported only when used:
it takes seconds to import.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

from .errors import ImagefitError


def default_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def git_commit() -> str | None:
    """The commit of the code that runs, when imagefit is used from a git checkout."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """No tracking: the interface, and what `--tracking-uri none` gets."""
    run_id: str | None = None

    def start(self, name: str, params: dict, run_id: str | None = None, parent: str | None = None) -> Tracker:
        return self

    def metrics(self, values: dict, step: int = 0) -> None: ...
    def artifact(self, path: Path, folder: str | None = None) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MLflowTracker(Tracker):
    """One MLflow run, reached through MLflow's client API only: no process-wide "active run", so the runs one
    process holds open at once (a study's parent and its trials, an ensemble and its members, a report attached to
    a finished run) never get mixed up, and every caller tracks the same way."""

    def __init__(self, uri: str, experiment: str):
        if uri.startswith(("http://", "https://")):
            # MLflow retries a server that does not answer 7 times with backoff, 120 s each: over 200 s of silence
            # for a mistyped --tracking-uri. Say so within seconds instead (a user's own settings win).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        mlflow = _quiet_mlflow()
        from mlflow.tracking import MlflowClient
        self.mlflow = mlflow
        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        for attempt in range(4):
            try:
                self.experiment_id = self._experiment(experiment)
                break
            except Exception as e:
                # processes starting together (search workers, torchrun ranks) race to create the store's tables
                # and the experiment; the loser finds them made on the next try
                racing = any(sign in f"{type(e).__name__}: {e}" for sign in (
                    "already exists", "UNIQUE constraint", "IntegrityError", "migration", "database is locked"))
                if racing and attempt < 3:
                    time.sleep(0.5 + attempt)
                    continue
                raise ImagefitError(f"cannot open the MLflow store at {_mask(uri)} ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:120]}); fix --tracking-uri or pass --tracking-uri "
                                    f"none") from None

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside a local database, not under cwd's mlruns
            artifacts = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def start(self, name: str, params: dict, run_id: str | None = None, parent: str | None = None) -> Tracker:
        """A new run named `name` with `params` (nested under `parent` in `mlflow ui`), or with `run_id` the
        existing run continued."""
        if run_id:
            self.run_id, self.logged = run_id, {}  # a continued run: steps it already has are not logged again
            self.client.update_run(run_id, status="RUNNING")
            return self
        from mlflow.entities import Param
        tags = {"mlflow.parentRunId": parent} if parent else {}  # shown nested under it in `mlflow ui`
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in _flatten(params).items()])
        return self

    def metrics(self, values: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        clean = [Metric(k, float(v), now, step) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and not self._logged(k, step)]
        self.client.log_batch(self.run_id, metrics=clean)

    def _logged(self, key: str, step: int) -> bool:
        """Whether a continued run has this metric at this step already: an epoch redone after a kill between its
        metrics and its checkpoint logs the same (bitwise) figures, which are kept once."""
        if getattr(self, "logged", None) is None:
            return False
        if key not in self.logged:
            self.logged[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return step in self.logged[key]

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _quiet_mlflow():
    """MLflow, imported with its INFO lines ("Creating initial MLflow database tables...") off, since they interleave
    with a run's progress: warnings and errors only, unless the user set MLflow's level (MLFLOW_LOGGING_LEVEL, read
    at its import; the logger is set too, for a process that imported MLflow before)."""
    quiet = "MLFLOW_LOGGING_LEVEL" not in os.environ
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow
    if quiet:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    return mlflow


def run_address(uri: str | None, run_id: str | None) -> tuple[str, str] | None:
    """(web address, how to open it) of a tracked run, or None when it was not tracked. A local store has no web
    address of its own: the address is where `mlflow ui` serves it, and the hint says how; a store that moved or
    does not answer gives no address."""
    if not run_id or tracking_off(uri) or uri is None:
        return None
    try:
        experiment = _quiet_mlflow().MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:
        return "", f"MLflow run {run_id} in {_mask(uri)} (not reachable now)"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}", f"MLflow run {run_id} at {_mask(uri)}"
    return (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}",
            f"MLflow run {run_id}: open after 'mlflow ui --backend-store-uri {uri}'")


def _mask(uri: str) -> str:
    """A URI with its password hidden, for error messages."""
    import re
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", uri)


def tracking_off(uri: str | None) -> bool:
    return uri is not None and uri.lower() in ("none", "off", "")


def make_tracker(uri: str | None, experiment: str = "imagefit") -> Tracker:
    if tracking_off(uri):
        return Tracker()
    return MLflowTracker(uri or default_uri(), experiment)


def check_store(uri: str | None, experiment: str = "imagefit") -> None:
    """Open a remote store now, so that a wrong --tracking-uri is refused in seconds, before the command's work (a
    local SQLite store cannot hang, and is only created when a run is recorded)."""
    if tracking_off(uri) or uri is None or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return
    make_tracker(uri, experiment)


def start_run(uri: str | None, experiment: str, name: str, params: dict, *, run_id: str | None = None,
              parent: str | None = None) -> Tracker:
    """A tracked run, started (or with `run_id`, continued): every run imagefit tracks begins here or in
    `record`. A run that groups others (a study, a cross-validation, an ensemble) is an ordinary run whose id its
    children name as `parent`."""
    return make_tracker(uri, experiment).start(name, params, run_id=run_id, parent=parent)


def record(uri: str | None, experiment: str, name: str, params: dict, metrics: dict, artifacts=(),
           steps: list[tuple[int, dict]] = (), parent: str | None = None) -> str | None:
    """One finished run for a one-shot command (find-lr, evaluate, generate): params, final metrics, per-step
    metrics, artifacts. Returns its id (None when tracking is off)."""
    tracker = start_run(uri, experiment, name, params, parent=parent)
    for step, values in steps:
        tracker.metrics(values, step=step)
    tracker.metrics(metrics, step=steps[-1][0] if steps else 0)  # the final figures at the last step
    for path in artifacts:
        if Path(path).exists():
            tracker.artifact(Path(path))
    tracker.end("FINISHED")
    return tracker.run_id
