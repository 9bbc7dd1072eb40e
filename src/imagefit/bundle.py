"""The bundle: everything downstream needs, in one file that loads without executing code.

`bundle.safetensors` holds the weights as safetensors and, in the same file's JSON header, the class order, the
preprocessing (size, resize rule, mean, std, logit adjustment), the model and full training config (whose `tta`
and `tta_average` complete the preprocessing contract), and the final metrics. `load_bundle` gives the contract
back as one `Preprocessing`; evaluate, predict, serve and export read only that, so they can never see other
preprocessing or class order than training used. safetensors parses a header and raw arrays: a bundle someone
sent you cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import Config, ModelConfig
from .errors import ImagefitError
from .files import atomic_path
from .models import create_model
from .preprocessing import Preprocessing

FORMAT = "imagefit-bundle/1"
FILENAME = "bundle.safetensors"


@dataclass
class Bundle:
    model: nn.Module
    preprocessing: Preprocessing  # size, resize, mean, std, class order, TTA, logit adjustment
    config: Config
    metrics: dict
    path: Path

    @property
    def classes(self) -> list[str]:
        return self.preprocessing.classes

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def save_bundle(path: str | Path, model: nn.Module, preprocessing: Preprocessing, config: Config,
                metrics: dict) -> Path:
    path = Path(path)
    meta = {"format": FORMAT, "imagefit_version": __version__, "classes": preprocessing.classes,
            "preprocessing": preprocessing.to_dict(), "config": config.to_dict(), "metrics": metrics}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata={"imagefit": json.dumps(meta)})
    return path


def resolve(path: str | Path) -> Path:
    """A run folder or a bundle file → the bundle file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise ImagefitError(f"no bundle at {path}; pass the run folder that 'imagefit train --out' wrote, "
                            f"or its {FILENAME}")
    return path


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["imagefit"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ImagefitError(f"{path} is damaged or not an imagefit bundle ({type(e).__name__}); "
                            f"copy it again or re-run 'imagefit train'") from None
    if meta.get("format") != FORMAT:
        raise ImagefitError(f"{path} is a bundle of format {meta.get('format')!r}, not {FORMAT}; "
                            f"re-export it with this imagefit version")
    return meta


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    path = resolve(path)
    meta = read_metadata(path)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ImagefitError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); "
                            f"copy it again or re-run 'imagefit train'") from None
    missing = [k for k in ("classes", "preprocessing", "config") if not meta.get(k)]
    if missing:
        raise ImagefitError(f"{path} lacks its {', '.join(missing)}; it was edited or damaged: re-run 'imagefit "
                            f"train'")
    config = Config.from_dict(meta["config"], where=str(path))
    if config.train.tta == "flip-translate":  # the name flip+crops had before 2026-11-24
        config.train.tta = "flip+crops"
    config.validate()
    t = config.train
    # Every field checked now, so that a bundle that loads also predicts (a server never blames an image for it).
    preprocessing = Preprocessing.from_dict(meta["preprocessing"], meta["classes"], t.tta, t.tta_average, str(path))
    if preprocessing.size != config.data.size:
        raise ImagefitError(f"{path}: preprocessing size {preprocessing.size} is not the {config.data.size} px the "
                            f"model was trained at; the file was edited: re-run 'imagefit train'")
    broken = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ImagefitError(f"{path} has non-finite weights in {len(broken)} tensor(s) (e.g. {broken[0]}): its "
                            f"training diverged; train again with a lower --lr")
    # The architecture only: the weights come from the file, not from where training started.
    arch = {**meta["config"]["model"], "pretrained": "none", "init_from": None}
    model = create_model(len(meta["classes"]), ModelConfig(**arch))
    load_weights(model, weights, str(path))
    model.to(device).eval()
    return Bundle(model, preprocessing, config, meta.get("metrics", {}), path)


def load_weights(model: nn.Module, weights: dict, where: str) -> None:
    """Strict load with a one-line error naming the layers that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes))
                 if keys]
        raise ImagefitError(f"weights in {where} do not fit the model ({'; '.join(parts)}); "
                            f"use the model config they were trained with")
    model.load_state_dict(weights)
