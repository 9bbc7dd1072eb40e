"""The preprocessing contract: what an image goes through between a file and the model's scores.

Training resolves one `Preprocessing` when it starts (image size and resize rule, the normalization statistics,
the class order, the test-time views and how they combine) and adds the logit adjustment it chose when it ends;
the bundle stores it; evaluation, prediction, the server and the export read it back. Every consumer goes through
the three functions here, so nothing above this module re-derives a scale, a shift or a view:

- `Normalize`, an `nn.Module` with buffers (so an ONNX or TorchScript export carries it): uint8 or float pixels in
  [0, 255] → (x/255 − mean)/std, as one fused multiply-add;
- `tta_scores`, which makes the test-time views of a batch and combines the model's scores over them;
- `adjust_logits`, the logit adjustment (scores − τ·log prior).

Image decoding for inference (`load_image`, the pixel guard) lives here too: the training path's ImageFolder
loader calls the same function, so a served model sees exactly the pixels it was trained on.

This module sits at the bottom of the import graph, above only `errors` and `config` (the names of the TTA modes).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .config import RESIZE_MODES, TTA_AVERAGES, TTA_MODES
from .errors import ImagefitError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Decompression bombs: refuse anything over 64 megapixels rather than let PIL allocate gigabytes.
Image.MAX_IMAGE_PIXELS = 64_000_000


# ---------------------------------------------------------------------------------------------- decoding

class ImageTooLarge(ValueError):
    """An image whose header promises more pixels than the caller allows (a decompression bomb, or a mistake)."""

    def __init__(self, message: str, pixels: int = 0):
        super().__init__(message)
        self.pixels = pixels


def load_image(source, size: int, resize: str = "crop", max_pixels: int | None = None) -> np.ndarray:
    """Decode one image (a path, bytes or a PIL image) to uint8 H×W×3 RGB at `size`×`size`.

    The one decoding function: ImageFolder loading, predict and serve all call it. `crop` scales the shorter side
    to `size` and takes the centre; `squish` scales both sides. Grayscale, palette and alpha images become RGB.
    With `max_pixels`, an image whose header declares more pixels is refused before any decoding (ImageTooLarge).
    """
    if isinstance(source, Image.Image):
        return _prepare(source, size, resize, max_pixels)
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(fh) as im:
        _guard(im, max_pixels)
        if im.format == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when the image stays at least size×size (libjpeg's DCT scaling): a
            # 4,000×3,000 photo for a 32-px model decodes as 500×375, 64x less memory and time, then is resized as
            # any other image.
            im.draft(None, (size, size))
        return _prepare(im, size, resize, None)


DECODER = 2  # bumped whenever decoding changes its pixels (cached decoded trees are keyed by it); 2: JPEG draft


def _guard(im: Image.Image, max_pixels: int | None) -> None:
    if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
        raise ImageTooLarge(f"{im.size[0]}×{im.size[1]} pixels", im.size[0] * im.size[1])


def _prepare(im: Image.Image, size: int, resize: str, max_pixels: int | None) -> np.ndarray:
    _guard(im, max_pixels)
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8_bit(im)
    im = im.convert("RGB")
    w, h = im.size
    if (w, h) != (size, size):
        if resize == "squish":
            im = im.resize((size, size), Image.BILINEAR)
        else:
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).copy()


def _to_8_bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale (PNG, TIFF) scaled to 8 bits: PIL's own conversion clips every value over 255,
    which turns a 16-bit image almost white. 16-bit and 32-bit integer images are read as 0..65535 (divided by 257),
    float images as 0..1 when they fit in it, else 0..255."""
    x = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        x = x * 255 if x.size and np.nanmax(x) <= 1.0 else x
    elif im.mode.startswith("I;16") or (x.size and x.max() > 255):
        x = x / 257
    return Image.fromarray(np.clip(np.nan_to_num(x).round(), 0, 255).astype(np.uint8), "L")


# ---------------------------------------------------------------------------------------------- the three steps

class Normalize(nn.Module):
    """Pixels in [0, 255] (uint8 or float) → float32 (x/255 − mean)/std in one fused multiply-add; with
    `channels_last`, in that memory format (what the training step's convolutions run fastest on)."""

    def __init__(self, mean, std, channels_last: bool = False):
        super().__init__()
        std = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean, dtype=torch.float32) / std).view(1, -1, 1, 1))
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)


def tta_views(x: torch.Tensor, tta: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs for a batch. `flip`: the image and its mirror. `crops`: the image and two copies
    shifted one pixel up-left and down-right (reflect-padded). `flip+crops`: those three, each with its mirror.
    The unshifted views carry half the weight, as in airbench; 6 views at most. Flips and shifts are pure
    indexing, so they commute with `Normalize`: views of pixels and of normalized inputs give the same scores."""
    if tta not in TTA_MODES:
        raise ImagefitError(f"unknown test-time augmentation '{tta}'; choose one of {', '.join(TTA_MODES)}")
    views = [(1.0, x)]
    if tta in ("crops", "flip+crops"):
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [(0.5, x), (0.25, padded[..., :h, :w]), (0.25, padded[..., 2:, 2:])]
    if tta in ("flip", "flip+crops"):
        views = [(w / 2, view) for w, v in views for view in (v, v.flip(-1))]
    return views


def tta_scores(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: str = "none",
               average: str = "logits") -> torch.Tensor:
    """Float32 scores of `forward` over the test-time views of `tta`: the weighted mean of the logits, or with
    `average="probs"` the log of the weighted mean probability (so softmax and argmax read it like logits)."""
    views = tta_views(x, tta)
    if average == "logits":
        return sum(w * forward(v).float() for w, v in views)
    if average == "probs":
        return torch.log(sum(w * forward(v).float().softmax(1) for w, v in views).clamp_min(1e-30))
    raise ImagefitError(f"--tta-average must be logits or probs (got {average!r})")


def adjust_logits(scores: torch.Tensor, log_prior: torch.Tensor, tau: float) -> torch.Tensor:
    """Logit adjustment (Menon et al. 2021): scores − τ·log(training prior of each class); τ = 0 leaves them."""
    return scores - tau * log_prior.to(scores.device) if tau else scores


# ---------------------------------------------------------------------------------------------- the value

def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_utf8(name: str) -> bool:
    """Whether a name encodes as UTF-8 (a file name's undecodable bytes are kept as surrogates by os.fsdecode)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False



@dataclass
class Preprocessing:
    """Everything between an image file and class probabilities that training chose and serving must repeat."""
    size: int
    resize: str
    mean: list[float]
    std: list[float]
    classes: list[str] = field(default_factory=list)
    tta: str = "none"
    tta_average: str = "logits"
    logit_adjust: dict | None = None  # {"tau": τ, "log_prior": [log p(class) in the training set]}
    temperature: float = 1.0  # scores are divided by it (fitted on validation data: calibrated probabilities)

    def to_dict(self) -> dict:
        """The bundle's `preprocessing` entry (its format since bundle format 1: class order and TTA are stored
        beside it, in the bundle's `classes` and the training config)."""
        d = {"size": self.size, "resize": self.resize, "mean": list(self.mean), "std": list(self.std)}
        if self.logit_adjust:
            d["logit_adjust"] = self.logit_adjust
        if self.temperature != 1.0:
            d["temperature"] = self.temperature
        return d

    @classmethod
    def from_dict(cls, d: dict, classes: list[str], tta: str = "none", tta_average: str = "logits",
                  where: str = "the bundle") -> Preprocessing:
        """The contract a bundle (or an export's metadata) states, checked field by field (`check`)."""
        if not isinstance(d, dict) or not isinstance(classes, list):
            raise ImagefitError(f"{where} has no preprocessing or class list; re-run 'imagefit train' or export it "
                                f"again")
        missing = [k for k in ("size", "resize", "mean", "std") if k not in d]
        if missing:
            raise ImagefitError(f"{where}: preprocessing lacks {', '.join(missing)}; re-run 'imagefit train'")
        p = cls(d["size"], d["resize"], d["mean"], d["std"], classes, tta, tta_average, d.get("logit_adjust") or None,
                d.get("temperature", 1.0))
        return p.check(where)

    def check(self, where: str = "the bundle") -> Preprocessing:
        """Refuse a contract no model could have been trained with, naming the field: a bundle that loads serves."""
        def bad(field: str, value, need: str):
            raise ImagefitError(f"{where}: preprocessing {field} is {str(value)[:60]!r}, but must be {need}; the file "
                                f"was edited or damaged: re-run 'imagefit train' (or export again)")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= 1024:
            bad("size", self.size, "a whole number of pixels from 8 to 1024")
        if self.resize not in RESIZE_MODES:
            bad("resize", self.resize, " or ".join(RESIZE_MODES))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not isinstance(v, list) or len(v) != 3 or not all(_finite_number(x) for x in v):
                bad(name, v, "three finite numbers (one per RGB channel)")
        if not all(x > 0 for x in self.std):
            bad("std", self.std, "positive (it divides the pixels)")
        c = self.classes
        if not all(isinstance(n, str) and n and is_utf8(n) for n in c) or len(c) < 2 or len(set(c)) != len(c):
            bad("classes", c, "two or more distinct, non-empty UTF-8 names")
        if self.tta not in TTA_MODES:
            bad("tta", self.tta, " or ".join(TTA_MODES))
        if self.tta_average not in TTA_AVERAGES:
            bad("tta_average", self.tta_average, " or ".join(TTA_AVERAGES))
        la = self.logit_adjust
        if la is not None and (not isinstance(la, dict) or not _finite_number(la.get("tau")) or la["tau"] < 0
                               or not isinstance(la.get("log_prior"), list) or len(la["log_prior"]) != len(c)
                               or not all(_finite_number(x) for x in la["log_prior"])):
            bad("logit_adjust", la, f"a tau >= 0 and {len(c)} finite log priors")
        if not _finite_number(self.temperature) or not 0.01 <= self.temperature <= 100:
            bad("temperature", self.temperature, "a number from 0.01 to 100")
        self.mean, self.std, self.classes = [float(x) for x in self.mean], [float(x) for x in self.std], list(c)
        self.temperature = float(self.temperature)
        return self

    def with_tta(self, tta: str | None = None, average: str | None = None) -> Preprocessing:
        return replace(self, tta=tta or self.tta, tta_average=average or self.tta_average)

    # -- the steps, bound to this contract --------------------------------------------------------------------

    def normalizer(self, device: torch.device | str = "cpu", channels_last: bool = False) -> Normalize:
        return Normalize(self.mean, self.std, channels_last).to(device)

    def decode(self, source, max_pixels: int | None = None) -> torch.Tensor:
        """One image (path, bytes, PIL image) → uint8 3×S×S, by this contract's size and resize rule."""
        return torch.from_numpy(load_image(source, self.size, self.resize, max_pixels)).permute(2, 0, 1)

    def batch(self, inputs) -> torch.Tensor:
        """uint8 N×3×S×S from a list of images, each a path, bytes, a PIL image, or an H×W×C (or H×W) uint8
        array or tensor of any size (resized by the contract's rule, as a file would be)."""
        return torch.stack([self._one(x, i) for i, x in enumerate(inputs)])

    def _one(self, x, i: int) -> torch.Tensor:
        if isinstance(x, (str, Path, bytes, bytearray, Image.Image)):
            return self.decode(str(x) if isinstance(x, Path) else x)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
                raise ImagefitError(f"image {i} is an array of shape {x.shape} and dtype {x.dtype}; pass H×W×3 "
                                    f"(or H×W) uint8 pixels, as PIL's np.asarray(image) gives")
            return self.decode(Image.fromarray(x[..., 0] if x.ndim == 3 and x.shape[2] == 1 else x))
        raise ImagefitError(f"image {i} is a {type(x).__name__}; pass a file path, bytes, a PIL image or an "
                            f"H×W×3 uint8 array")

    def adjust(self, scores: torch.Tensor) -> torch.Tensor:
        """The logit adjustment, then the temperature: what turns the model's (TTA-combined) logits into the
        scores whose softmax every path reports."""
        la = self.logit_adjust
        scores = adjust_logits(scores, torch.tensor(la["log_prior"]), la["tau"]) if la else scores
        return scores / self.temperature if self.temperature != 1.0 else scores

    def scores(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               tta: str | None = None) -> torch.Tensor:
        """Adjusted scores of `forward` on batch `x` over this contract's test-time views (or `tta`'s)."""
        return self.adjust(tta_scores(forward, x, tta or self.tta, self.tta_average))
