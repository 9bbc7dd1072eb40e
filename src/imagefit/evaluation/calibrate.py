"""Temperature scaling for a bundle made before training calibrated by itself (`imagefit calibrate`).

A run with a validation split fits its temperature at the end of training (train.Trainer._calibrate). A bundle
trained on all of train (the `fast` recipe) has no validation images; its temperature is then fitted on the split
the user names. Fitted on the test split, the error measured on that same split would flatter it, so the figure
reported is cross-fitted: the temperature fitted on one half of the images, the error measured on the other half,
and the other way round; the bundle keeps the temperature fitted on all of them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..errors import ImagefitError
from ..files import check_writable
from .metrics import calibration, fit_temperature, scale_temperature


def calibrate_bundle(path: str | Path, data: str | None = None, split: str = "val", batch_size: int = 256) -> dict:
    """Fit the bundle's temperature on `split` and write the bundle back; the original is kept beside it as
    NAME.uncalibrated.safetensors (refused when that file exists: nothing is overwritten)."""
    from ..bundle import load_bundle, save_bundle
    from .evaluate import bundle_scores, split_images
    if split not in ("val", "test"):
        raise ImagefitError(f"--split must be val or test (got {split!r})")
    bundle = load_bundle(path)
    keep = bundle.path.with_suffix(".uncalibrated.safetensors")
    check_writable(bundle.path.parent)
    if keep.exists():
        raise ImagefitError(f"{keep} exists already (an earlier calibration kept the original there); move it away "
                            f"to calibrate {bundle.path} again")
    images = split_images(bundle, data, split)
    if len(images) < 100:
        raise ImagefitError(f"the {split} split has {len(images)} images; a temperature needs 100 or more")
    unscaled = replace(bundle.preprocessing, temperature=1.0)
    bundle.preprocessing = unscaled
    tta, average = bundle.config.train.tta, bundle.config.train.tta_average
    scores, labels = bundle_scores(bundle, images, batch_size=batch_size, tta=tta, average=average)
    result = {**scale_temperature(scores, labels), "split": split, "n": len(labels),
              "accuracy": (scores.argmax(1) == labels).double().mean().item()}
    temperature = result["temperature"]
    if split == "test":  # cross-fitted: no image is scored by a temperature fitted on it
        half = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)) < len(labels) // 2
        scaled = scores.clone()
        for fit, score in ((half, ~half), (~half, half)):
            scaled[score] = scores[score] / fit_temperature(scores[fit], labels[fit])
        result["ece_after_crossfit"] = calibration(scaled.softmax(1), labels)["ece"]
    bundle.path.rename(keep)
    try:
        save_bundle(bundle.path, bundle.model, replace(unscaled, temperature=temperature), bundle.config,
                    {**bundle.metrics, "temperature": temperature, "calibrated_on": split})
    except BaseException:
        keep.rename(bundle.path)
        raise
    result.update(bundle=str(bundle.path), original=str(keep))
    return result
