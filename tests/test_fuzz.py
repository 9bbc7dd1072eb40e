"""Fuzzing the three readers of untrusted files (a recipe, a bundle's header, a CIFAR batch): whatever the bytes, the
answer is an ImagefitError with one line, never another exception. Bounded (hypothesis, fixed example counts)."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from imagefit.errors import ImagefitError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=4), max_leaves=12)


def only_imagefit_errors(call) -> None:
    try:
        call()
    except ImagefitError as e:
        assert "\n" not in str(e) and len(str(e)) <= 600
    except RecursionError:
        raise AssertionError("recursed without limit")


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_recipe_loader(blob):
    from imagefit.api import make_config
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_bytes(blob)
        only_imagefit_errors(lambda: make_config(str(path)))


@SETTINGS
@given(st.sampled_from(["classes", "preprocessing", "config", "format", "preprocessing.size", "preprocessing.mean",
                        "preprocessing.std", "preprocessing.resize", "preprocessing.logit_adjust", "config.model",
                        "config.data", "config.train.tta"]), JSON)
def test_bundle_header(field, value):
    from imagefit.bundle import FORMAT, load_bundle
    from imagefit.config import Config
    from imagefit.models import create_model
    cfg = Config.from_dict({"model": {"model": "resnet", "blocks": [1], "widths": [8]}}).validate()
    meta = {"format": FORMAT, "classes": ["a", "b"], "config": cfg.to_dict(), "metrics": {},
            "preprocessing": {"size": 32, "resize": "crop", "mean": [0.5] * 3, "std": [0.2] * 3}}
    *keys, last = field.split(".")
    target = meta
    for k in keys:
        target = target[k]
    target[last] = value
    weights = {k: v.contiguous() for k, v in create_model(2, cfg.model).state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bundle.safetensors"
        save_file(weights, str(path), metadata={"imagefit": json.dumps(meta)})
        only_imagefit_errors(lambda: load_bundle(path))


VALID = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3], b"batch_label": b"x"},
                     protocol=2)


@SETTINGS
@given(st.binary(max_size=400) | st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)),
                                          min_size=1, max_size=8).map(
    lambda edits: bytes(b if i not in dict(edits) else dict(edits)[i] for i, b in enumerate(VALID))))
def test_cifar_batch_reader(blob):
    from imagefit.data.sources import _check_batch, _read_batch
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data_batch_1"
        path.write_bytes(blob)
        only_imagefit_errors(lambda: _check_batch(path, _read_batch(path)))


def test_the_fuzzed_readers_accept_what_they_should():
    """The harness itself: valid inputs pass through (a fuzz test that refused everything would prove nothing)."""
    from imagefit.data.sources import _check_batch, _read_batch
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data_batch_1"
        path.write_bytes(VALID)
        _check_batch(path, _read_batch(path))
