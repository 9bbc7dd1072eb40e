"""A bundle as an MLflow pyfunc model: `imagefit export --format mlflow` writes a model folder that
`mlflow.pyfunc.load_model`, `mlflow models serve` and the model registry take, and that answers what
`imagefit predict` answers.

The model folder holds the bundle itself as an artifact (so the preprocessing contract travels with it) and
`ImagefitPyfunc`, which loads it as `imagefit.load` does (the PyTorch predictor; deploy/ stays below the API). Its
input is a table with one image per row, in a column `image`: the image's bytes (PNG, JPEG, …), its bytes
base64-encoded (what a JSON request to `mlflow models serve` carries), or a path. Its output has one row per image:
`class1`, `probability1`, … `classK`, `probabilityK` (best first, K = the `top_k` parameter, 3 by default). The
environment needs imagefit itself (this version), which the model's requirements name.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from .. import __version__
from ..errors import ImagefitError

FOLDER = "mlflow-model"


class ImagefitPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from .inference import load_predictor
        self.predictor = load_predictor(context.artifacts["bundle"], backend="pytorch")

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        column = model_input["image"] if "image" in model_input else model_input.iloc[:, 0]
        images = [_image(v, i) for i, v in enumerate(column)]
        k = int((params or {}).get("top_k", 3))
        if not images:
            raise ImagefitError("no images given: send a table with an 'image' column, one image per row")
        if k < 1:
            raise ImagefitError(f"top_k must be at least 1 (got {k})")
        from .inference import top_classes
        p = self.predictor
        rows = []
        for top in top_classes(p.probabilities(p.preprocessing.batch(images)), p.classes, k):
            row = {}
            for j, t in enumerate(top, start=1):
                row[f"class{j}"], row[f"probability{j}"] = t["class"], t["probability"]
            rows.append(row)
        return pd.DataFrame(rows)


def _image(value, i: int):
    """bytes, base64 text of bytes, or a path."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        if Path(value).is_file():
            return value
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise ImagefitError(f"row {i}: the 'image' column holds {type(value).__name__} {str(value)[:40]!r}; give the "
                        f"image's bytes, its bytes in base64, or a path to the file")


def save(bundle_file: Path, out: Path) -> Path:
    """Write the pyfunc model folder `out` (written beside it first: an earlier folder is only replaced once the new
    one is whole)."""
    import os
    import warnings

    import numpy as np
    from mlflow.models import infer_signature
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    shutil.rmtree(tmp)  # save_model wants a folder that does not exist
    try:
        example = pd.DataFrame({"image": [base64.b64encode(b"\x89PNG...").decode()]})
        signature = infer_signature(example, pd.DataFrame({"class1": ["a"], "probability1": [np.float64(0.5)]}),
                                    params={"top_k": 3})
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # MLflow's advice on input examples
            mlflow.pyfunc.save_model(str(tmp), python_model=ImagefitPyfunc(), artifacts={"bundle": str(bundle_file)},
                                     signature=signature, pip_requirements=[f"imagefit=={__version__}"])
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def log_to_run(bundle_file: Path, uri: str, run_id: str, artifact_path: str = "model") -> str:
    """The bundle as a pyfunc model inside the MLflow run that trained it, so `mlflow.pyfunc.load_model(
    "runs:/RUN_ID/model")`, `mlflow models serve -m runs:/RUN_ID/model` and `mlflow.register_model` take it
    straight from the run; returns that address."""
    from mlflow import MlflowClient
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(Path(bundle_file), Path(tmp) / artifact_path)
        MlflowClient(uri).log_artifacts(run_id, str(folder), artifact_path)
    return f"runs:/{run_id}/{artifact_path}"
