"""Ensembles of bundles (soft and hard voting, the independent-error formula) and TTA side by side."""

import json
import math

import pytest
import torch

from imagefit.preprocessing import tta_views
from imagefit.voting import combine, disagreement, independent_error

from .conftest import TINY
from .test_train import fails, run, same_weights


def test_independent_error_is_the_binomial_majority():
    e = 0.2
    assert independent_error(e, 3) == pytest.approx(1 - (1 - e) ** 3 - math.comb(3, 2) * (1 - e) ** 2 * e)
    assert independent_error(e, 1) == pytest.approx(e) and independent_error(e, 5) < independent_error(e, 3)


def test_hard_voting_counts_votes_and_breaks_ties_by_probability():
    a = torch.tensor([[0.6, 0.4, 0.0], [0.9, 0.1, 0.0]])
    b = torch.tensor([[0.1, 0.9, 0.0], [0.6, 0.4, 0.0]])
    c = torch.tensor([[0.0, 0.45, 0.55], [0.0, 0.3, 0.7]])
    hard = combine([a, b, c], "hard").argmax(1)
    assert hard.tolist() == [1, 0]  # image 0: one vote each, class 1 has the highest mean probability
    assert combine([a, b, c], "soft").argmax(1).tolist() == [1, 0]
    assert torch.allclose(combine([a, b, c], "soft").exp().sum(1), torch.ones(2))
    assert disagreement([a.argmax(1), b.argmax(1), c.argmax(1)]) == pytest.approx((1 + 0.5 + 1) / 3)


@pytest.mark.parametrize("tta, n", [("none", 1), ("flip", 2), ("crops", 3), ("flip+crops", 6)])
def test_tta_views_weights_sum_to_one(tta, n):
    views = tta_views(torch.randn(2, 3, 8, 8), tta)
    assert len(views) == n and sum(w for w, _ in views) == pytest.approx(1.0)


def test_evaluate_an_ensemble_of_bundles(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    for seed in range(3):
        run(capsys, "train", *data, *TINY, "--seed", str(seed), "--out", f"runs/m{seed}")
    members = [a for s in range(3) for a in ("--bundle", f"runs/m{s}")]
    soft = run(capsys, "evaluate", *members)
    hard = run(capsys, "evaluate", *members, "--vote", "hard")
    for r in (soft, hard):
        assert len(r["members"]) == 3 and r["observed_error"] == pytest.approx(1 - r["accuracy"])
        errors = [1 - m["accuracy"] for m in r["members"]]
        assert r["independent_error"] == pytest.approx(independent_error(sum(errors) / 3, 3))
        assert 0 <= r["disagreement"] <= 1 and "balanced_accuracy" in r
    assert hard["loss"] is None and soft["loss"] > 0
    single = run(capsys, "evaluate", "--bundle", "runs/m0", "--tta", "flip", "--tta-average", "probs")
    assert "accuracy_without_tta" in single and single["accuracy_without_tta"] == soft["members"][0]["accuracy"]


def test_bundles_of_other_classes_refuse_to_ensemble(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, *TINY, "--out", "runs/all")
    run(capsys, "train", *data, *TINY, "--classes", "cat,dog,frog", "--out", "runs/three")
    err = fails(capsys, "evaluate", "--bundle", "runs/all", "--bundle", "runs/three")
    assert "runs/three/bundle.safetensors cannot join the ensemble" in err and "lacks airplane, automobile" in err


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
    from imagefit.data import load_splits
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


def test_weighted_hard_vote_follows_the_heavier_member():
    a, b, c = (torch.tensor([[0.9, 0.1]]), torch.tensor([[0.2, 0.8]]), torch.tensor([[0.3, 0.7]]))
    assert combine([a, b, c], "hard").argmax(1).item() == 1
    assert combine([a, b, c], "hard", [5.0, 1.0, 1.0]).argmax(1).item() == 0


def test_predict_uses_the_bundle_tta_unless_told(capsys, cifar_dir, tmp_path):
    from PIL import Image

    from .conftest import class_images
    x, _ = class_images(1, 3, seed=5)
    files = []
    for i, img in enumerate(x):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(files[-1])
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--tta", "flip", "--out", "runs/t")

    def probs(*extra):
        out = run(capsys, "predict", "--bundle", "runs/t", "--top-k", "10", *files, *extra)["predictions"]
        return [{t["class"]: t["probability"] for t in p["top"]} for p in out]
    assert probs() == probs("--tta", "flip") != probs("--tta", "none")
