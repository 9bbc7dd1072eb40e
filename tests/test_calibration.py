"""Temperature scaling (issue 30): fitted on validation at the end of training, or by `imagefit calibrate` for a
bundle made before; part of the preprocessing contract, so every path applies it (test_parity covers that)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagefit.cli import main
from imagefit.evaluation.metrics import calibration, fit_temperature

from .conftest import TINY, write_cifar
from .test_train import fails, run


def test_fit_temperature_recovers_a_known_one():
    g = torch.Generator().manual_seed(0)
    true = torch.randn(4000, 10, generator=g) * 2
    labels = torch.multinomial(true.softmax(1), 1, generator=g).squeeze(1)  # labels drawn from softmax(true)
    overconfident = true * 3  # what an overconfident model reports: T = 3 undoes it
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = calibration(overconfident.softmax(1), labels)["ece"]
    after = calibration((overconfident / t).softmax(1), labels)["ece"]
    assert after < before / 3


def test_training_with_a_validation_split_calibrates_and_calibrate_fits_a_bundle_without_one(capsys, tmp_path):
    data = write_cifar(tmp_path / "data", n_train_per_class=20, n_test_per_class=12)
    r = run(capsys, "train", "--data", str(data), *TINY, "--val-fraction", "0.5", "--out", str(tmp_path / "v"))
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert metrics["temperature"] == r["temperature"] != 1.0 and "val_ece_after" in metrics and "ece" in metrics
    import imagefit
    assert imagefit.load(tmp_path / "v").preprocessing.temperature == r["temperature"]

    # a validation split of 10 images is too small to fit a temperature on: skipped, and said
    code = main(["train", "--data", str(data), *TINY, "--val-fraction", "0.05", "--out", str(tmp_path / "few"), "--json"])
    assert code == 0 and "calibration skipped: the validation split has 10 images" in capsys.readouterr().err
    assert imagefit.load(tmp_path / "few").preprocessing.temperature == 1.0

    # no validation split: a slice of train held out only for the temperature (the fast recipes' 2%)
    r = run(capsys, "train", "--data", str(data), *TINY, "--val-fraction", "0", "--calibration-fraction", "0.1",
            "--out", str(tmp_path / "slice"))
    metrics = json.loads((tmp_path / "slice" / "metrics.json").read_text())
    assert metrics["calibration_images"] == 20 and sum(metrics["data"]["train"]) == 180
    assert metrics["data"]["calibration"] == [2] * 10 and "val" not in metrics["data"]
    assert imagefit.load(tmp_path / "slice").preprocessing.temperature == r["temperature"] != 1.0

    run(capsys, "train", "--data", str(data), *TINY, "--val-fraction", "0", "--out", str(tmp_path / "all"))
    assert imagefit.load(tmp_path / "all").preprocessing.temperature == 1.0  # nothing to fit on
    assert "trained without a validation split" in fails(capsys, "calibrate", "--bundle", str(tmp_path / "all"))
    weights = load_file(str(tmp_path / "all" / "bundle.safetensors"))
    before = imagefit.load(tmp_path / "all").evaluate(str(data))
    c = run(capsys, "calibrate", "--bundle", str(tmp_path / "all"), "--split", "test", "--data", str(data))
    assert c["temperature"] != 1.0 and "ece_after_crossfit" in c and c["n"] == 120  # (too few for ECE to judge)
    kept = load_file(c["original"])
    assert kept.keys() == weights.keys() and all(kept[k].equal(weights[k]) for k in kept)  # the original, untouched
    model = imagefit.load(tmp_path / "all")
    assert model.preprocessing.temperature == c["temperature"]
    after = model.evaluate(str(data))
    assert after["accuracy"] == before["accuracy"] and after["loss"] != before["loss"]  # same argmax, new scores
    assert "exists already" in fails(capsys, "calibrate", "--bundle", str(tmp_path / "all"), "--split", "test")
    assert Path(c["original"]).exists()
