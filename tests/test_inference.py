"""Predictors: the bundle's contract on PyTorch or ONNX Runtime, the choice between them, and files in batches."""

import os

import pytest
import torch

from .conftest import TINY
from .test_train import run


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


def test_predictors_agree_and_auto_picks_onnx_only_for_an_export_of_this_very_bundle(capsys, cifar_dir, tmp_path):
    from imagefit.deploy.inference import load_predictor
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--logit-adjust", "1", "--out", "runs/p")
    torch_p = load_predictor("runs/p")
    assert torch_p.backend == "pytorch" and torch_p.preprocessing.logit_adjust["tau"] == 1.0
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    # the PyTorch predictor is the bundle's model on the contract's normalized pixels, then the adjustment
    from imagefit.bundle import load_bundle
    b = load_bundle("runs/p")
    with torch.no_grad():
        manual = b.preprocessing.adjust(b.model(b.preprocessing.normalizer()(x))).softmax(1)
    assert torch.allclose(torch_p.probabilities(x), manual, atol=1e-6)
    run(capsys, "export", "--bundle", "runs/p")
    onnx_p = load_predictor("runs/p")
    assert onnx_p.backend == "onnxruntime" and onnx_p.describe()["preprocessing"] == torch_p.describe()["preprocessing"]
    assert (onnx_p.probabilities(x) - torch_p.probabilities(x)).abs().max() < 1e-5
    # a bundle trained again after the export: auto falls back to PyTorch, --backend onnx refuses
    os.replace("runs/p/model.onnx", "stale.onnx")
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--seed", "1", "--out", "runs/q")
    os.replace("stale.onnx", "runs/q/model.onnx")
    assert load_predictor("runs/q").backend == "pytorch"
    with pytest.raises(Exception, match="exported from another version"):
        load_predictor("runs/q", "onnx")


def test_files_and_folders_in_batches_with_bad_files_named_or_skipped(capsys, cifar_dir, tmp_path):
    from PIL import Image

    from imagefit.deploy.inference import image_files, load_predictor, predict_files
    from imagefit.errors import ImagefitError
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/f")
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (40, 30), (50 * i, 20, 200)).save(tmp_path / "imgs" / "sub" / f"{i}.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "imgs" / "notes.txt").write_text("skipped: not an image extension")
    files = image_files([tmp_path / "imgs"])
    assert len(files) == 6 and files == sorted(files)
    p = load_predictor("runs/f")
    with pytest.raises(ImagefitError, match="1 file\\(s\\) could not be read as images: .*broken.png"):
        predict_files(p, files, batch_size=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        got = predict_files(p, files, batch_size=2, skip_bad=True, top_k=2)
    assert [r["file"] for r in got] == [f for f in files if not f.endswith("broken.png")]
    one = predict_files(p, [files[1]], top_k=2)[0]
    assert one == next(r for r in got if r["file"] == files[1])  # batching changes no answer
    with pytest.raises(ImagefitError, match="does not exist"):
        image_files([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImagefitError, match="holds no image files"):
        image_files([tmp_path / "empty"])
