"""Mixup and CutMix: a batch mixed with itself reversed, and the targets mixed in the same proportion.

timm's `Mixup` in its 'batch' mode: with probability `prob` a batch is mixed, by CutMix or by mixup (an even
chance when both are on), with one λ ~ Beta(α, α) for the whole batch, each image paired with the image at the
mirrored position (`x.flip(0)`). Mixup blends the two images λ : 1 − λ; CutMix pastes a box of about 1 − λ of the
partner's area and then sets λ to the share actually kept (the box is clipped at the border). The targets become
class probabilities, λ·onehot(y) + (1 − λ)·onehot(partner's y): cross-entropy takes them as they are (label smoothing
included), and the share of target mass on the predicted class is the training accuracy (the paper's λ-weighted
hits), so progress figures keep their meaning.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, prob: float,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) for a normalized batch `x` and its labels `y`: the batch as it was (hard labels) when not
    mixed, else the mixed images and N×K target probabilities. All draws come from `gen`."""
    if (mixup <= 0 and cutmix <= 0) or torch.rand(1, generator=gen).item() >= prob:
        return x, y
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=gen).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    # torch's Beta sampler takes no generator; NumPy's, seeded from this batch's stream, keeps the batch a pure
    # function of its position.
    lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen))).beta(alpha, alpha))
    partner = x.flip(0)
    if use_cutmix:
        h, w = x.shape[-2:]
        ratio = (1.0 - lam) ** 0.5
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = (int(v) for v in torch.randint(0, 2**31, (2,), generator=gen) % torch.tensor([h, w]))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    else:
        x = x * lam + partner * (1.0 - lam)
    onehot = F.one_hot(y, num_classes).to(x.dtype if x.is_floating_point() else torch.float32)
    return x, onehot * lam + onehot.flip(0) * (1.0 - lam)


def hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct predictions in a batch, as a 0-dim tensor: for hard labels the count of argmax matches; for target
    probabilities the target mass on each predicted class, summed (λ-weighted hits under mixing)."""
    pred = logits.argmax(1)
    if targets.ndim == 1:
        return (pred == targets).sum()
    return targets.gather(1, pred[:, None]).sum()
