"""Class imbalance: the study profiles, resampling, reweighting and logit adjustment, end to end."""

import json

import pytest
import torch

from imagefit.errors import ImagefitError
from imagefit.data.imbalance import TAU_GRID, class_weights, counts_for, epoch_size, resampled_order

from .conftest import TINY
from .test_train import fails, run, same_weights


def test_profiles_keep_the_documented_counts():
    assert counts_for("exp:100", [5000] * 10)[0] == 5000 and counts_for("exp:100", [5000] * 10)[-1] == 50
    assert counts_for("step:10", [5000] * 10) == [5000] * 5 + [500] * 5
    with pytest.raises(ImagefitError, match="largest possible ratio here is exp:40"):
        counts_for("exp:1000", [40] * 10)
    with pytest.raises(ImagefitError, match="is not none, exp:RATIO or step:RATIO"):
        counts_for("log:3", [40] * 10)


@pytest.mark.parametrize("mode, per_class", [("oversample", 8), ("undersample", 2)])
def test_resampling_draws_every_class_to_one_count(mode, per_class):
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    order = resampled_order(labels, mode, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[order]).tolist() == [per_class] * 3 and len(order) == epoch_size(labels, mode)
    again = resampled_order(labels, mode, torch.Generator().manual_seed(0))
    assert order.equal(again)
    if mode == "oversample":
        assert set(order.tolist()) == set(range(14))  # every image appears; only the small classes repeat


def test_class_weights_are_inverse_frequency():
    w = class_weights(torch.tensor([0] * 6 + [1] * 2), 2)
    assert w.tolist() == pytest.approx([8 / 12, 8 / 4])


def test_imbalanced_runs_with_each_remedy(capsys, cifar_dir):
    data = ["--data", str(cifar_dir), *TINY, "--val-fraction", "0.2", "--imbalance", "exp:4"]
    plain = run(capsys, "train", *data, "--out", "runs/plain")
    assert plain["n"] == 40  # the test split is untouched
    test = json.load(open("runs/plain/metrics.json"))["test"]
    rows = test["per_class"].values()  # every class is in the untouched test split
    assert test["balanced_accuracy"] == pytest.approx(sum(r["recall"] for r in rows) / 10)
    assert test["macro_f1"] == pytest.approx(sum(r["f1"] for r in rows) / 10)
    assert [r["recall"] for r in rows] == pytest.approx([test["confusion"][i][i] / 4 for i in range(10)])
    for remedy in ("oversample", "undersample", "reweight"):
        run(capsys, "train", *data, "--balance", remedy, "--out", f"runs/{remedy}")
    # resampling keeps resume exact
    run(capsys, "train", *data, "--balance", "oversample", "--out", "runs/cut", "--stop-after-steps", "3")
    run(capsys, "train", "--resume", "runs/cut")
    assert same_weights("runs/oversample/bundle.safetensors", "runs/cut/bundle.safetensors")


def test_logit_adjustment_travels_with_the_bundle(capsys, cifar_dir):
    data = ["--data", str(cifar_dir), *TINY, "--val-fraction", "0.2", "--imbalance", "step:3"]
    r = run(capsys, "train", *data, "--logit-adjust", "1", "--out", "runs/la")
    assert r["logit_adjust"] == 1.0
    assert run(capsys, "evaluate", "--bundle", "runs/la")["accuracy"] == pytest.approx(r["accuracy"])
    assert run(capsys, "train", *data, "--logit-adjust", "auto", "--out", "runs/auto")["logit_adjust"] in TAU_GRID
    assert "--logit-adjust auto chooses on the validation split" in fails(
        capsys, "train", *data[:-4], "--val-fraction", "0", "--logit-adjust", "auto")
    assert "largest possible ratio here is exp:12" in fails(capsys, "train", "--data", str(cifar_dir), *TINY,
                                                           "--imbalance", "exp:50")
