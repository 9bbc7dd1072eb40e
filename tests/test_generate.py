"""The diffusion generator: tiny preset trains, resumes bitwise, samples guided images into an ImageFolder tree
that resumes without duplicates, and refuses out-of-range options."""

import os

import torch

from imagefit.generate import CHECKPOINT

from .test_train import fails, run

TRAIN = ["generate", "train", "--preset", "tiny", "--classes", "cat,dog,frog", "--steps", "4", "--batch-size", "8",
         "--checkpoint-every", "2"]


def test_train_resume_and_sample(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    full = run(capsys, *TRAIN, *data, "--out", "gen/full")
    assert full["stopped"] == "completed" and full["step"] == 4
    assert sorted(f for f in os.listdir("gen/full") if f.endswith(".png")) == ["samples-step0000002.png",
                                                                               "samples-step0000004.png"]
    cut = run(capsys, *TRAIN, *data, "--out", "gen/cut", "--stop-after-steps", "2")
    assert cut["stopped"] == "interrupted" and cut["step"] == 2
    run(capsys, *TRAIN, *data, "--out", "gen/cut")  # resumes from step 2
    a, b = torch.load(f"gen/full/{CHECKPOINT}"), torch.load(f"gen/cut/{CHECKPOINT}")
    assert all(a["ema"][k].equal(b["ema"][k]) for k in a["ema"]) and a["history"] == b["history"]

    r = run(capsys, "generate", "sample", "--model", "gen/full", "--out", "syn", "--per-class", "3", "--steps", "2",
            "--batch-size", "2")
    assert r["written"] == 9 and sorted(os.listdir("syn/train")) == ["cat", "dog", "frog"]
    assert sorted(os.listdir("syn/train/dog")) == ["0.png", "1.png", "2.png"]
    again = run(capsys, "generate", "sample", "--model", "gen/full", "--out", "syn", "--per-class", "4", "--steps",
                "2", "--batch-size", "2")
    assert again["written"] == 3 * 2  # the first batch of each class exists: only indices 2-3 are drawn
    # the synthetic tree trains a classifier like any ImageFolder
    run(capsys, "train", "--data", "syn", "--model", "resnet", "--blocks", "1", "--widths", "8", "--epochs", "1",
        "--batch-size", "4", "--tracking-uri", "none", "--out", "runs/syn")


def test_bad_generator_options(capsys, cifar_dir):
    run(capsys, *TRAIN, "--data", str(cifar_dir), "--steps", "1", "--out", "gen/g")
    assert "--guidance must be between 0 and 20" in fails(capsys, "generate", "sample", "--model", "gen/g",
                                                          "--out", "s", "--guidance", "50")
    assert "--steps must be between 1 and 1000" in fails(capsys, "generate", "sample", "--model", "gen/g",
                                                        "--out", "s", "--steps", "0")
    assert "no diffusion checkpoint" in fails(capsys, "generate", "sample", "--model", "nowhere", "--out", "s")
    assert "resume it with the same data" in fails(capsys, *TRAIN[:4], "--classes", "cat,dog", "--steps", "2",
                                                   "--data", str(cifar_dir), "--out", "gen/g")


def test_synthetic_images_mix_into_training(capsys, cifar_dir, tmp_path):
    from PIL import Image

    from imagefit.augment import Normalize
    from imagefit.config import DataConfig
    from imagefit.data import load_splits
    from imagefit.loader import Loader

    from .conftest import class_images
    x, y = class_images(5, 3, seed=9)
    names = ["cat", "dog", "frog"]
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "syn" / "train" / names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    cfg = DataConfig(data=str(cifar_dir), val_fraction=0, synthetic=str(tmp_path / "syn"))
    real = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0), 0)
    mixed = load_splits(cfg, 0)
    assert len(mixed.synthetic) == 15 and mixed.synthetic.labels.max() <= 6  # relabelled to CIFAR's order
    assert mixed.mean == real.mean  # normalized by the real images only
    loader = Loader(mixed.train, 16, Normalize(real.mean, real.std, torch.device("cpu"), False), shuffle=True,
                    synthetic=mixed.synthetic, synthetic_ratio=0.25, drop_last=True)
    assert len(loader) == 120 // 12
    labels = next(loader.batches())[2]
    assert len(labels) == 16 and set(labels[12:].tolist()) <= {3, 5, 6}  # the last 4 are synthetic cats/dogs/frogs
    cfg.synthetic_mode = "extra"
    assert len(load_splits(cfg, 0).train) == 120 + 15
    args = ["train", "--data", str(cifar_dir), "--model", "resnet", "--blocks", "1", "--widths", "8", "--epochs",
            "2", "--batch-size", "16", "--tracking-uri", "none", "--synthetic", str(tmp_path / "syn")]
    run(capsys, *args, "--out", "runs/mix")
    run(capsys, *args, "--out", "runs/cut", "--stop-after-steps", "3")
    run(capsys, "train", "--resume", "runs/cut")
    from .test_train import same_weights
    assert same_weights("runs/mix/bundle.safetensors", "runs/cut/bundle.safetensors")
