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
