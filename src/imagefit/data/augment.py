"""Augmentation of whole batches, with per-image randomness and no Python loop per image.

Written by hand because it is the hot path: torchvision's v2 transforms draw one set of random parameters per
call, so per-image randomness needs a Python loop over the batch, which costs more than a small model's step on
a CPU. Here each op is one or two tensor operations over the batch:

- crop with reflect padding and horizontal flip are fused into one uint8 gather: every output pixel's source
  row and column are computed (shifted, reflected at the border, mirrored for flipped images) and read once;
  no padded copy is made, and uint8 moves a quarter of the bytes float32 would;
- normalization is the contract's `preprocessing.Normalize`, one fused multiply-add to float32 in the loader's
  memory format;
- rotation is `affine_grid` + `grid_sample` with one angle per image (only when enabled);
- cutout is one broadcast comparison per axis and a masked fill with 0, the dataset mean after normalizing;
- colour jitter, RandAugment/TrivialAugment and random erasing are `policy.py`'s, mixup and CutMix `mix.py`'s.

All randomness comes from the `torch.Generator` passed in, which the loader seeds from (seed, epoch, step):
a batch's augmentation depends on its position alone, so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig, parse_policy
from ..preprocessing import Normalize
from .mix import mix_batch
from .policy import apply_policy, color_jitter, random_erasing


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect out-of-range indices back inside [0, n) without repeating the edge (numpy's 'reflect')."""
    idx = idx.abs()
    return torch.where(idx >= n, 2 * (n - 1) - idx, idx)


def crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator,
              flips: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop (reflect-padded by `padding`) and random horizontal flip of a uint8 N×C×H×W batch; `flips`
    (N bools), when given, says which images to flip instead of a coin per image."""
    n, _, h, w = x.shape
    if padding == 0 and not flip:
        return x
    dy = torch.randint(-padding, padding + 1, (n, 1), generator=gen)
    dx = torch.randint(-padding, padding + 1, (n, 1), generator=gen)
    rows = _reflect(torch.arange(h) + dy, h)
    cols = _reflect(torch.arange(w) + dx, w)
    if flip:
        flipped = torch.rand(n, 1, generator=gen) < 0.5 if flips is None else flips.view(n, 1).cpu()
        cols = torch.where(flipped, cols.flip(1), cols)  # the crop, mirrored
    rows, cols = rows.to(x.device), cols.to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put the batch dims first: the result is N×H×W×C, i.e. channels_last.
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def rotate(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image of a float batch by its own angle in [-degrees, degrees]; corners filled with 0."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one size×size square per image, centred anywhere (so it may hang over the border)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=gen).to(x.device)
    cx = torch.randint(0, w, (n, 1), generator=gen).to(x.device)
    top, left = cy - size // 2, cx - size // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= top) & (ys < top + size)  # N×H
    in_cols = (xs >= left) & (xs < left + size)  # N×W
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(mask, 0.0)


class BatchAugment:
    """The training-time pipeline for one batch: crop+flip on uint8; colour jitter and the policy on [0, 255]
    floats; normalize; rotation, cutout and random erasing; progressive resizing; then mixup/CutMix, the one step
    that also changes the targets (so the augmenter takes the labels and returns the targets).

    With `alternate_flip` (airbench's trick), a seeded coin per image picks the half of the dataset flipped in
    even epochs, and the other half is flipped in odd ones: over any two epochs each image is seen both ways,
    where random flips leave a quarter of the images unflipped (or flipped) both times.

    Each step draws from the generator only when it is on, so a config without the later steps sees exactly the
    batches it saw before they existed.
    """

    def __init__(self, cfg: AugmentConfig, normalize: Normalize, num_images: int = 0, seed: int = 0,
                 num_classes: int = 0):
        self.cfg, self.normalize, self.num_classes = cfg, normalize, num_classes
        self.policy = parse_policy(cfg.augment_policy)
        if (cfg.mixup or cfg.cutmix) and num_classes < 2:
            raise ValueError("mixup/CutMix need the number of classes")
        if cfg.alternate_flip:
            gen = torch.Generator().manual_seed(seed)
            self.flip_even = torch.rand(num_images, generator=gen) < 0.5

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, index: torch.Tensor | None = None,
                 epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment uint8 batch `x` with labels `y`, the images `index` of the dataset (needed for alternate flips)
        in `epoch` (which sets the size under progressive resizing): (images ready for the model, targets), the
        targets N labels, or N×K class probabilities when the batch was mixed."""
        cfg = self.cfg
        flips = None
        if cfg.flip and cfg.alternate_flip:
            flips = self.flip_even[index.cpu()] ^ bool(epoch % 2)
        x = crop_flip(x, cfg.crop_padding, cfg.flip, gen, flips)
        if cfg.color_jitter or cfg.hue or self.policy:
            x = x.float()
            if cfg.color_jitter or cfg.hue:
                x = color_jitter(x, cfg.color_jitter, cfg.hue, gen)
            if self.policy:
                x = apply_policy(x, self.policy, gen)
        x = self.normalize(x)
        if cfg.rotation > 0:
            x = rotate(x, cfg.rotation, gen)
        if cfg.cutout > 0:
            x = cutout(x, cfg.cutout, gen)
        if cfg.random_erasing > 0:
            x = random_erasing(x, cfg.random_erasing, gen)
        sizes = cfg.progressive_sizes
        if epoch < len(sizes) and sizes[epoch] != x.shape[-1]:
            # Progressive resizing (fastai's): early epochs see smaller images, which cost a fraction of the
            # compute and teach the coarse features; antialiased, as a photo taken smaller would be.
            x = F.interpolate(x, size=(sizes[epoch], sizes[epoch]), mode="bilinear", antialias=True,
                              align_corners=False)
        if cfg.mixup or cfg.cutmix:
            x, y = mix_batch(x, y, self.num_classes, cfg.mixup, cfg.cutmix, cfg.mix_prob, gen)
        return x.contiguous(memory_format=self.normalize.memory_format), y
