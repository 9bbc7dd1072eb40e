"""CPU inference behind one interface, for `predict` and `serve`: the bundle's PyTorch model, or its ONNX export run
by ONNX Runtime. Both take uint8 images prepared by the bundle's rule (decode, resize, RGB) and give class
probabilities with the same test-time augmentation and logit adjustment as `imagefit evaluate`, so the backends
agree to float rounding (the export's parity check holds them to it).

The exported graph takes float pixels in [0, 255] and contains the normalization (see export.py): flips and
one-pixel shifts commute with a per-channel affine map, so the TTA views are cut from the pixels before the graph.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import ImagefitError

ONNX_NAME = "model.onnx"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """Class probabilities for uint8 N×3×S×S images. Subclasses give `_logits(pixels)` for float pixels."""

    backend = "?"

    def __init__(self, classes: list[str], preprocessing: dict, tta: str, tta_average: str, identity: dict,
                 metrics: dict):
        self.classes, self.preprocessing = classes, preprocessing
        self.tta, self.tta_average, self.identity, self.metrics = tta, tta_average, identity, metrics
        la = preprocessing.get("logit_adjust")
        self.log_prior = (torch.tensor(la["log_prior"]), la["tau"]) if la else None

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        from .evaluate import tta_views
        from .imbalance import adjust
        views = tta_views(images.float(), tta or self.tta)
        if self.tta_average == "probs":
            scores = torch.log(sum(w * self._logits(v).softmax(1) for w, v in views).clamp_min(1e-30))
        else:
            scores = sum(w * self._logits(v) for w, v in views)
        if self.log_prior is not None:
            scores = adjust(scores, *self.log_prior)
        return scores.softmax(1)

    def describe(self) -> dict:
        return {"classes": self.classes, "preprocessing": self.preprocessing, "tta": self.tta,
                "tta_average": self.tta_average, "backend": self.backend, "identity": self.identity,
                "metrics": self.metrics}


class TorchPredictor(Predictor):
    backend = "pytorch"

    def __init__(self, bundle):
        t = bundle.config.train
        super().__init__(bundle.classes, bundle.preprocessing, t.tta, t.tta_average,
                         {"bundle": str(bundle.path), "sha256": file_digest(bundle.path),
                          "model": bundle.config.model.model}, bundle.metrics)
        self.model = bundle.model.eval()
        p = bundle.preprocessing
        self.scale = (1.0 / (255.0 * torch.tensor(p["std"]))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(p["mean"]) / torch.tensor(p["std"])).view(1, -1, 1, 1)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(torch.addcmul(self.shift, pixels, self.scale)).float()


class OnnxPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0, spin: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImagefitError("ONNX Runtime is not installed (pip install onnxruntime); or use --backend pytorch") \
                from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            # For a server: ONNX Runtime's pool threads otherwise busy-wait after each forward pass, on the cores
            # that parse and decode the next requests (1.07-1.20x the requests/s of `fast` at 8 clients on 2 cores,
            # p99 50-59 -> 39-44 ms: benchmarks/probes/serve_stack.py). Batch prediction keeps the default.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise ImagefitError(f"{path} is not a loadable ONNX model ({str(e)[:80]}); export it again with "
                                f"'imagefit export'") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "imagefit" not in props:
            raise ImagefitError(f"{path} has no imagefit metadata; export it with 'imagefit export'")
        meta = json.loads(props["imagefit"])
        super().__init__(meta["classes"], meta["preprocessing"], meta["tta"], meta["tta_average"],
                         {**meta["identity"], "onnx": str(path)}, meta.get("metrics", {}))
        self.input = self.session.get_inputs()[0].name

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: pixels.contiguous().numpy()})[0])


def load_predictor(path: str | Path, backend: str = "auto", threads: int = 0, spin: bool = True) -> Predictor:
    """A bundle (run folder or .safetensors) or an .onnx file. `auto`: ONNX Runtime when the run folder holds an
    export made from this very bundle (same SHA-256), else PyTorch. `spin=False` for a server (see OnnxPredictor)."""
    from .bundle import load_bundle, resolve
    if backend not in ("auto", "onnx", "pytorch"):
        raise ImagefitError(f"--backend must be auto, onnx or pytorch (got {backend!r})")
    path = Path(path)
    if path.suffix == ".onnx":
        if backend == "pytorch":
            raise ImagefitError(f"{path} is an ONNX file; --backend pytorch needs the bundle it was exported from")
        return OnnxPredictor(path, threads, spin)
    bundle_path = resolve(path)
    onnx_path = bundle_path.parent / ONNX_NAME
    if backend != "pytorch" and onnx_path.is_file():
        predictor = OnnxPredictor(onnx_path, threads, spin)
        if predictor.identity.get("sha256") == file_digest(bundle_path):
            return predictor
        if backend == "onnx":
            raise ImagefitError(f"{onnx_path} was exported from another version of {bundle_path}; export it again")
    elif backend == "onnx":
        raise ImagefitError(f"no ONNX export beside {bundle_path}; run 'imagefit export --bundle {path}' first")
    if threads:
        torch.set_num_threads(threads)
    return TorchPredictor(load_bundle(bundle_path))
