"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, schedule and grad-scaler states, the torch RNG states (dropout), the
position (epoch and step within it), the epoch's running sums, the history, the best validation value and the
early-stopping counter. The data order and augmentation need no state: they are functions of (seed, epoch,
step). Loading uses `torch.load(weights_only=True)`, which reads tensors and plain containers and refuses
anything that would run code. Saving is atomic: a kill mid-save leaves the previous checkpoint.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .errors import ImagefitError
from .files import atomic_torch_save


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_torch_save(state, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise ImagefitError(f"no checkpoint at {path}; --resume takes a run folder that 'imagefit train --out' "
                            f"wrote and that holds checkpoints/last.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise ImagefitError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {str(e)[:80]}); "
                            f"restore it from a copy, or start the run again with a new --out") from None


def load_generator_checkpoint(path: Path, classes, size: int, preset: str) -> dict | None:
    """A generator's checkpoint (diffusion or GAN) to resume from, or None when there is none; refused when it was
    trained on other classes, another image size or another network (--preset)."""
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if tuple(state["config"]["classes"]) != tuple(classes) or state["config"]["size"] != size:
        raise ImagefitError(f"{path} was trained on {state['config']['size']} px images of classes "
                            f"{', '.join(state['config']['classes'])}; resume it with the same data")
    if state["config"].get("preset", preset) != preset:
        raise ImagefitError(f"{path} holds a --preset {state['config']['preset']} network, not {preset}; resume it "
                            f"with --preset {state['config']['preset']}, or pass a new --out")
    return state
