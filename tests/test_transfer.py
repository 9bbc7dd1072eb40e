"""Transfer learning: class subsets, --init-from, --pretrained (offline and from the cache), freezing,
discriminative rates, fine-tune's two stages and the linear probe."""

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from imagefit.bundle import load_bundle
from imagefit.config import Config
from imagefit.models import create_model
from imagefit.training.optim import param_groups

from .conftest import TINY
from .test_train import fails, run

ANIMALS = "bird,cat,deer,dog,frog"
VEHICLES = "airplane,automobile,ship,truck"


def test_class_subset_and_per_class_limit(capsys, cifar_dir):
    r = run(capsys, "train", "--data", str(cifar_dir), *TINY, "--classes", VEHICLES, "--per-class", "5",
            "--val-fraction", "0.2", "--out", "runs/v")
    assert r["n"] == 4 * 4  # the test split follows the subset
    meta = json.load(open("runs/v/metrics.json"))
    assert list(meta["test"]["per_class"]) == VEHICLES.split(",")
    e = run(capsys, "evaluate", "--bundle", "runs/v")
    assert e["accuracy"] == pytest.approx(r["accuracy"])
    assert "--classes names horsey, plane, not in" in fails(capsys, "train", "--data", str(cifar_dir), *TINY,
                                                           "--classes", "cat,horsey,plane")


def test_init_from_freeze_and_fine_tune(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, *TINY, "--classes", ANIMALS, "--out", "runs/animals")
    source = load_file("runs/animals/bundle.safetensors")
    tuned = run(capsys, "fine-tune", *data, *TINY, "--classes", VEHICLES, "--init-from", "runs/animals",
                "--lr", "0.05", "--out", "runs/ft")
    head, body = load_file("runs/ft/1-head/bundle.safetensors"), load_file("runs/ft/2-all/bundle.safetensors")
    convs = [k for k in source if k.endswith("conv1.weight") or k.endswith("conv2.weight") or k == "stem.0.weight"]
    assert convs and all(head[k].equal(source[k]) for k in convs)  # stage 1: the body stayed frozen
    assert not all(body[k].equal(source[k]) for k in convs)  # stage 2: it learned
    assert head["fc.weight"].shape[0] == 4 and tuned["layer_lr_decay"] == 2.6
    assert tuned["accuracy"] == tuned["all"]["accuracy"] and tuned["bundle"].endswith("2-all/bundle.safetensors")
    # the normalization is the source bundle's, not the vehicle subset's own statistics
    assert load_bundle("runs/ft/2-all").preprocessing.mean == load_bundle("runs/animals").preprocessing.mean


def test_the_fitting_process_over_two_sizes_and_its_resume(capsys, cifar_dir):
    """`fine-tune --sizes 16,32`: four stages, each size from the last one's weights, the all-layers stages at
    rates spread from their own range test up to the head stage's rate / 10; a run stopped in its first stage and
    resumed ends with the very weights of one never stopped."""
    from imagefit.training.transfer import PEAK_DIVISOR
    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, *TINY, "--classes", ANIMALS, "--out", "runs/animals")
    process = [*data, *TINY, "--classes", VEHICLES, "--init-from", "runs/animals", "--sizes", "16,32",
               "--head-epochs", "1", "--epochs", "1"]
    done = run(capsys, "fine-tune", *process, "--out", "runs/p")
    names = ["1-head-16", "2-all-16", "3-head-32", "4-all-32"]
    assert list(done["stages"]) == names and done["bundle"].endswith("4-all-32/bundle.safetensors")
    for name, size in zip(names, (16, 16, 32, 32)):
        assert load_bundle(f"runs/p/{name}").preprocessing.size == size
    for head, body in (("1-head-16", "2-all-16"), ("3-head-32", "4-all-32")):
        assert done["stages"][body]["lr"] == pytest.approx(done["stages"][head]["lr"] / PEAK_DIVISOR)
        found = json.load(open(f"runs/p/{body}.lr_finder.json"))
        low = min(found["suggestion"], done["stages"][body]["lr"])
        decay = done["stages"][body]["layer_lr_decay"]
        assert decay ** (found["layer_groups"] - 1) == pytest.approx(done["stages"][body]["lr"] / low)
        assert Path(f"runs/p/{body}.lr_finder.png").stat().st_size > 0
    assert yaml.safe_load(open("runs/p/3-head-32/config.yaml"))["model"]["init_from"] == "runs/p/2-all-16"
    later = json.load(open("runs/p/3-head-32.lr_finder.json"))  # the later head's own range test, and its choice
    assert later["chosen"] == done["stages"]["3-head-32"]["lr"]
    assert later["chosen"] == done["stages"]["1-head-16"]["lr"] and "suggestion" in later  # shown, not followed

    from imagefit.cli import main
    assert main(["fine-tune", *process, "--out", "runs/q", "--stop-after-steps", "1"]) == 1
    stopped = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage 1-head-16 was interrupted" in stopped and "--resume" in stopped
    assert not Path("runs/q/2-all-16").exists()
    again = run(capsys, "fine-tune", *process, "--out", "runs/q", "--resume")
    assert again["accuracy"] == done["accuracy"]
    a, b = load_file("runs/p/4-all-32/bundle.safetensors"), load_file("runs/q/4-all-32/bundle.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert "--sizes must grow" in fails(capsys, "fine-tune", *process[:-6], "--sizes", "32,16", "--out", "runs/r")
    assert "--resume continues the fine-tuning in --out" in fails(capsys, "fine-tune", *process, "--resume")


def test_init_from_an_incompatible_bundle_names_the_layers(capsys, cifar_dir):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/small")
    err = fails(capsys, "train", "--data", str(cifar_dir), *TINY[:-6], "--widths", "8,32", "--batch-size", "16",
                "--epochs", "1", "--init-from", "runs/small")
    assert "shape differs: layers.1.0.conv1.weight" in err and "(a resnet)" in err


def test_pretrained_offline_names_the_file_and_the_cache(capsys, cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    err = fails(capsys, "train", "--data", str(cifar_dir), "--model", "resnet18", "--pretrained", "imagenet",
                "--epochs", "1", "--tracking-uri", "none")
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "has weights for resnet18, resnet34 and resnet50" in fails(
        capsys, "train", "--data", str(cifar_dir), *TINY, "--pretrained", "imagenet")
    assert "must be one of none, imagenet" in fails(capsys, "train", "--data", str(cifar_dir), *TINY,
                                                    "--pretrained", "places365")


def test_pretrained_weights_from_the_cache_and_their_statistics(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    fake = torchvision.models.resnet18(weights=None).state_dict()  # stands in for the real download
    torch.save(fake, cache / "resnet18-f37072fd.pth")
    cfg = Config()
    cfg.model.model, cfg.model.pretrained, cfg.model.stem = "resnet18", "imagenet", "imagenet"
    model = create_model(3, cfg.model)
    assert model.layer1[0].conv1.weight.equal(fake["layer1.0.conv1.weight"]) and model.fc.out_features == 3
    cfg.model.stem = "cifar"
    model = create_model(3, cfg.model)
    assert model.layer4[1].conv2.weight.equal(fake["layer4.1.conv2.weight"])
    assert model.conv1.weight.shape[-1] == 3 and model.fresh_parameters == {"conv1.weight"}


def test_discriminative_rates_fall_by_the_factor_per_layer_group():
    cfg = Config()
    cfg.model.model, cfg.optim.lr, cfg.optim.layer_lr_decay = "resnet20", 0.1, 3.0
    model = create_model(10, cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {names[id(p)]: g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    assert rate["fc.weight"] == pytest.approx(0.1)
    assert rate["layers.2.0.conv1.weight"] == pytest.approx(0.1 / 3)
    assert rate["layers.0.0.conv1.weight"] == pytest.approx(0.1 / 27) == rate["layers.0.1.bn1.weight"]
    assert rate["stem.0.weight"] == pytest.approx(0.1 / 81)
    assert sum(len(g["params"]) for g in param_groups(model, cfg)) == len(list(model.parameters()))


@pytest.mark.parametrize("head", ["svm", "logistic"])
def test_linear_probe_reports_like_a_model(capsys, cifar_dir, head):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/src")
    r = run(capsys, "features", "--data", str(cifar_dir), "--model", "resnet", "--blocks", "1,1", "--widths",
            "8,16", "--init-from", "runs/src", "--head", head, "--out", "runs/probe")
    assert r["features"] == 16 and r["n"] == 40 and len(r["confusion"]) == 10
    assert r["accuracy"] == pytest.approx(sum(r["confusion"][i][i] for i in range(10)) / 40)
    assert (r["loss"] is None) == (head == "svm")
    assert json.load(open("runs/probe/linear_probe.json"))["accuracy"] == r["accuracy"]


def test_transfer_commands_need_starting_weights(capsys, cifar_dir):
    assert "starts from trained weights" in fails(capsys, "fine-tune", "--data", str(cifar_dir), *TINY)
    assert "starts from trained weights" in fails(capsys, "features", "--data", str(cifar_dir), "--model", "resnet20")


def test_an_all_layers_stage_without_a_rate_spreads_fastais_way(capsys, cifar_dir, monkeypatch):
    """A fitted head can leave a range test whose loss only rises (fastnet-small on 500 images did, on 2 of 3
    seeds); the all-layers stage then trains its earliest layers at the peak / 100 instead of stopping."""
    from imagefit.errors import ImagefitError
    from imagefit.training.train import Trainer
    from imagefit.training.transfer import FALLBACK_SPREAD, PEAK_DIVISOR
    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, *TINY, "--classes", ANIMALS, "--out", "runs/animals")

    def no_rate(self, **kwargs):
        raise ImagefitError("the loss never decreased between 1e-07 and 10: no rate to suggest")
    monkeypatch.setattr(Trainer, "range_test", no_rate)
    done = run(capsys, "fine-tune", *data, *TINY, "--classes", VEHICLES, "--init-from", "runs/animals",
               "--sizes", "16,32", "--epochs", "1", "--lr", "0.05", "--out", "runs/p")
    found = json.load(open("runs/p/2-all-16.lr_finder.json"))
    assert found["suggestion"] is None and "never decreased" in found["no_rate"]
    stage = done["stages"]["2-all-16"]
    assert stage["lr"] == pytest.approx(0.05 / PEAK_DIVISOR)
    assert stage["layer_lr_decay"] ** (found["layer_groups"] - 1) == pytest.approx(FALLBACK_SPREAD)
