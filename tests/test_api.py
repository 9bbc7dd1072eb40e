"""The public Python API: the same runs, figures and errors as the CLI, for notebook users."""

import json

import numpy as np
import pytest
from PIL import Image

import imagefit

from .test_train import run

TINY = dict(model="resnet", blocks="1,1", widths="8,16", batch_size=16, epochs=2, tracking_uri="none")


def test_train_load_predict_evaluate_as_a_notebook_would(capsys, cifar_dir, tmp_path):
    r = imagefit.train(data=cifar_dir, out=tmp_path / "a", **TINY)
    assert not r.interrupted and r.bundle == tmp_path / "a" / "bundle.safetensors"
    assert r["accuracy"] == json.load(open(tmp_path / "a" / "metrics.json"))["accuracy"]
    cli = run(capsys, "train", "--data", str(cifar_dir), "--model", "resnet", "--blocks", "1,1", "--widths", "8,16",
              "--batch-size", "16", "--epochs", "2", "--tracking-uri", "none", "--out", str(tmp_path / "b"))
    assert cli["accuracy"] == r["accuracy"] and cli["loss"] == r["loss"]  # same seed, same figures

    model = r.load(backend="pytorch")
    assert model.classes[0] == "airplane" and model.preprocessing.size == 32 and model.metrics["accuracy"] == r["accuracy"]
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    top = model.predict([str(tmp_path / "x.png"), Image.fromarray(img), img, (tmp_path / "x.png").read_bytes()],
                        top_k=3)
    assert len(top) == 4 and all(t == top[0] for t in top) and len(top[0]) == 3
    assert model.predict(img) == top[:1]  # one image alone is a list of one
    probs = model.probabilities([img])
    assert probs.shape == (1, 10) and probs.sum().item() == pytest.approx(1, abs=1e-5)
    assert top[0][0]["probability"] == pytest.approx(probs.max().item(), abs=1e-6)

    e = model.evaluate(cifar_dir, tta="flip")
    cli_e = run(capsys, "evaluate", "--bundle", str(tmp_path / "a"), "--data", str(cifar_dir), "--tta", "flip",
                "--tracking-uri", "none")
    assert e["accuracy"] == cli_e["accuracy"] and e["accuracy_without_tta"] == r["accuracy"]
    assert imagefit.evaluate(tmp_path / "a", cifar_dir)["accuracy"] == r["accuracy"]


def test_resume_and_find_lr(cifar_dir, tmp_path):
    cut = imagefit.train(data=cifar_dir, out=tmp_path / "c", stop_after_steps=3, **TINY)
    assert cut.interrupted and cut.bundle is None
    with pytest.raises(imagefit.ImagefitError, match="holds no bundle yet"):
        cut.load()
    done = imagefit.train(resume=tmp_path / "c", tracking_uri="none")
    assert done.bundle.exists() and done["epochs"] == 2
    found = imagefit.find_lr(data=cifar_dir, model="resnet", blocks="1,1", widths="8,16", batch_size=16,
                             steps=20, out=tmp_path / "f")
    assert found.lrs[0] <= found.suggestion <= found.lrs[-1] and len(found.lrs) == len(found.losses)
    assert (tmp_path / "f" / "lr_finder.png").exists()
    assert json.load(open(tmp_path / "f" / "lr_finder.json"))["steepest"] == found.steepest


def test_options_are_checked_like_the_flags(cifar_dir):
    with pytest.raises(imagefit.ImagefitError, match="unknown option 'epoch'; did you mean epochs"):
        imagefit.make_config(epoch=3)
    with pytest.raises(imagefit.ImagefitError, match="--epochs got 'ten', which is not an integer"):
        imagefit.make_config(epochs="ten")
    with pytest.raises(imagefit.ImagefitError, match="--lr must be > 0"):
        imagefit.train(data=cifar_dir, lr=0, tracking_uri="none")
    with pytest.raises(imagefit.ImagefitError, match="--widths does not apply to --model resnet20"):
        imagefit.make_config(model="resnet20", widths=[8, 16])
    with pytest.raises(imagefit.ImagefitError, match="recipe fast is tuned for --model fastnet"):
        imagefit.make_config("fast", model="resnet18")
    assert imagefit.make_config("fast", epochs=3).train.epochs == 3
    with pytest.raises(imagefit.ImagefitError, match="--resume continues a run with its saved config; drop --epochs"):
        imagefit.train(resume="runs/x", epochs=3)
