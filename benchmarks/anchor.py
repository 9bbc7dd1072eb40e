"""The anchor: airbench94_muon (Keller Jordan's cifar10-airbench, the public CIFAR-10 speed record), reimplemented
from its published description so benchmarks/speed.py can run it beside imagefit's recipes, in the same process,
on the same data, augmentation and machine. Float32 on the CPU, no torch.compile (as the anchor figures of
issue 3 were measured); `airbench94-bf16` is the same run under bfloat16 autocast (training and test), the anchor
as a user who knows their CPU has native bfloat16 runs it.

What it is, per the published script:
- net: frozen 2×2 patch-whitening conv (24 filters, learnable bias), GELU, three conv groups (conv 3×3, max-pool 2,
  BatchNorm with frozen scale, GELU, conv 3×3, BatchNorm, GELU) of widths 64/256/256, max-pool 3, a linear head
  without bias whose weights start at unit standard deviation and whose output is divided by its width;
  every conv's first in_channels filters start as identities (dirac);
- data: alternating flip, random translation by up to 2 pixels (reflect), batch 2000, 8 epochs, last batch dropped;
- loss: cross-entropy summed over the batch, label smoothing 0.2;
- optimizers: Muon (lr 0.24, momentum 0.6, Nesterov; each step renormalizes the filter to Frobenius norm
  sqrt(out_channels), then steps along the Newton–Schulz orthogonalization of the momentum, 3 iterations of the
  quintic with coefficients 3.4445, -4.7750, 2.0315) for the conv filters; SGD (momentum 0.85, Nesterov) for the
  whitening bias and BatchNorm shifts (lr 0.053) and the head (lr 0.67), weight decay 2e-6·batch per step;
- schedule: every rate falls linearly to 0 over the run; the whitening bias's over 3 epochs, after which it is frozen;
- test: flip + one-pixel translate TTA (6 views).
The shrunk anchor of issue 3 changes only widths (32/64/128), batch (500) and epochs (4).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from imagefit.data.augment import BatchAugment
from imagefit.preprocessing import Normalize
from imagefit.config import AugmentConfig
from imagefit.data.sources import Splits
from imagefit.evaluation.evaluate import gather_logits
from imagefit.data.loader import Loader
from imagefit.seeds import flip_seed
from imagefit.models import FastNet
from imagefit.runtime import autocast_for
from imagefit.training.optim import Muon

ANCHORS = {  # name: (widths, batch size, epochs)
    "airbench94": ((64, 256, 256), 2000, 8),
    "airbench94-small": ((32, 64, 128), 500, 4),
    "airbench94-bf16": ((64, 256, 256), 2000, 8),
}


def anchor_autocast(name: str):
    """The precision a skilled user runs the anchor in: `-bf16` anchors train and test under bfloat16 autocast
    (as airbench itself runs in half precision on a GPU), on a CPU with native bfloat16 (AVX512-BF16 or AMX);
    the others in float32, as issue 3 defined the anchor."""
    return autocast_for(torch.device("cpu"), "bf16" if name.endswith("-bf16") else "no")[0]


class AnchorNet(FastNet):
    """FastNet's body (the same conv groups, whitening and BatchNorm) with the anchor's head."""

    def __init__(self, widths):
        super().__init__(10, widths, whiten_bias_epochs=3)
        with torch.no_grad():
            self.fc.weight /= self.fc.weight.std()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.layers(self.act(self.whiten(x))), 1)
        return self.fc(x) / x.shape[1]


def train_anchor(name: str, splits: Splits, seed: int, on_epoch_end=None) -> dict:
    """Train one anchor run; `on_epoch_end(model, epoch)` may evaluate (its time is the caller's to subtract)."""
    widths, batch, epochs = ANCHORS[name]
    autocast = anchor_autocast(name)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    normalize = Normalize(splits.mean, splits.std, channels_last=True).to(device)
    aug = AugmentConfig(crop_padding=2, flip=True, alternate_flip=True)
    train = Loader(splits.train, batch, normalize, shuffle=True, drop_last=True, seed=seed,
                   augment=BatchAugment(aug, normalize, len(splits.train), flip_seed(seed)))
    model = AnchorNet(widths).to(memory_format=torch.channels_last)
    model.init_from_data(normalize(splits.train.images[:5000]))

    wd = 2e-6 * batch
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    norm_shifts = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # One optimizer, four groups: SGD (momentum 0.85) for the whitening bias, BatchNorm shifts and head; Muon for
    # the filters. Weight decay is given per step (wd), so each group's coefficient is wd / its rate.
    opt = Muon([dict(params=[model.whiten.bias], lr=0.053, weight_decay=wd / 0.053),
                dict(params=norm_shifts, lr=0.053, weight_decay=wd / 0.053),
                dict(params=[model.fc.weight], lr=0.67, weight_decay=wd / 0.67),
                dict(params=filters, lr=0.24, momentum=0.6, orthogonal=True)], lr=0.0, momentum=0.85)
    initial = [g["lr"] for g in opt.param_groups]
    total, whiten_steps = epochs * len(train), 3 * len(train)

    step, seconds = 0, 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        model.set_epoch(epoch)
        for _, x, y in train.batches(epoch):
            with autocast():
                loss = F.cross_entropy(model(x), y, label_smoothing=0.2, reduction="sum")
            loss.backward()
            groups = opt.param_groups
            groups[0]["lr"] = initial[0] * max(0.0, 1 - step / whiten_steps)
            for g, lr in zip(groups[1:], initial[1:]):
                g["lr"] = lr * (1 - step / total)
            opt.step()
            model.zero_grad(set_to_none=True)
            step += 1
        seconds += time.perf_counter() - t0
        if on_epoch_end:
            on_epoch_end(model, epoch, seconds)
    return {"model": model, "seconds": seconds, "steps": step, "normalize": normalize}


@torch.no_grad()
def anchor_accuracy(model: nn.Module, splits: Splits, normalize: Normalize, tta: str = "flip+crops",
                    name: str = "airbench94") -> float:
    loader = Loader(splits.test, 1000, normalize)
    logits, labels = gather_logits(model, loader, autocast=anchor_autocast(name), tta=tta)
    return (logits.argmax(1) == labels).float().mean().item()


def count_flops(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, train: bool) -> int:
    """FLOPs of one step (forward + backward when `train`), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(batch), labels).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(batch)
    return counter.get_total_flops()

