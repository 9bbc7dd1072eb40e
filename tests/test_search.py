"""k-fold cross-validation and the Optuna search: real studies in SQLite, trials as MLflow runs nested under the
study's run, resume, two worker processes sharing one study, the best config as a recipe, the report's plots, and
the bad inputs (unknown field, unreachable storage, a study of another objective)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from .test_train import fails, run

TINY = ["--model", "resnet", "--blocks", "1", "--widths", "8", "--batch-size", "16"]


def test_kfold_split_is_a_stratified_partition():
    from imagefit.data.sources import kfold_split
    labels = torch.arange(10).repeat_interleave(13)
    held = [kfold_split(labels, 4, k, seed=3)[1] for k in range(4)]
    assert torch.cat(held).sort().values.equal(torch.arange(len(labels)))  # every image held out exactly once
    for h in held:
        counts = torch.bincount(labels[h], minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.min() >= 3
    keep, h0 = kfold_split(labels, 4, 0, seed=3)
    assert not set(keep.tolist()) & set(h0.tolist()) and len(keep) + len(h0) == len(labels)
    assert not kfold_split(labels, 4, 0, seed=4)[1].equal(h0)  # seeded


def test_train_folds_reports_mean_and_std(capsys, cifar_dir, tmp_path):
    r = run(capsys, "train", "--data", str(cifar_dir), *TINY, "--epochs", "1", "--folds", "3",
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--out", "runs/cv")
    assert r["folds"] == 3 and len(r["val_accuracy"]) == 3 and len(r["bundles"]) == 3
    assert all(os.path.exists(b) for b in r["bundles"])
    import statistics
    assert r["val_accuracy_std"] == pytest.approx(statistics.stdev(r["val_accuracy"]))
    assert r["val_accuracy_mean"] == pytest.approx(sum(r["val_accuracy"]) / 3)
    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    exp = client.get_experiment_by_name("imagefit").experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{r['mlflow_run_id']}'")
    assert len(children) == 3
    assert "--fold must be between 0 and 2" in fails(capsys, "train", "--data", str(cifar_dir), *TINY, "--folds",
                                                     "3", "--fold", "5", "--tracking-uri", "none")


def space(path, **extra) -> str:
    tree = {"fixed": {"model": {"model": "resnet", "blocks": [1], "widths": [8]},
                      "train": {"epochs": 2, "batch_size": 16}, "data": {"val_fraction": 0.2}},
            "params": {"optim.lr": {"low": 0.01, "high": 0.5, "log": True},
                       "optim.label_smoothing": {"low": 0.0, "high": 0.2}}, **extra}
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_search_tracks_resumes_and_writes_the_best_recipe(capsys, cifar_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ["search", "--space", space(tmp_path / "s.yaml"), "--data", str(cifar_dir), "--sampler", "random",
            "--tracking-uri", uri, "--out", "study"]
    r = run(capsys, *args, "--trials", "3")
    assert r["trials"]["complete"] + r["trials"]["pruned"] == 3 and r["trials"]["fail"] == 0
    best = yaml.safe_load(open(r["best_recipe"]))
    from imagefit.config import Config
    assert best.get("optim", {}).get("lr", Config().optim.lr) == r["best_params"]["optim.lr"]  # defaults: left out
    assert best["model"]["model"] == "resnet"
    again = run(capsys, *args, "--trials", "4")  # resumed: one more trial, not four
    assert sum(again["trials"][k] for k in ("complete", "pruned")) == 4
    import mlflow
    import optuna
    client = mlflow.tracking.MlflowClient(uri)
    study = optuna.load_study(study_name="imagefit", storage=f"sqlite:///{os.path.abspath('study/optuna.db')}")
    assert study.trials[0].params == {"optim.lr": Config().optim.lr, "optim.label_smoothing": 0.0}  # the base first
    assert study.trials[0].user_attrs["base"] and not study.trials[1].user_attrs.get("base")
    assert all(t.user_attrs["val_images"] > 0 for t in study.trials)
    parent = study.user_attrs["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name("imagefit").experiment_id
    assert len(client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")) == 4
    study_run = client.get_run(parent)  # ended, with the study's outcome (it stayed RUNNING with no metrics)
    assert study_run.info.status == "FINISHED" and study_run.data.metrics["best_value"] == again["best_value"]
    assert study_run.data.metrics["complete_trials"] == again["trials"]["complete"]
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent)}
    trained = run(capsys, "train", "--recipe", r["best_recipe"], "--data", str(cifar_dir), "--tracking-uri", "none",
                  "--out", "runs/best")
    assert "accuracy" in trained
    rep = run(capsys, "search", "--report", "--out", "study")
    assert {os.path.basename(p) for p in rep["plots"]} == {"history.png", "importances.png"}
    assert set(rep["importances"]) == {"optim.lr", "optim.label_smoothing"} and len(rep["best_trials"]) == rep["trials"]["complete"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_workers_share_one_study(cifar_dir, tmp_path, kind):
    if kind == "sqlite":
        storage = f"sqlite:///{tmp_path}/shared.db"
    else:  # a real server: .ci/run starts one with .ci/postgres and exports its URL
        storage = os.environ.get("IMAGEFIT_TEST_POSTGRES")
        if not storage:
            if os.environ.get("IMAGEFIT_REQUIRE_POSTGRES"):
                pytest.fail("IMAGEFIT_TEST_POSTGRES is not set; start a server with .ci/postgres start")
            pytest.skip("no PostgreSQL server (run .ci/postgres start and export IMAGEFIT_TEST_POSTGRES)")
    study = f"workers-{os.getpid()}-{int(time.time() * 1000)}"  # a fresh study on a shared server
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"  # a fresh store: the workers also race to create its tables
    argv = [sys.executable, "-m", "imagefit", "search", "--space", space(tmp_path / "s.yaml"), "--data",
            str(cifar_dir), "--trials", "4", "--storage", storage, "--study", study, "--tracking-uri", mlflow_uri,
            "--pruner", "none", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([*argv, "--out", f"w{i}", "--seed", str(i)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    import optuna
    trials = optuna.load_study(study_name=study, storage=storage).trials
    finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # MaxTrialsCallback stops each worker once the study holds 4; a worker may have started one more meanwhile
    assert 4 <= len(finished) <= 5 and len({t.number for t in trials}) == len(trials)
    runs = sorted(d for w in ("w0", "w1") for d in os.listdir(w) if d.startswith("trial-"))
    assert runs == sorted(f"trial-{t.number}" for t in finished)  # every trial ran once, in one worker
    import mlflow
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("imagefit").experiment_id
    parents = client.search_runs([exp], filter_string=f"attributes.run_name = 'study {study}'")
    assert len(parents) == 1  # one parent for the study, whichever worker made it
    nested = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(nested) == len(trials)


def test_bad_search_inputs(capsys, cifar_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"optim.lrr": {"low": 0.1, "high": 1}}}))
    assert "unknown field 'optim.lrr'; did you mean optim.lr" in fails(capsys, "search", "--space", str(bad),
                                                                       "--out", "s")
    err = fails(capsys, "search", "--space", space(tmp_path / "s.yaml"), "--storage",
                "postgresql://alice:secret@127.0.0.1:1/optuna", "--out", "s")
    assert "cannot open the Optuna storage postgresql://alice:***@127.0.0.1:1/optuna" in err and "secret" not in err
    args = ["search", "--data", str(cifar_dir), "--trials", "1", "--tracking-uri", "none", "--out", "s"]
    run(capsys, *args, "--space", space(tmp_path / "s.yaml"))
    other = space(tmp_path / "o.yaml", objective="val_loss")
    assert "was created for objective val_accuracy" in fails(capsys, *args, "--space", other)
    assert "seeds must be a whole number from 1 to 100 (got 0)" in fails(
        capsys, *args, "--space", space(tmp_path / "z.yaml", seeds=0))
    both = space(tmp_path / "b.yaml", seeds=2)
    tree = yaml.safe_load(open(both))
    tree["fixed"]["data"]["folds"] = 3
    open(both, "w").write(yaml.safe_dump(tree))
    assert "seeds and data.folds both repeat each trial; use one of them" in fails(capsys, *args, "--space", both)


def test_an_interrupted_trial_stops_the_search(monkeypatch, tmp_path, cifar_dir):
    import imagefit.training.train
    from imagefit.experiments.search import search
    calls = []

    def interrupted(cfg, opts):
        calls.append(opts.out)
        return {"stopped": "interrupted"}

    monkeypatch.setattr(imagefit.training.train, "train", interrupted)
    r = search(space(tmp_path / "s.yaml"), 5, tmp_path / "study", data=str(cifar_dir), tracking_uri="none",
               log=lambda m: None)
    assert len(calls) == 1 and r["trials"]["fail"] == 1  # one trial marked failed, no further trial started


def test_the_last_epoch_is_never_pruned(monkeypatch, tmp_path, cifar_dir):
    import optuna

    import imagefit.experiments.search

    class FromEpoch2(optuna.pruners.BasePruner):  # prunes every trial at epoch 2 on, if asked
        def prune(self, study, trial):
            return max(trial.intermediate_values, default=0) >= 2

    monkeypatch.setattr(imagefit.experiments.search, "_pruner", lambda kind: FromEpoch2())
    r = imagefit.experiments.search.search(space(tmp_path / "s.yaml"), 1, tmp_path / "study", data=str(cifar_dir),
                               tracking_uri="none", log=lambda m: None)  # the space trains 2 epochs
    assert r["trials"]["complete"] == 1 and r["trials"]["pruned"] == 0  # a finished trial is kept, not pruned


def seeded_space(path, seed: int, epochs: int) -> str:
    tree = yaml.safe_load(open(space(path, seeds=2)))
    tree["fixed"]["train"].update(seed=seed, epochs=epochs)
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_a_trial_of_several_seeds_scores_their_mean(capsys, monkeypatch, cifar_dir, tmp_path):
    """`seeds: 2`: each trial trains with seeds 5 and 6 (each its own validation split), scores the mean, and
    tracks both runs under the study; the pruner judges only the first seed's second half."""
    import mlflow
    import optuna

    import imagefit.experiments.search
    uri = f"sqlite:///{tmp_path}/m.db"
    r = run(capsys, "search", "--space", seeded_space(tmp_path / "s.yaml", 5, 2), "--data", str(cifar_dir),
            "--trials", "1", "--tracking-uri", uri, "--out", "study")
    study = optuna.load_study(study_name="imagefit", storage=f"sqlite:///{os.path.abspath('study/optuna.db')}")
    trial = study.trials[0]
    scores = [json.load(open(f"study/trial-0/seed-{s}/metrics.json"))["val_accuracy"] for s in (5, 6)]
    assert trial.user_attrs["seed_scores"] == scores and r["best_value"] == sum(scores) / 2
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]  # epochs 1-2 of seed 5, then of seed 6
    assert [yaml.safe_load(open(f"study/trial-0/seed-{s}/config.yaml"))["train"]["seed"] for s in (5, 6)] == [5, 6]
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("imagefit").experiment_id
    parent = study.user_attrs["mlflow_parent_run_id"]
    nested = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(n.info.run_name for n in nested) == ["trial-0 seed 5", "trial-0 seed 6"]
    assert run(capsys, "search", "--report", "--out", "study")["best_trials"][0]["seed_scores"] == scores

    class Always(optuna.pruners.BasePruner):  # prunes whenever it is asked
        def prune(self, study, trial):
            return True

    class FromStep4(optuna.pruners.BasePruner):  # prunes from the second seed's first epoch on, if asked
        def prune(self, study, trial):
            return max(trial.intermediate_values, default=0) >= 4

    def steps(pruner, epochs: int, where: str) -> tuple[dict, list]:
        monkeypatch.setattr(imagefit.experiments.search, "_pruner", lambda kind: pruner)
        r = imagefit.experiments.search.search(seeded_space(tmp_path / f"{where}.yaml", 0, epochs), 1, tmp_path / where,
                                   data=str(cifar_dir), tracking_uri="none", log=lambda m: None)
        t = optuna.load_study(study_name="imagefit", storage=f"sqlite:///{tmp_path}/{where}/optuna.db").trials[0]
        return r["trials"], sorted(t.intermediate_values)

    # 4 epochs: only the first seed's epoch 3 is judged (the first half ranks by noise; epoch 4 is its last)
    assert steps(Always(), 4, "always") == ({"complete": 0, "pruned": 1, "fail": 0, "running": 0}, [1, 2, 3])
    # later seeds are reported but never judged: the trial completes
    assert steps(FromStep4(), 3, "later") == ({"complete": 1, "pruned": 0, "fail": 0, "running": 0},
                                              [1, 2, 3, 4, 5, 6])


def test_the_best_trial_is_weighed_against_the_base_config():
    """A best trial 1 point over the base on 4,500 validation images is within noise (standard error of the
    difference 0.84 points); the same margin on 50,000 images is not (0.25)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from imagefit.experiments.search import _margin_over_base, describe_margin

    def study(n):
        s = optuna.create_study(direction="maximize")
        d = {"lr": FloatDistribution(0.01, 1.0)}
        s.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions=d, value=0.80,
                                              user_attrs={"base": True, "val_images": n}))
        s.add_trial(optuna.trial.create_trial(params={"lr": 0.3}, distributions=d, value=0.81,
                                              user_attrs={"val_images": n}))
        return s

    for n, noise in [(4500, True), (50000, False)]:
        s = study(n)
        r = _margin_over_base(s, s.trials, s.best_trial)
        assert r["base_trial"] == 0 and abs(r["margin_over_base"] - 0.01) < 1e-9 and r["within_noise"] is noise
        assert ("within noise" in describe_margin(r)) is noise
    s = study(4500)
    assert _margin_over_base(s, s.trials[:1], s.trials[0]) == {}  # the base is the best: nothing to weigh


@pytest.mark.parametrize("suggested", [False, True])
def test_a_dead_workers_trial_is_queued_again_with_its_values(suggested):
    """Killed after it claimed the base config's queued trial but before it suggested a value (its params still
    empty), or after: either way the retry carries the base config's values, not a random draw (CI failed once on
    the first timing)."""
    import optuna

    from imagefit.experiments.search import _worker, retry_dead_trials
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"optim.lr": 0.1})
    trial = study.ask()
    trial.set_user_attr("worker", f"{_worker().split(':')[0]}:{gone.pid}")
    if suggested:
        trial.suggest_float("optim.lr", 0.01, 0.5, log=True)
    assert retry_dead_trials(study, log=lambda line: None) == [0]
    retry = study.ask()
    assert retry.user_attrs["retry_of"] == 0
    assert retry.suggest_float("optim.lr", 0.01, 0.5, log=True) == 0.1
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
