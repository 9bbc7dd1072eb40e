"""Training ensembles: members by seed, bootstrap sample, snapshot (cycles of one run) and boosting, then evaluated
as one."""

import json

import pytest
import torch

from .conftest import TINY
from .test_train import fails, run, same_weights


@pytest.mark.parametrize("kind", ["seeds", "bagging"])
def test_ensemble_command_trains_members_and_evaluates_them(capsys, cifar_dir, kind):
    r = run(capsys, "ensemble", "--data", str(cifar_dir), *TINY, "--members", "3", "--kind", kind, "--out", "runs/e")
    assert len(r["members"]) == 3 and r["vote"] == "soft"
    again = run(capsys, "evaluate", "--bundle", "runs/e")  # the folder stands for its members
    assert again["accuracy"] == r["accuracy"] and again["members"] == r["members"]
    from imagefit.bundle import load_bundle
    seeds = [load_bundle(f"runs/e/member-{i}").config.train.seed for i in (1, 2, 3)]
    boots = [load_bundle(f"runs/e/member-{i}").config.data.bootstrap for i in (1, 2, 3)]
    assert seeds == [0, 1, 2] and boots == ([1, 2, 3] if kind == "bagging" else [0, 0, 0])
    assert "--members must be 2 or more" in fails(capsys, "ensemble", "--data", str(cifar_dir), *TINY,
                                                  "--members", "1", "--out", "runs/e1")


def test_bootstrap_draws_with_replacement_and_a_seed(cifar_dir):
    from imagefit.config import DataConfig
    from imagefit.data.sources import load_splits
    plain = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0), 0).train
    a = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0, bootstrap=1), 0).train
    b = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0, bootstrap=2), 0).train
    assert len(a) == len(plain) and len(torch.unique(a.images.flatten(1), dim=0)) < len(plain)  # repeats
    assert not a.images.equal(b.images)


def test_snapshot_ensemble_is_one_cyclic_run_with_a_bundle_per_cycle(capsys, cifar_dir):
    r = run(capsys, "ensemble", "--data", str(cifar_dir), *TINY, "--members", "2", "--kind", "snapshot",
            "--out", "runs/snap")
    assert [m["bundle"].split("runs/snap/")[1] for m in r["members"]] == [
        "run/snapshots/cycle-1/bundle.safetensors", "run/snapshots/cycle-2/bundle.safetensors"]
    from imagefit.bundle import load_bundle
    assert load_bundle("runs/snap/run").config.schedule.cycles == 2
    # the last cycle's snapshot is the run's final model
    assert same_weights("runs/snap/run/bundle.safetensors", "runs/snap/run/snapshots/cycle-2/bundle.safetensors")


def test_boosting_weights_members_by_their_weighted_error(capsys, cifar_dir):
    r = run(capsys, "ensemble", "--data", str(cifar_dir), *TINY, "--members", "3", "--kind", "boosting",
            "--out", "runs/boost")
    manifest = json.load(open("runs/boost/ensemble.json"))
    assert manifest["kind"] == "boosting" and manifest["vote"] == "hard" and r["vote"] == "hard"
    assert len(manifest["weights"]) == len(manifest["members"]) >= 2
    assert all(w > 0 for w in manifest["weights"]) and [m["weight"] for m in r["members"]] == manifest["weights"]
    assert run(capsys, "evaluate", "--bundle", "runs/boost")["accuracy"] == r["accuracy"]
