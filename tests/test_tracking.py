"""Tracking everywhere: find-lr, evaluate, generate and ensemble each leave MLflow runs with their parameters,
metrics, artifacts and the code's git commit; ensemble members are nested under the ensemble's run."""

from __future__ import annotations

import mlflow

from .test_train import run

TINY = ["--model", "resnet", "--blocks", "1", "--widths", "8", "--batch-size", "16"]


def test_every_command_is_tracked(capsys, cifar_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    data = ["--data", str(cifar_dir), "--tracking-uri", uri]
    run(capsys, "find-lr", *data, *TINY, "--steps", "20", "--out", "lr")
    ens = run(capsys, "ensemble", *data, *TINY, "--epochs", "1", "--members", "2", "--out", "ens")
    run(capsys, "evaluate", "--bundle", "ens/member-1", *data, "--tta", "flip")
    run(capsys, "generate", "train", *data, "--preset", "tiny", "--classes", "cat,dog", "--steps", "4",
        "--batch-size", "8", "--checkpoint-every", "2", "--out", "gen")
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imagefit").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"find-lr lr", "ensemble ens (seeds)", "member-1", "member-2", "evaluate member-1",
            "generate train gen"} <= set(by_name)
    lr = by_name["find-lr lr"]
    assert "suggestion" in lr.data.metrics and lr.data.params["optim.optimizer"] == "sgd"
    assert "lr_finder.png" in {a.path for a in client.list_artifacts(lr.info.run_id)}
    assert len(client.get_metric_history(lr.info.run_id, "loss")) > 5
    parent = by_name["ensemble ens (seeds)"].info.run_id
    assert {by_name[m].data.tags.get("mlflow.parentRunId") for m in ("member-1", "member-2")} == {parent}
    assert abs(by_name["ensemble ens (seeds)"].data.metrics["accuracy"] - ens["accuracy"]) < 1e-6
    assert "accuracy_without_tta" in by_name["evaluate member-1"].data.metrics
    gen = by_name["generate train gen"]
    assert [m.step for m in client.get_metric_history(gen.info.run_id, "loss")] == [2, 4, 4]
    assert all(r.data.tags.get("mlflow.source.git.commit") for r in (lr, gen)) or not _in_git()


def _in_git() -> bool:
    from imagefit.tracking import git_commit
    return git_commit() is not None
