"""Every random stream imagefit draws from, by name.

A run is a function of its config and seed: each random choice gets its own generator, seeded by hashing the run's
numbers (seed, epoch, step, …) together with the stream's tag (NumPy's SeedSequence), so streams are independent of
each other and a batch, a subset or a sample depends on its position alone; nothing needs saving to resume. The tags
are fixed forever: changing one changes the data every past run saw.
"""

from __future__ import annotations

import os
import random
from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """The tags of the seeded data choices and generative draws (`choice_generator`)."""
    PER_CLASS = 1  # --per-class: the images kept of each class
    IMBALANCE = 2  # --imbalance: the images kept of each class
    BOOTSTRAP = 3  # --bootstrap N: the sample drawn with replacement (seeded by N)
    DIFFUSION = 7  # the diffusion model's training batches, noise and timesteps; its sampling batches
    GAN = 11  # the GAN's training batches and noise
    VARIATIONS = 13  # `generate vary`: the noise added to each batch of real images
    GENERATOR_SAMPLES = 17  # `generate eval`: the images sampled to score a generator
    REAL_SUBSET = 19  # `generate eval`: the real images a generator is scored against
    FOLDS = 23  # --folds: the order in which each class is dealt into folds
    QUANTIZE = 29  # export --quantize int8: the training images its activation ranges come from
    GAN_SPREAD = 31  # the GAN's collapse monitor: the real images and the noise it compares at each checkpoint


def choice_generator(*parts: int) -> torch.Generator:
    """A generator for one seeded choice: its seed hashed (32 bits) from `parts`, the last of which is the
    stream's `Stream` tag, e.g. `choice_generator(seed, Stream.PER_CLASS)`."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]))


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


# The training loader's streams: functions of (seed, epoch[, step]) with different numbers of parts, so none
# collides with another.

def order_generator(seed: int, epoch: int) -> torch.Generator:
    """The epoch's order of the training images (and its resampling)."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch))


def augment_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """One training batch's augmentation."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, step))


def synthetic_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """Which synthetic images fill one training batch's share (--synthetic)."""
    return torch.Generator().manual_seed(mix_seed(seed, epoch, step, 1))


def flip_seed(seed: int) -> int:
    """The seed of --alternate-flip's choice of the half flipped in even epochs (four parts: apart from every
    (seed, epoch[, step]) stream)."""
    return mix_seed(seed, 0, 0, 0)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Python's, NumPy's and torch's global generators (initial weights, dropout), and deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic
