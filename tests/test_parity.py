"""The preprocessing contract, end to end: the same test images give the same probabilities (within 1e-5, float32)
from (a) the run's own final test, (b) `imagefit evaluate`, (c) `imagefit predict`, (d) `imagefit.load(...)`,
(e) the server's /predict (a real uvicorn process) and (f) the ONNX export under ONNX Runtime. Repeated with TTA
and logit adjustment on; for an ImageFolder of 48×40 RGB and grayscale images trained at 32 px with each resize
rule; and for an --init-from bundle whose statistics differ from its dataset's."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import imagefit
from imagefit.cli import main
from imagefit.training.train import RunOptions, Trainer

from .conftest import class_images, serving, write_cifar

TOLERANCE = 1e-5
TINY = dict(model="resnet", blocks="1,1", widths="8,16", batch_size=16, epochs=1)


def train_run(out: Path, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Train through the library; (a): the run's own final test probabilities, and its labels."""
    trainer = Trainer(imagefit.make_config(**{**TINY, **options}), RunOptions(out=out, tracking_uri="none"))
    trainer.fit()
    scores, labels = trainer.test_scores()
    return scores.softmax(1), labels


def cli_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def as_matrix(predictions: list[dict], files: list[str], classes: list[str]) -> torch.Tensor:
    """Top-k answers (k = every class) → N×K probabilities in `files` order and class order."""
    by_file = {Path(p["file"]).name: p["top"] for p in predictions}
    return torch.tensor([[next(t["probability"] for t in by_file[Path(f).name] if t["class"] == c)
                          for c in classes] for f in files], dtype=torch.float64)


def served_probabilities(run: Path, files: list[str], classes: list[str]) -> torch.Tensor:
    """(e): /predict of `imagefit serve` (PyTorch backend) in its own process, the files in one request."""
    with serving(run, "--backend", "pytorch", "--max-files", "64", "--threads", "1") as (url, _):
        uploads = [("files", (Path(f).name, Path(f).read_bytes())) for f in files]
        r = httpx.post(url + "/predict", params={"top_k": len(classes)}, files=uploads, timeout=60)
    assert r.status_code == 200, r.text
    return as_matrix(r.json()["predictions"], files, classes)


def check_parity(capsys, run: Path, expected: torch.Tensor, files: list[str], images: list) -> None:
    """(b)…(f) against (a) for the test images `files` (in the run's test order) and the same images as `images`
    (arrays or PIL images) for the Python API."""
    model = imagefit.load(run, backend="pytorch")
    classes, k = model.classes, len(model.classes)
    expected = expected.double()

    from imagefit.bundle import load_bundle
    from imagefit.evaluation.evaluate import bundle_scores, split_images
    bundle = load_bundle(run)
    evaluated, _ = bundle_scores(bundle, split_images(bundle, None, "test"), batch_size=256,
                                 tta=bundle.preprocessing.tta, average=bundle.preprocessing.tta_average)
    m = cli_json(capsys, "evaluate", "--bundle", str(run), "--tracking-uri", "none")

    predicted = cli_json(capsys, "predict", "--bundle", str(run), "--backend", "pytorch", "--top-k", str(k), *files)
    from imagefit.deploy.export import export
    export(run, "onnx")
    onnx = imagefit.load(run, backend="onnx")
    assert onnx.backend == "onnxruntime"
    sources = {
        "(b) imagefit evaluate": evaluated.softmax(1),
        "(c) imagefit predict": as_matrix(predicted["predictions"], files, classes),
        "(d) imagefit.load().probabilities, arrays and PIL images": model.probabilities(images),
        "(d) imagefit.load().predict, paths": as_matrix([{"file": f, "top": t} for f, t in
                                                         zip(files, model.predict(files, top_k=k))], files, classes),
        "(e) the server's /predict": served_probabilities(run, files, classes),
        "(f) the ONNX export under ONNX Runtime": onnx.probabilities(files),
    }
    for name, probs in sources.items():
        gap = (probs.double() - expected).abs().max().item()
        assert gap <= TOLERANCE, f"{name} differs from the run's own test by {gap:.2e}"
    # `imagefit evaluate`'s loss is the cross-entropy of those same probabilities
    labels = split_images(bundle, None, "test").labels
    assert m["loss"] == pytest.approx(-expected[torch.arange(len(labels)), labels].log().mean().item(), abs=1e-5)


def test_parity_cifar_with_tta_and_logit_adjustment(capsys, tmp_path):
    data = write_cifar(tmp_path / "data")
    # imbalanced, or the logit adjustment would subtract the same number from every class
    expected, labels = train_run(tmp_path / "run", data=str(data), tta="flip+crops", logit_adjust=0.5,
                                 imbalance="exp:3")
    bundle_pre = imagefit.load(tmp_path / "run").preprocessing
    assert bundle_pre.tta == "flip+crops" and bundle_pre.logit_adjust["tau"] == 0.5
    assert np.ptp(bundle_pre.logit_adjust["log_prior"]) > 0.5
    # the test images as files (PNG: lossless, so every path decodes the pixels the run tested on)
    with open(data / "cifar-10-batches-py" / "test_batch", "rb") as f:
        rows = pickle.load(f, encoding="bytes")[b"data"]
    arrays = [np.asarray(r, dtype=np.uint8).reshape(3, 32, 32).transpose(1, 2, 0).copy() for r in rows]
    (tmp_path / "files").mkdir()
    files = []
    for i, a in enumerate(arrays):
        files.append(str(tmp_path / "files" / f"{i:03d}.png"))
        Image.fromarray(a).save(files[-1])
    check_parity(capsys, tmp_path / "run", expected, files, arrays)


def write_mixed_tree(root: Path) -> Path:
    """train/ and test/ of 48×40 images, every third one grayscale (PNG, lossless)."""
    x, y = class_images(40, 3, size=48, seed=4)
    for i, (img, label) in enumerate(zip(x, y)):
        split = "test" if i % 10 >= 7 else "train"
        d = root / split / ("cat", "dog", "frog")[label]
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img).resize((48, 40))
        (im.convert("L") if i % 3 == 0 else im).save(d / f"{i:03d}.png")
    return root


def _tree_test_files(tree: Path) -> list[str]:
    return [str(p) for c in sorted(d.name for d in (tree / "test").iterdir()) for p in sorted((tree / "test" / c).iterdir())]


@pytest.mark.parametrize("resize", ["squish", "crop"])
def test_parity_imagefolder_of_48x40_rgb_and_grayscale_at_32_px(capsys, tmp_path, resize):
    tree = write_mixed_tree(tmp_path / "tree")
    expected, _ = train_run(tmp_path / "run", data=str(tree), size=32, resize=resize, tta="flip", tta_average="probs",
                            val_fraction=0.4, **(dict(logit_adjust=0.5, imbalance="step:2") if resize == "squish" else {}))
    files = _tree_test_files(tree)
    assert imagefit.load(tmp_path / "run").preprocessing.temperature != 1.0  # fitted on validation: in the parity
    assert {Image.open(f).mode for f in files} == {"L", "RGB"} and Image.open(files[0]).size == (48, 40)
    images = [Image.open(f) for f in files]  # PIL images, grayscale ones included
    check_parity(capsys, tmp_path / "run", expected, files, images)


def test_parity_of_an_init_from_bundle_whose_statistics_differ_from_its_data(capsys, tmp_path):
    data = write_cifar(tmp_path / "data")
    train_run(tmp_path / "source", data=str(data))
    tree = write_mixed_tree(tmp_path / "tree")
    expected, _ = train_run(tmp_path / "run", data=str(tree), init_from=str(tmp_path / "source"), tta="crops")
    source, run = imagefit.load(tmp_path / "source"), imagefit.load(tmp_path / "run")
    from imagefit.config import DataConfig
    from imagefit.data.sources import load_splits
    own = load_splits(DataConfig(data=str(tree)), 0)
    assert run.preprocessing.mean == source.preprocessing.mean != own.mean  # the source's inputs, not the data's
    files = _tree_test_files(tree)
    check_parity(capsys, tmp_path / "run", expected, files, [np.asarray(Image.open(f).convert("RGB")) for f in files])
