"""Photometric and policy augmentation of whole batches: colour jitter, RandAugment, TrivialAugment, random erasing.

Written by hand for the same reason as `augment.py`: torchvision's v2 `ColorJitter`, `RandAugment` and
`TrivialAugmentWide` draw one set of parameters per call, so giving each image of a batch its own op and magnitude
takes a Python loop of one call per image, which on a CPU costs more than a small model's training step. Here each
image draws its own op and magnitude, and each op runs once, as tensor operations over the images that drew it: a
loop over the 14 ops of the policy, never over images. The shear, translate and rotate ops of one round are one
`affine_grid` + `grid_sample` over all the images that drew any of them.

The ops, their order and their magnitude tables are torchvision's (`RandAugment`: 31 magnitude bins, magnitude M
of 30 for every op, a random sign for the signed ones; `TrivialAugmentWide`: one op per image at a uniform bin of the
wider table), with torchvision's defaults: nearest-neighbour geometry, black fill. Inputs and outputs are float32
N×3×H×W with values in [0, 255] (RGB), before normalization. Two documented departures: colour jitter applies
brightness, contrast, saturation and hue in that fixed order (torchvision shuffles it per call), and hue turns the
colours about the grey axis in YIQ space (a 3×3 matrix per image) instead of a round trip through HSV.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import BINS, Policy

GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _table(policy: Policy, h: int, w: int) -> dict[str, tuple[torch.Tensor | None, bool]]:
    """op → (magnitude per bin or None, signed): torchvision's `_augmentation_space` of each policy."""
    wide = policy.kind == "trivial"
    strength = torch.linspace(0.0, 0.99 if wide else 0.9, BINS)
    bits = 8 - (torch.arange(BINS) / ((BINS - 1) / (6 if wide else 4))).round()
    return {
        "identity": (None, False),
        "shear_x": (torch.linspace(0.0, 0.99 if wide else 0.3, BINS), True),
        "shear_y": (torch.linspace(0.0, 0.99 if wide else 0.3, BINS), True),
        "translate_x": (torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * w, BINS), True),
        "translate_y": (torch.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * h, BINS), True),
        "rotate": (torch.linspace(0.0, 135.0 if wide else 30.0, BINS), True),
        "brightness": (strength, True),
        "color": (strength, True),
        "contrast": (strength, True),
        "sharpness": (strength, True),
        "posterize": (bits, False),
        "solarize": (torch.linspace(255.0, 0.0, BINS), False),
        "autocontrast": (None, False),
        "equalize": (None, False),
    }


def _gray(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W luminance (torchvision's rgb_to_grayscale weights)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """other + factor·(x − other), per image, clamped to the pixel range (torchvision's _blend)."""
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp_(0, 255)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 255)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's smoothing filter (centre weight 5 of 13), the border pixels left as they are."""
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5.0
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel / 13.0, groups=3)
    return _blend(x, smooth, factor)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    step = (2.0 ** (8 - bits)).view(-1, 1, 1, 1)
    return torch.div(x.round(), step, rounding_mode="floor") * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full range (channels that are one value stay as they are)."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 255.0 / (hi - lo).clamp_min(1e-6))
    return ((x - torch.where(flat, torch.zeros_like(lo), lo)) * scale).clamp_(0, 255)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalization of each channel of each image, PIL's rule (the lookup table from the histogram with
    its top bin left out), all (image, channel) pairs at once through one scatter-add of 256-bin histograms."""
    n, c, h, w = x.shape
    v = x.round().long().clamp_(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, v, torch.ones_like(v))
    top = hist.gather(1, v.amax(1, keepdim=True))  # the count of the highest value present
    step = torch.div(h * w - top, 255, rounding_mode="floor")  # N·C×1
    lut = torch.div(step // 2 + hist.cumsum(1) - hist, step.clamp_min(1), rounding_mode="floor").clamp_(0, 255)
    out = torch.where(step > 0, lut.gather(1, v), v)
    return out.view(n, c, h, w).to(x.dtype)


def _affine(x: torch.Tensor, kinds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Apply one geometric op per image (`kinds` indexes GEOMETRIC: shear, translate in pixels, rotate in degrees),
    each about the centre, as one grid sample; nearest neighbour, black outside."""
    n, _, h, w = x.shape

    def where(kind: str, value: torch.Tensor, otherwise: float = 0.0) -> torch.Tensor:
        return torch.where(kinds == GEOMETRIC.index(kind), value, torch.full_like(value, otherwise))

    angle = torch.deg2rad(where("rotate", values))
    # theta maps output coordinates to input ones, both normalized to [-1, 1] per axis.
    theta = torch.stack([
        torch.stack([angle.cos(), -angle.sin() * h / w + where("shear_x", values * h / w),
                     where("translate_x", -2.0 * values / w)], 1),
        torch.stack([angle.sin() * w / h + where("shear_y", values * w / h), angle.cos(),
                     where("translate_y", -2.0 * values / h)], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), [n, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


PIXEL_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": lambda x, v: brightness(x, 1.0 + v),
    "color": lambda x, v: saturation(x, 1.0 + v),
    "contrast": lambda x, v: contrast(x, 1.0 + v),
    "sharpness": lambda x, v: sharpness(x, 1.0 + v),
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": lambda x, v: autocontrast(x),
    "equalize": lambda x, v: equalize(x),
}


def apply_policy(x: torch.Tensor, policy: Policy, gen: torch.Generator) -> torch.Tensor:
    """One policy over a float [0, 255] batch: each image draws its op (and, for `trivial`, its magnitude bin) and
    a sign for the signed ops; rounds of RandAugment follow one another."""
    n, _, h, w = x.shape
    table = _table(policy, h, w)
    names = list(table)
    for _ in range(policy.ops):
        choice = torch.randint(len(names), (n,), generator=gen)
        bins = (torch.randint(BINS, (n,), generator=gen) if policy.kind == "trivial"
                else torch.full((n,), policy.magnitude))
        signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        values = torch.zeros(n)
        for k, name in enumerate(names):
            magnitudes, signed = table[name]
            if magnitudes is not None:
                picked = choice == k
                values[picked] = magnitudes[bins[picked]] * (signs[picked] if signed else 1.0)
        out = x.clone()
        kinds = torch.full((n,), -1)
        for g, name in enumerate(GEOMETRIC):
            kinds[choice == names.index(name)] = g
        idx = (kinds >= 0).nonzero().squeeze(1)
        if len(idx):
            dev = idx.to(x.device)
            out[dev] = _affine(x[dev], kinds[idx], values[idx])
        for name, op in PIXEL_OPS.items():
            idx = (choice == names.index(name)).nonzero().squeeze(1)
            if len(idx):
                dev = idx.to(x.device)
                out[dev] = op(x[dev], values[idx].to(x.device))
        x = out
    return x


def color_jitter(x: torch.Tensor, strength: float, hue: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength, hue) per image: brightness, contrast and saturation
    factors uniform in [1 − strength, 1 + strength], a hue turn uniform in [−hue, hue] of the colour circle."""
    n = x.shape[0]

    def factors() -> torch.Tensor:
        return (1.0 + (torch.rand(n, generator=gen) * 2 - 1) * strength).clamp_min(0.0).to(x.device)

    if strength > 0:
        x = saturation(contrast(brightness(x, factors()), factors()), factors())
    if hue > 0:
        turn = (torch.rand(n, generator=gen) * 2 - 1) * hue * 2 * math.pi
        x = torch.einsum("nij,njhw->nihw", _hue_matrices(turn).to(x.device, x.dtype), x).clamp_(0, 255)
    return x


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_matrices(turn: torch.Tensor) -> torch.Tensor:
    """N×3×3 RGB → RGB matrices that turn the chroma plane (I, Q) of YIQ by `turn` radians, luminance kept."""
    n = len(turn)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1] = rot[:, 2, 2] = turn.cos()
    rot[:, 1, 2], rot[:, 2, 1] = -turn.sin(), turn.sin()
    return torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ


def random_erasing(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """timm's RandomErasing in 'pixel' mode on a normalized batch: with probability `prob` an image gets one
    rectangle of 2-33% of its area, aspect ratio 0.3-3.3 (log-uniform), filled with standard normal noise (the
    normalized data's own scale). The rectangle is clipped to the image instead of timm's retries."""
    n, c, h, w = x.shape
    erase = torch.rand(n, generator=gen) < prob
    area = (torch.rand(n, generator=gen) * (1 / 3 - 0.02) + 0.02) * h * w
    aspect = torch.exp(torch.rand(n, generator=gen) * (math.log(3.3) - math.log(0.3)) + math.log(0.3))
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=gen) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=gen) * (w - ew + 1)).long()
    noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    ys, xs = torch.arange(h), torch.arange(w)
    rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])
    cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])
    mask = (rows[:, None, :, None] & cols[:, None, None, :] & erase.view(n, 1, 1, 1)).to(x.device)
    return torch.where(mask, noise, x)
