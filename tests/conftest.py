"""Fixtures: tiny datasets the tests write themselves (tests never read ../shared)."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def class_images(n_per_class: int, n_classes: int, size: int = 32, seed: int = 0):
    """Learnable images: each class a colour and stripe direction, plus noise. Returns N×H×W×3 uint8, labels."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(n_classes):
        base = np.array([(c * 73) % 256, (c * 151) % 256, (c * 29 + 90) % 256], dtype=np.float32)
        grid = np.arange(size, dtype=np.float32)
        stripes = (np.sin(grid / (2 + c % 3))[:, None] if c % 2 else np.sin(grid / (2 + c % 3))[None, :])
        for _ in range(n_per_class):
            img = base + 60 * stripes[..., None] + rng.normal(0, 25, (size, size, 3))
            xs.append(np.clip(img, 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def write_cifar(root: Path, n_train_per_class: int = 12, n_test_per_class: int = 4) -> Path:
    """A CIFAR-10 folder in the official python-version layout, written the way the official files are."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = class_images(n_train_per_class, 10, seed=1)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    for b, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        batch = {b"batch_label": b"training", b"labels": y[part].tolist(),
                 b"data": x[part].transpose(0, 3, 1, 2).reshape(len(part), 3072), b"filenames": []}
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(batch, protocol=2))
    xt, yt = class_images(n_test_per_class, 10, seed=2)
    test = {b"labels": yt.tolist(), b"data": xt.transpose(0, 3, 1, 2).reshape(len(yt), 3072)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_cifar(tmp_path / "data")


def write_imagefolder(root: Path, classes=("cat", "dog", "frog"), n_train: int = 10, n_test: int = 4) -> Path:
    """train/ and test/ trees with JPEG and PNG files of mixed sizes, some grayscale."""
    x, y = class_images(n_train + n_test, len(classes), size=40, seed=3)
    for i, (img, label) in enumerate(zip(x, y)):
        split = "train" if i % (n_train + n_test) < n_train else "test"
        d = root / split / classes[label]
        d.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        if i % 5 == 0:
            im = im.resize((48, 36))  # not square: centre-cropped
        if i % 7 == 0:
            im.convert("L").save(d / f"{i}.png")
        else:
            im.save(d / f"{i}.jpg", quality=90)
    return root


@pytest.fixture
def folder_dir(tmp_path) -> Path:
    return write_imagefolder(tmp_path / "tree")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache and working folder, and no stray IMAGEFIT_DATA or MLflow URI."""
    monkeypatch.setenv("IMAGEFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IMAGEFIT_DATA", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)  # small tensors: threads only add noise and overhead


# A small, fast model for every training test.
TINY = ["--model", "resnet", "--blocks", "1,1", "--widths", "8,16", "--batch-size", "16", "--epochs", "2",
        "--tracking-uri", "none"]


def tiny_bundle(root: Path, export: bool = False) -> tuple[Path, Path]:
    """(data, run): a CIFAR folder under `root` and a tiny bundle trained on it (with its ONNX export), the cache
    kept under `root` (for module-scoped fixtures, which the per-test isolation does not reach)."""
    from imagefit.cli import main
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEFIT_CACHE", str(root / "cache"))
        data = write_cifar(root / "data")
        assert main(["train", "--data", str(data), "--model", "resnet", "--blocks", "1", "--widths", "8",
                     "--epochs", "2", "--batch-size", "16", "--tracking-uri", "none", "--out", str(root / "run"),
                     "--json"]) == 0
        if export:
            assert main(["export", "--bundle", str(root / "run"), "--json"]) == 0
    return data, root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(bundle: Path, *options: str, env: dict | None = None):
    """`imagefit serve --bundle BUNDLE OPTIONS` on a free loopback port, in its own process; yields (url, process)
    once /health answers, and stops the server after."""
    import httpx
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "imagefit", "serve", "--bundle", str(bundle), "--port",
                               str(port), *options], env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            if server.poll() is not None:
                raise RuntimeError(server.stdout.read())
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)
