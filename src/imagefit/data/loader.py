"""Batches for training and evaluation, from memory (the fast path) or streamed from disk.

The epoch's order is a permutation seeded by (seed, epoch) and each batch's augmentation a generator seeded by
(seed, epoch, step), so a batch is a pure function of its position: resuming at step k of epoch e yields exactly
the batches an uninterrupted run would, with no generator state to save, and the in-memory and streaming paths
yield the same batches.

In memory, a batch is one index into the uint8 tensor (on the GPU when training there, so images cross the bus
once); no per-image Python objects exist. Streaming, a `torch.utils.data.DataLoader` with workers decodes the
files of the same indices, then the same batch augmentation runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augment import BatchAugment
from .sources import FileSet, ImageSet
from ..errors import ImagefitError
from .imbalance import epoch_size, resampled_order
from ..preprocessing import Normalize
from ..seeds import augment_generator, order_generator, synthetic_generator


class _Files(torch.utils.data.Dataset):
    def __init__(self, files: FileSet):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.files.read(i), self.files.labels[i]


class Loader:
    def __init__(self, data: ImageSet | FileSet, batch_size: int, normalize: Normalize, *,
                 augment: BatchAugment | None = None, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, device: torch.device = torch.device("cpu"), workers: int = 2, balance: str = "none",
                 synthetic: ImageSet | None = None, synthetic_ratio: float = 0.0, shard: tuple[int, int] = (0, 1)):
        # Synthetic images fill a fixed share of every batch (indices past the real ones); the epoch is still one
        # pass over the real images, `batch_size - n_synthetic` at a time.
        self.n_synthetic = round(synthetic_ratio * batch_size) if synthetic is not None else 0
        if self.n_synthetic:
            if not isinstance(data, ImageSet):
                raise ImagefitError("--synthetic needs the real images in memory (--in-memory yes)")
            self.n_real, self.synthetic_size = len(data), len(synthetic)
            data, batch_size = data.concat(synthetic), batch_size - self.n_synthetic
        self.data, self.batch_size, self.normalize, self.augment = data, batch_size, normalize, augment
        self.shuffle, self.seed, self.device, self.workers = shuffle, seed, device, workers
        # Data-parallel: every rank builds the whole global batch (the same augmentation as one process) and keeps
        # its contiguous slice, rank of world.
        self.rank, self.world = shard
        if self.world > 1 and (batch_size + self.n_synthetic) % self.world:
            raise ImagefitError(f"--batch-size {batch_size + self.n_synthetic} must divide evenly among "
                                f"{self.world} processes")
        self.balance = balance if balance in ("oversample", "undersample") else "none"  # reweight: the loss's job
        self.epoch_size = self.n_real if self.n_synthetic else epoch_size(data.labels, self.balance)
        self.weights: torch.Tensor | None = None  # per-image draw probabilities (boosting), set by the caller
        # Dropping the last partial batch keeps batch statistics steady, unless it would leave no batch at all.
        self.drop_last = drop_last and self.epoch_size >= batch_size
        if isinstance(data, ImageSet):
            self.images = data.images.to(device)
            self.labels = data.labels.to(device)

    def __len__(self) -> int:
        n = self.epoch_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.data))
        gen = order_generator(self.seed, epoch)
        if self.n_synthetic:
            return torch.randperm(self.n_real, generator=gen)
        if self.weights is not None:  # as many draws as images, with replacement, in proportion to the weights
            return torch.multinomial(self.weights, len(self.data), replacement=True, generator=gen)
        if self.balance != "none":
            return resampled_order(self.data.labels, self.balance, gen)
        return torch.randperm(len(self.data), generator=gen)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, images, targets) for the epoch's steps from `start` on; images ready for the model, targets the
        labels, or class probabilities where the augmentation mixed the batch (mixup, CutMix)."""
        order = self.order(epoch)[: len(self) * self.batch_size]
        chunks = list(order.split(self.batch_size))[start:]
        if self.n_synthetic:  # each batch's synthetic share, drawn by (seed, epoch, step) like everything else
            chunks = [torch.cat([c, self.n_real + torch.randint(
                self.synthetic_size, (self.n_synthetic,),
                generator=synthetic_generator(self.seed, epoch, step))])
                for step, c in enumerate(chunks, start=start)]
        for step, (index, (x, y)) in enumerate(zip(chunks, self._raw(chunks)), start=start):
            if self.augment is not None:
                gen = augment_generator(self.seed, epoch, step)
                x, y = self.augment(x, y, gen, index, epoch)
            else:
                x = self.normalize(x)
            if self.world > 1:
                x, y = x.chunk(self.world)[self.rank], y.chunk(self.world)[self.rank]
            yield step, x, y

    def _raw(self, chunks: list[torch.Tensor]):
        if isinstance(self.data, ImageSet):
            for idx in chunks:
                idx = idx.to(self.device)
                yield self.images[idx], self.labels[idx]
            return
        loader = torch.utils.data.DataLoader(_Files(self.data), batch_sampler=[c.tolist() for c in chunks],
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda",
                                             persistent_workers=False)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
