"""An exponential moving average of the weights (timm's ModelEma, torchvision's reference `--model-ema`).

After every optimizer step the average moves towards the live weights by 1 − decay; the BatchNorm running
statistics are averaged with them (torchvision's `use_buffers=True`), so the averaged model can be evaluated as it
is. The decay warms up (`ema_decay`): a short CPU run is a few thousand steps, and a fixed 0.999 from the first
step would keep a share of the random initial weights to the end.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_decay(target: float, step: int) -> float:
    """The EMA decay at optimizer step `step` (0-based): (1 + step) / (10 + step), capped at `target`. A fixed
    0.999 from step 0 keeps e^-1 of the random initial weights in the average after 1,000 steps, and a CPU run is
    only a few thousand steps long. The warm-up (the rule of TensorFlow's ExponentialMovingAverage and of diffusers'
    EMAModel) lets the average follow the early weights and reaches the target decay at step ~9,000."""
    return min(target, (1 + step) / (10 + step))


class WeightEMA:
    """The averaged copy of a model: `update` after each optimizer step, `model` to evaluate or save."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = None  # (averaged floats, live floats, averaged others, live others), paired on first update

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move towards `model`'s weights; `step` counts the optimizer steps taken before this one."""
        if self._pairs is None:
            # The optimizer and load_state_dict change tensors in place, so the pairing holds for the whole run and
            # the training step builds no state dicts.
            pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
            floats = [(a, b.detach()) for a, b in pairs if a.is_floating_point()]
            others = [(a, b) for a, b in pairs if not a.is_floating_point()]  # e.g. num_batches_tracked
            self._pairs = ([a for a, _ in floats], [b for _, b in floats], [a for a, _ in others],
                           [b for _, b in others])
        mine, theirs, my_counts, their_counts = self._pairs
        for a, b in zip(my_counts, their_counts):
            a.copy_(b)
        # One fused kernel per dtype and device over all tensors, instead of one Python call per tensor.
        torch._foreach_lerp_(mine, theirs, 1.0 - ema_decay(self.decay, step))
