"""Export a bundle to ONNX or TorchScript for serving without imagefit's training code.

The exported graph takes float32 pixels N×3×S×S in [0, 255] (RGB, decoded and resized by the bundle's rule, which
the metadata states) and returns logits; the normalization is inside the graph, so a consumer cannot forget it.
The batch dimension is dynamic. The metadata (ONNX `metadata_props` / a TorchScript extra file `imagefit.json`)
carries the class order, the preprocessing, the test-time augmentation and logit adjustment training chose, the
bundle's SHA-256 and its metrics. Every export is checked on real images: the largest |logit difference| from the
PyTorch bundle, at the parity batch and at batch 1, must be at most 1e-4 times the largest |logit| (at least 1e-4),
or nothing is written and the export fails. `--quantize int8` writes model.int8.onnx: ONNX Runtime's static int8
quantization with activation ranges from training images; it is kept only when it names the bundle's class on 97%
of the parity images.
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ImagefitError
from ..files import atomic_path, check_writable
from .inference import ONNX_NAME, TorchPredictor

FORMATS = {"onnx": ONNX_NAME, "torchscript": "model.torchscript.pt", "mlflow": "mlflow-model"}
INT8_NAME = "model.int8.onnx"
TOLERANCE = 1e-4
INT8_AGREEMENT = 0.97  # an int8 export must name the float bundle's class on at least this share of the images
CALIBRATION_IMAGES = 512


class Deployable(nn.Module):
    """Pixels in [0, 255] → the contract's `Normalize` → the bundle's network → logits: what the file holds."""

    def __init__(self, bundle):
        super().__init__()
        self.normalize, self.model = bundle.preprocessing.normalizer(), bundle.model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))


def _parity_images(bundle, data: str | None, n: int) -> torch.Tensor:
    from ..data.sources import FileSet
    from ..evaluation.evaluate import split_images
    try:
        images = split_images(bundle, data, "test")
    except ImagefitError as e:
        raise ImagefitError(f"the parity check needs real images and found none ({e}); pass --data DIR") from None
    if isinstance(images, FileSet):
        return torch.stack([images.read(i) for i in range(min(n, len(images)))]).float()
    return images.images[:n].float()


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, meta: str) -> None:
    import onnx
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter narrates on stdout
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["pixels"],
                          output_names=["logits"], dynamic_shapes={"pixels": {0: batch}}, verbose=False)
    proto = onnx.load(str(path))
    proto.metadata_props.add(key="imagefit", value=meta)
    onnx.save(proto, str(path))


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path, meta: str) -> None:
    # torch.jit is deprecated in favour of torch.export (FutureWarning) but still what TorchScript users load
    with warnings.catch_warnings(action="ignore", category=FutureWarning):
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path), _extra_files={"imagefit.json": meta})


def _run(fmt: str, path: Path, pixels: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"pixels": pixels.numpy()})[0])
    with warnings.catch_warnings(action="ignore", category=FutureWarning):
        return torch.jit.load(str(path))(pixels).float()


def _is_export(path: Path) -> bool:
    """Whether `path` is a file an imagefit export wrote (ONNX or TorchScript with imagefit's metadata)."""
    import zipfile
    try:
        if zipfile.is_zipfile(path):
            return any(n.endswith("extra/imagefit.json") for n in zipfile.ZipFile(path).namelist())
        import onnx
        return any(p.key == "imagefit" for p in onnx.load(str(path), load_external_data=False).metadata_props)
    except Exception:  # unreadable as either: not ours
        return False


def _is_mlflow_export(path: Path) -> bool:
    """An MLflow model folder that `export --format mlflow` wrote: its artifact is an imagefit bundle."""
    from ..bundle import read_metadata
    try:
        return (path / "MLmodel").is_file() and bool(read_metadata(path / "artifacts" / "bundle.safetensors"))
    except ImagefitError:
        return False


def check_target(out: Path, bundle: Path, force: bool, fmt: str = "onnx") -> None:
    """Refuse an --out that would replace what a user has: never a bundle or a checkpoint, and no other existing
    file unless it is an earlier export (or --force says so)."""
    own = out.name in ("bundle.safetensors", "last.pt", "best.safetensors") or out.suffix == ".safetensors" \
        or "checkpoints" in out.parts or "snapshots" in out.parts or \
        (out.exists() and out.resolve() == bundle.resolve())
    if own:
        raise ImagefitError(f"--out {out} is a bundle or checkpoint, which an export never replaces; export to "
                            f"another file (default: {bundle.parent / FORMATS['onnx']})")
    if fmt == "mlflow":  # a folder
        if out.exists() and not out.is_dir():
            raise ImagefitError(f"--out {out} is a file; an MLflow model is a folder: give a new folder's path")
        if out.is_dir() and any(out.iterdir()) and not force and not _is_mlflow_export(out):
            raise ImagefitError(f"--out {out} is a folder that is not an imagefit MLflow export; choose another "
                                f"--out, or pass --force to replace it")
    elif out.is_dir():
        raise ImagefitError(f"--out {out} is a folder; give the file to write, e.g. {out / FORMATS['onnx']}")
    if fmt != "mlflow" and out.exists() and not force and not _is_export(out):
        raise ImagefitError(f"--out {out} exists and is not an imagefit export; choose another --out, or pass "
                            f"--force to replace it")
    check_writable(out.parent)


def _mlflow(bundle_file: Path, out: Path, reference: TorchPredictor, pixels: torch.Tensor) -> dict:
    """The pyfunc model folder, checked like the other exports: its answers for the parity images (sent as PNG bytes,
    every class) against the bundle's own probabilities."""
    import io

    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    from .mlflow_model import save
    k = len(reference.classes)
    blobs = []
    for image in pixels.to(torch.uint8):
        buf = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    save(bundle_file, out)
    answer = mlflow.pyfunc.load_model(str(out)).predict(pd.DataFrame({"image": blobs}), params={"top_k": k})
    with torch.inference_mode():
        expected = reference.probabilities(pixels)
    worst = 0.0
    for row, probs in zip(answer.to_dict("records"), expected):
        got = {row[f"class{j}"]: row[f"probability{j}"] for j in range(1, k + 1)}
        worst = max(worst, max(abs(got[c] - p) for c, p in zip(reference.classes, probs.tolist())))
    if not worst <= TOLERANCE:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        raise ImagefitError(f"parity check failed: the MLflow model's probabilities differ from the bundle's by up to "
                            f"{worst:.2e} (> {TOLERANCE:g}) on {len(pixels)} real images; the folder was removed")
    return {"export": str(out), "format": "mlflow", "parity_max_abs_diff": worst, "parity_images": len(pixels),
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "sha256": reference.identity["sha256"]}


def _calibration_pixels(bundle, data: str | None, n: int) -> torch.Tensor:
    """Up to `n` training images (a seeded, class-stratified choice), as the export takes them: the ranges int8
    quantization fixes come from images the model trained on, never from the test split the parity check uses."""
    from ..data.sources import FileSet, load_splits
    from ..seeds import Stream, choice_generator
    cfg = bundle.config.data
    if data:
        cfg.data, cfg.test_data = data, None
    train = load_splits(cfg, bundle.config.train.seed).train
    order = torch.randperm(len(train), generator=choice_generator(bundle.config.train.seed, Stream.QUANTIZE))[:n]
    if isinstance(train, FileSet):
        return torch.stack([train.read(int(i)) for i in order]).float()
    return train.images[order].float()


def _quantize_int8(float_onnx: Path, out: Path, calibration: torch.Tensor) -> None:
    """ONNX Runtime's static quantization (QDQ, int8 weights per channel, uint8 activations: the U8S8 form its x86
    kernels run with VNNI), activation ranges from `calibration` (min-max over the batches)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    # ONNX Runtime's own preparation first (shape inference, graph optimization: BatchNorm folded into the convs),
    # so ranges are taken, and int8 runs, on the graph its kernels will execute
    prepared = float_onnx.with_name("prepared.onnx")
    # (its symbolic shape inference fails on some exported graphs, e.g. fastnet's reshapes; ONNX's own suffices)
    quant_pre_process(str(float_onnx), str(prepared), skip_symbolic_shape=True)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.split(64))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch.contiguous().numpy()}

    quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _int8(bundle, bundle_file: Path, out: Path, data: str | None, pixels: torch.Tensor, reference: TorchPredictor,
          module: nn.Module, meta: dict) -> dict:
    """The float ONNX graph quantized to int8, kept only when it names the bundle's class on at least 97% of the
    parity images (int8 cannot hold logits to 1e-4: agreement of the answers is the check)."""
    import tempfile

    import onnx
    calibration = _calibration_pixels(bundle, data, CALIBRATION_IMAGES)
    meta = {**meta, "quantized": "int8 (static, QDQ, per-channel weights)"}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False), torch.no_grad(), atomic_path(out) as dst:
        float_onnx = Path(tmp) / "float.onnx"
        _onnx(module, pixels[:2].clone(), float_onnx, json.dumps(meta))
        try:
            _quantize_int8(float_onnx, dst, calibration)
        except Exception as e:  # the quantizer's own failure, on a graph it cannot handle: one line, nothing kept
            raise ImagefitError(f"ONNX Runtime's int8 quantizer failed on this model ({type(e).__name__}: "
                                f"{str(e)[:100]}); nothing was written: export in float (no --quantize)") from None
        proto = onnx.load(str(dst))
        if not any(p.key == "imagefit" for p in proto.metadata_props):
            proto.metadata_props.add(key="imagefit", value=json.dumps(meta))
            onnx.save(proto, str(dst))
        with torch.inference_mode():
            expected = reference._logits(pixels)
        got = _run("onnx", dst, pixels.contiguous())
        agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
        drift = (got.softmax(1) - expected.softmax(1)).abs().max().item()
        if agreement < INT8_AGREEMENT:
            raise ImagefitError(f"int8 check failed: the quantized model names the bundle's class on only "
                                f"{100 * agreement:.1f}% of {len(pixels)} real images (needs "
                                f"{100 * INT8_AGREEMENT:.0f}%); nothing was written: export in float (no --quantize)")
    return {"export": str(out), "format": "onnx", "quantize": "int8", "agreement": agreement,
            "max_probability_diff": drift, "parity_images": len(pixels), "calibration_images": len(calibration),
            "bytes": out.stat().st_size, "sha256": reference.identity["sha256"]}


def export(bundle_path: str | Path, fmt: str, out: str | Path | None = None, data: str | None = None,
           parity_images: int = 64, force: bool = False, quantize: str = "none") -> dict:
    from ..bundle import load_bundle, resolve
    if fmt not in FORMATS:
        raise ImagefitError(f"--format must be {' or '.join(FORMATS)} (got {fmt!r})")
    if parity_images < 1:
        raise ImagefitError(f"--parity-images must be 1 or more (got {parity_images})")
    if quantize not in ("none", "int8"):
        raise ImagefitError(f"--quantize must be none or int8 (got {quantize!r})")
    if quantize != "none" and fmt != "onnx":
        raise ImagefitError(f"--quantize int8 is for --format onnx (ONNX Runtime's quantizer), not {fmt}")
    bundle_file = resolve(bundle_path)
    default_name = INT8_NAME if quantize == "int8" else FORMATS[fmt]
    out = Path(out) if out else bundle_file.parent / default_name
    check_target(out, bundle_file, force, fmt)  # before the bundle and the parity images are read
    bundle = load_bundle(bundle_file)
    reference = TorchPredictor(bundle)
    pixels = _parity_images(bundle, data, parity_images)
    if fmt == "mlflow":
        return _mlflow(bundle_file, out, reference, pixels)
    module = Deployable(bundle).eval()
    meta = {"format": "imagefit-export/1", **reference.describe(),
            "input": {"name": "pixels", "dtype": "float32", "layout": "NCHW, RGB", "range": [0, 255]}}
    if quantize == "int8":
        return _int8(bundle, bundle_file, out, data, pixels, reference, module, meta)
    # Written beside --out and checked there: only an export that passes replaces the file (an earlier export stays
    # when this one fails).
    with torch.inference_mode(False), torch.no_grad(), atomic_path(out) as tmp:
        (_onnx if fmt == "onnx" else _torchscript)(module, pixels[:2].clone(), tmp, json.dumps(meta))
        with torch.inference_mode():
            expected = reference._logits(pixels)
        diffs = []
        for batch in (pixels, pixels[:1]):  # the parity batch, then batch 1: the batch size really is dynamic
            got = _run(fmt, tmp, batch.contiguous())
            diffs.append((got - expected[:len(batch)]).abs().max().item())
        worst = max(diffs)
        # float32 rounding grows with the logits: a model whose logits reach 1,000 differs by ~1e-3 in the last
        # digits of a correct export, so the bound scales with the largest logit (and is 1e-4 below 1).
        scale = max(1.0, expected.abs().max().item())
        if not worst <= TOLERANCE * scale:
            raise ImagefitError(f"parity check failed: the {fmt} export's logits differ from the bundle's by up to "
                                f"{worst:.2e} (> {TOLERANCE:g} × {scale:.3g}, the largest logit) on {len(pixels)} "
                                f"real images; nothing was written")
    return {"export": str(out), "format": fmt, "parity_max_abs_diff": worst, "parity_images": len(pixels),
            "bytes": out.stat().st_size, "sha256": reference.identity["sha256"]}
