"""CPU inference behind one interface, for `predict` and `serve`: the bundle's PyTorch model, or its ONNX export run
by ONNX Runtime. Both take uint8 images prepared by the bundle's rule (decode, resize, RGB) and give class
probabilities with the same test-time augmentation and logit adjustment as `imagefit evaluate`, so the backends
agree to float rounding (the export's parity check holds them to it).

Both backends run the same contract (`preprocessing.Preprocessing`): the PyTorch one normalizes with its `Normalize`
module, and the exported graph contains that very module (see export.py), taking float pixels in [0, 255]; flips
and one-pixel shifts commute with a per-channel affine map, so the TTA views are cut from the pixels before it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..errors import ImagefitError
from ..preprocessing import IMAGE_EXTENSIONS, Preprocessing
from ..runtime import torch_threads

ONNX_NAME = "model.onnx"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """Class probabilities for uint8 N×3×S×S images, by the bundle's preprocessing contract. Subclasses give
    `_logits(pixels)` for float pixels in [0, 255]; the contract makes and combines the test-time views and
    applies the logit adjustment."""

    backend = "?"

    def __init__(self, preprocessing: Preprocessing, identity: dict, metrics: dict):
        self.preprocessing, self.identity, self.metrics = preprocessing, identity, metrics

    @property
    def classes(self) -> list[str]:
        return self.preprocessing.classes

    @property
    def tta(self) -> str:
        return self.preprocessing.tta

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        return self.preprocessing.scores(self._logits, images.float(), tta).softmax(1)

    def describe(self) -> dict:
        p = self.preprocessing
        return {"classes": p.classes, "preprocessing": p.to_dict(), "tta": p.tta, "tta_average": p.tta_average,
                "backend": self.backend, "identity": self.identity, "metrics": self.metrics}


class TorchPredictor(Predictor):
    backend = "pytorch"

    def __init__(self, bundle):
        super().__init__(bundle.preprocessing, {"bundle": str(bundle.path), "sha256": file_digest(bundle.path),
                                                "model": bundle.config.model.model}, bundle.metrics)
        self.model = bundle.model.eval()
        self.normalize = bundle.preprocessing.normalizer(bundle.device)

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels)).float()


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
        try:
            meta = json.loads(props["imagefit"])
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise ImagefitError(f"{path} has damaged imagefit metadata; export it again with 'imagefit export'")
        preprocessing = Preprocessing.from_dict(meta.get("preprocessing"), meta.get("classes"), meta.get("tta"),
                                                meta.get("tta_average"), str(path))
        super().__init__(preprocessing, {**(meta.get("identity") or {}), "onnx": str(path)}, meta.get("metrics", {}))
        self.input = self.session.get_inputs()[0].name

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: pixels.contiguous().numpy()})[0])

    def probabilities(self, images: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        # The tensor work around the session (float conversion, TTA views, softmax) is tiny; on torch's own thread
        # pool its threads spin after each op, on the cores ONNX Runtime's pool then needs: `fast` at batch 16 ran
        # at half the images/s of batch 1 (782 against 1,363/s; 1,533/s with this; benchmarks/RESULTS.md).
        with torch_threads(1):
            return super().probabilities(images, tta)


def load_predictor(path: str | Path, backend: str = "auto", threads: int = 0, spin: bool = True) -> Predictor:
    """A bundle (run folder or .safetensors) or an .onnx file. `auto`: ONNX Runtime when the run folder holds an
    export made from this very bundle (same SHA-256), else PyTorch. `spin=False` for a server (see OnnxPredictor)."""
    from ..bundle import load_bundle, resolve
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


def image_files(paths: list[str | Path]) -> list[str]:
    """Image files, folders expanded to the image files under them (sorted); a one-line error for a path that does
    not exist or a folder without images."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImagefitError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise ImagefitError(f"{p} does not exist; give image files or folders of images")
    return files


def top_classes(probs: torch.Tensor, classes: list[str], k: int) -> list[list[dict]]:
    """The `k` most probable classes of each row, as [{"class", "probability"}] (probabilities to 6 places)."""
    top = probs.topk(min(k, len(classes)), dim=1)
    return [[{"class": classes[c], "probability": round(v, 6)} for v, c in zip(values, indices)]
            for values, indices in zip(top.values.tolist(), top.indices.tolist())]


def predict_files(predictor: Predictor, files: list[str], *, top_k: int = 3, tta: str | None = None,
                  batch_size: int = 256, skip_bad: bool = False, progress: bool = False) -> list[dict]:
    """[{"file", "top"}] for image files, decoded by the predictor's contract in batches of `batch_size`
    (unreadable files: an error naming them, or skipped with `skip_bad`)."""
    from ..data.sources import decode_files
    p = predictor.preprocessing
    chunks = range(0, len(files), batch_size)
    if progress and len(chunks) > 1:
        import sys

        from rich.console import Console
        from rich.progress import track
        chunks = track(chunks, description="predicting", console=Console(file=sys.stderr), transient=True)
    results = []
    for start in chunks:
        names = files[start:start + batch_size]
        images, keep = decode_files(names, p.size, p.resize, skip_bad, without="predict the others")
        if keep:
            tops = top_classes(predictor.probabilities(images, tta), predictor.classes, top_k)
            results += [{"file": names[i], "top": top} for i, top in zip(keep, tops)]
    return results
