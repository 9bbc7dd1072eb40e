"""The diffusion generator: tiny preset trains, resumes bitwise, samples guided images into an ImageFolder tree
that resumes without duplicates, and refuses out-of-range options."""

import json
import os

import pytest
import torch

from imagefit.generative.generate import CHECKPOINT

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
    assert r["gflop_per_image"] > 0 and r["images_per_s"] > 0
    assert sorted(os.listdir("syn/train/dog")) == ["0.png", "1.png", "2.png"]
    again = run(capsys, "generate", "sample", "--model", "gen/full", "--out", "syn", "--per-class", "4", "--steps",
                "2", "--batch-size", "2")
    assert again["written"] == 3 * 2  # the first batch of each class exists: only indices 2-3 are drawn
    # the synthetic tree trains a classifier like any ImageFolder
    run(capsys, "train", "--data", "syn", "--model", "resnet", "--blocks", "1", "--widths", "8", "--epochs", "1",
        "--batch-size", "4", "--tracking-uri", "none", "--out", "runs/syn")


def test_bfloat16_trains_resumes_and_samples_near_float32(capsys, cifar_dir):
    """--amp bf16 (autocast; emulated where the CPU lacks bfloat16) keeps the bitwise resume, and its samples are
    float32's up to rounding: the same noise lands on nearly the same pixels, not on the same ones."""
    data = ["--data", str(cifar_dir), "--amp", "bf16"]
    run(capsys, *TRAIN, *data, "--out", "gen/full")
    run(capsys, *TRAIN, *data, "--out", "gen/cut", "--stop-after-steps", "2")
    run(capsys, *TRAIN, *data, "--out", "gen/cut")
    a, b = torch.load(f"gen/full/{CHECKPOINT}"), torch.load(f"gen/cut/{CHECKPOINT}")
    assert a["config"]["amp"] == "bf16" and all(a["ema"][k].equal(b["ema"][k]) for k in a["ema"])
    sample = ["generate", "sample", "--model", "gen/full", "--per-class", "2", "--steps", "5"]
    assert run(capsys, *sample, "--out", "s32", "--amp", "no")["precision"] == "float32"
    assert run(capsys, *sample, "--out", "s16", "--amp", "bf16")["precision"] == "bfloat16"
    from imagefit.config import DataConfig
    from imagefit.data.sources import synthetic_tree
    x32, x16 = (synthetic_tree(f, DataConfig()).images.float() for f in ("s32", "s16"))
    diff = (x32 - x16).abs()
    assert 0 < diff.mean() < 4, diff.mean()  # of 255


def test_ema_warms_up_to_its_decay():
    from imagefit.training.ema import ema_decay
    decays = [ema_decay(0.999, step) for step in range(20000)]
    assert decays[0] == 0.1 and decays == sorted(decays)  # the first average is mostly the new weights
    assert decays[8000] < 0.999 and decays[-1] == 0.999


def test_bad_generator_options(capsys, cifar_dir):
    run(capsys, *TRAIN, "--data", str(cifar_dir), "--steps", "1", "--out", "gen/g")
    assert "--guidance must be between 0 and 20" in fails(capsys, "generate", "sample", "--model", "gen/g",
                                                          "--out", "s", "--guidance", "50")
    assert "--steps must be between 1 and 1000" in fails(capsys, "generate", "sample", "--model", "gen/g",
                                                        "--out", "s", "--steps", "0")
    assert "no diffusion or GAN checkpoint" in fails(capsys, "generate", "sample", "--model", "nowhere", "--out", "s")
    assert "resume it with the same data" in fails(capsys, *TRAIN[:4], "--classes", "cat,dog", "--steps", "2",
                                                   "--data", str(cifar_dir), "--out", "gen/g")
    small = [a if a != "tiny" else "small" for a in TRAIN]  # the same data, another network: no raw traceback
    assert "holds a --preset tiny network, not small" in fails(capsys, *small, "--data", str(cifar_dir), "--steps",
                                                               "2", "--out", "gen/g")


def test_synthetic_images_mix_into_training(capsys, cifar_dir, tmp_path):
    from PIL import Image

    from imagefit.preprocessing import Normalize
    from imagefit.config import DataConfig
    from imagefit.data.sources import load_splits
    from imagefit.data.loader import Loader

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
    loader = Loader(mixed.train, 16, Normalize(real.mean, real.std, False), shuffle=True,
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


GAN = ["generate", "train", "--family", "gan", "--preset", "tiny", "--classes", "cat,dog,frog", "--steps", "4",
       "--batch-size", "8", "--checkpoint-every", "2"]


def test_gan_trains_resumes_and_samples(capsys, cifar_dir):
    from imagefit.generative.gan import CHECKPOINT as GAN_CKPT
    data = ["--data", str(cifar_dir)]
    full = run(capsys, *GAN, *data, "--out", "gan/full")
    assert full["stopped"] == "completed" and os.path.exists("gan/full/samples-step0000004.png")
    run(capsys, *GAN, *data, "--out", "gan/cut", "--stop-after-steps", "2")
    run(capsys, *GAN, *data, "--out", "gan/cut")
    a, b = torch.load(f"gan/full/{GAN_CKPT}"), torch.load(f"gan/cut/{GAN_CKPT}")
    assert all(a["generator"][k].equal(b["generator"][k]) for k in a["generator"]) and a["history"] == b["history"]
    # the collapse monitor ran at each checkpoint, and a resume measures exactly what an unbroken run does
    assert [s["step"] for s in a["spread"]] == [2, 4] and a["spread"] == b["spread"]
    assert all(s["lowest"] > 0 and s["class"] in ("cat", "dog", "frog") for s in a["spread"])
    r = run(capsys, "generate", "sample", "--model", "gan/full", "--out", "gsyn", "--per-class", "3")
    assert r["written"] == 9 and r["family"] == "gan" and sorted(os.listdir("gsyn/train/cat")) == ["0.png", "1.png",
                                                                                                    "2.png"]
    r = run(capsys, "generate", "sample", "--model", "gan/full", "--out", "gsyn2", "--per-class", "2",
            "--snapshot", "2")
    assert r["written"] == 6 and json.loads(open("gsyn2/synthetic.json").read())["snapshot"] == 2
    assert "--snapshot 3: gan/full has no weights of step 3 (kept: 2 to 4, every 2)" in fails(
        capsys, "generate", "sample", "--model", "gan/full", "--out", "gsyn3", "--snapshot", "3")
    assert "holds a GAN run" in fails(capsys, *TRAIN, *data, "--out", "gan/full")
    assert "need a diffusion model" in fails(capsys, "generate", "vary", "--model", "gan/full", *data,
                                             "--out", "v", "--classes", "cat")


def test_gan_collapse_is_measured_and_named():
    from imagefit.generative.gan import class_spread, collapse_warning
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0] * 6 + [1] * 6)
    copies = images.clone()
    copies[6:] = images[6]  # class 1: six copies of one image
    spread = class_spread(copies, labels, 2) / class_spread(images, labels, 2)
    assert spread[0] == 1 and spread[1] == 0
    history = [{"step": 500, "mean": 0.98, "lowest": 0.9, "class": "cat"},
               {"step": 1000, "mean": 0.9, "lowest": 0.7, "class": "dog"}]
    assert collapse_warning(history) is None
    said = collapse_warning(history + [{"step": 1500, "mean": 0.6, "lowest": 0.3, "class": "dog"}])
    assert "dog samples are 0.30 as varied" in said and "--snapshot 1000" in said
    assert "no checkpoint was above it" in collapse_warning([{"step": 500, "mean": 0.2, "lowest": 0.1,
                                                              "class": "cat"}])


def test_diffuse_and_denoise_variations(capsys, cifar_dir):
    data = ["--data", str(cifar_dir)]
    run(capsys, *TRAIN, *data, "--out", "gen/g")
    r = run(capsys, "generate", "vary", "--model", "gen/g", *data, "--classes", "cat,dog", "--per-class", "3",
            "--strength", "0.3", "--steps", "10", "--batch-size", "4", "--out", "var")
    assert r["written"] == 6 and sorted(os.listdir("var/train")) == ["cat", "dog"]
    again = run(capsys, "generate", "vary", "--model", "gen/g", *data, "--classes", "cat,dog", "--per-class", "3",
                "--strength", "0.3", "--steps", "10", "--batch-size", "4", "--out", "var")
    assert again["written"] == 0  # resumed: nothing left to do
    # a low strength keeps the image close to the original; strength 1 forgets it
    from imagefit.generative.generate import load_generator, vary
    unet, cfg = load_generator("gen/g")
    from imagefit.config import DataConfig
    from imagefit.data.sources import load_splits
    real = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0, classes=["cat", "dog", "frog"]), 0).train
    images, labels = real.images[:8], real.labels[:8]
    near = vary(unet, cfg, images, labels, 0.05, steps=20)
    far = vary(unet, cfg, images, labels, 1.0, steps=20)
    dist = lambda a: (a.float() - images.float()).abs().mean().item()  # noqa: E731
    assert dist(near) < dist(far)
    assert "--strength must be in (0, 1]" in fails(capsys, "generate", "vary", "--model", "gen/g", *data,
                                                   "--strength", "0", "--out", "v")


def test_variations_of_a_generator_trained_at_another_size(capsys, cifar_dir):
    """`generate vary` reads the real images at the generator's own size (it had no --size and read them at 32 px,
    so a 16-px generator could not vary anything)."""
    from PIL import Image
    run(capsys, *TRAIN, "--data", str(cifar_dir), "--size", "16", "--out", "gen/16")
    r = run(capsys, "generate", "vary", "--model", "gen/16", "--data", str(cifar_dir), "--per-class", "2",
            "--steps", "4", "--batch-size", "6", "--out", "var16")
    assert r["written"] == 6 and Image.open("var16/train/cat/" + os.listdir("var16/train/cat")[0]).size == (16, 16)


def test_quality_scores_and_cas(capsys, cifar_dir, tmp_path):
    """FID/KID/IS on a classifier's features rank real images above noise; per-checkpoint FID is plotted; CAS
    trains on the synthetic folder and tests on the real test split."""
    from PIL import Image

    from imagefit.bundle import load_bundle
    from imagefit.config import DataConfig
    from imagefit.data.sources import load_splits
    from imagefit.generative.quality import scores

    data = ["--data", str(cifar_dir)]
    run(capsys, "train", *data, "--model", "resnet", "--blocks", "1", "--widths", "8", "--epochs", "2",
        "--batch-size", "16", "--tracking-uri", "none", "--out", "runs/clf")
    bundle = load_bundle("runs/clf")
    real = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0), 0).train
    half = len(real) // 2
    like = scores(real.images[:half], real.images[half:], bundle, fake_labels=real.labels[half:], kid_subset=20)
    noise = torch.randint(0, 256, real.images[half:].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    unlike = scores(real.images[:half], noise, bundle, kid_subset=20)
    assert like["fid"] < unlike["fid"] and like["kid"] < unlike["kid"]
    import imagefit
    said = imagefit.load("runs/clf").probabilities(real.images[half:].permute(0, 2, 3, 1).numpy()).argmax(1)
    assert like["label_accuracy"] == pytest.approx((said == real.labels[half:]).double().mean().item())
    assert like["inception_score"] >= 1

    run(capsys, *TRAIN, *data, "--out", "gen/g")
    r = run(capsys, "generate", "eval", "--model", "gen/g", *data, "--classifier", "runs/clf", "--per-class", "4",
            "--steps", "2", "--per-checkpoint")
    assert [row["step"] for row in r["per_checkpoint"]] == [2, 4] and os.path.exists("gen/g/fid-per-step.png")
    assert r["fid"] == r["per_checkpoint"][-1]["fid"]  # the last snapshot is the final EMA weights
    # a generator trained at 16 px is scored at the classifier's 32 px, its images scaled up
    run(capsys, *TRAIN, *data, "--size", "16", "--out", "gen/g16")
    from imagefit.generative.generate import draw, load_generator
    unet16, cfg16 = load_generator("gen/g16")
    assert cfg16.size == 16 and draw(unet16, cfg16, torch.tensor([0]), steps=2).shape[-1] == 16
    r16 = run(capsys, "generate", "eval", "--model", "gen/g16", *data, "--classifier", "runs/clf", "--per-class",
              "4", "--steps", "2")
    assert r16["fid"] >= 0 and r16["fake_images"] == 12
    assert "--size must be >= 8 and <= 1024 (got 4)" in fails(capsys, *TRAIN, *data, "--size", "4", "--out", "gen/g4")
    assert "(got 2048)" in fails(capsys, *TRAIN, *data, "--size", "2048", "--out", "gen/g4")

    syn = tmp_path / "syn" / "train"
    for i, (img, label) in enumerate(zip(real.images, real.labels)):
        (syn / real.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(syn / real.classes[label] / f"{i}.png")
    r = run(capsys, "generate", "eval", "--synthetic", str(tmp_path / "syn"), *data, "--classifier", "runs/clf",
            "--cas", "--cas-epochs", "2", "--tracking-uri", "none")
    assert r["cas_n"] == 40  # CIFAR fixture's test split: 4 per class
    assert r["cas"] == pytest.approx(imagefit.evaluate(r["cas_bundle"], data=cifar_dir)["accuracy"])
    assert json.loads((tmp_path / "syn" / "quality.json").read_text())["cas"] == r["cas"]  # kept beside the FID

    assert "give --model GEN" in fails(capsys, "generate", "eval", *data, "--classifier", "runs/clf")
    assert "need --classifier" in fails(capsys, "generate", "eval", "--synthetic", str(tmp_path / "syn"), *data)
    assert "its classes: airplane" in fails(capsys, "generate", "vary", "--model", "gen/g", *data,
                                            "--classes", "cat,zebra", "--out", "v")
