"""Evaluating bundles on a split: one bundle (with its TTA, and without beside it), or an ensemble of them."""

import pytest
import torch

from imagefit.evaluation.voting import independent_error

from .conftest import TINY
from .test_train import fails, run


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
        assert "balanced_accuracy" in r
    # the figures recomputed from each member's own test probabilities
    from imagefit.bundle import load_bundle
    from imagefit.evaluation.evaluate import bundle_scores, split_images
    probs, labels = [], None
    for s in range(3):
        b = load_bundle(f"runs/m{s}")
        scores, labels = bundle_scores(b, split_images(b, str(cifar_dir), "test"), batch_size=64, tta="none",
                                       average="logits")
        probs.append(scores.softmax(1))
    predictions = [p.argmax(1) for p in probs]
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert soft["disagreement"] == pytest.approx(sum((predictions[i] != predictions[j]).double().mean().item()
                                                     for i, j in pairs) / 3)
    mean = sum(probs) / 3
    assert soft["accuracy"] == pytest.approx((mean.argmax(1) == labels).double().mean().item())
    assert soft["loss"] == pytest.approx(-mean[torch.arange(len(labels)), labels].log().mean().item(), rel=1e-4)
    assert hard["loss"] is None
    single = run(capsys, "evaluate", "--bundle", "runs/m0", "--tta", "flip", "--tta-average", "probs")
    assert "accuracy_without_tta" in single and single["accuracy_without_tta"] == soft["members"][0]["accuracy"]


def test_bundles_of_other_classes_refuse_to_ensemble(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, *TINY, "--out", "runs/all")
    run(capsys, "train", *data, *TINY, "--classes", "cat,dog,frog", "--out", "runs/three")
    err = fails(capsys, "evaluate", "--bundle", "runs/all", "--bundle", "runs/three")
    assert "runs/three/bundle.safetensors cannot join the ensemble" in err and "lacks airplane, automobile" in err
