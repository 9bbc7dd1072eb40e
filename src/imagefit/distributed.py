"""Data-parallel training under torchrun: `torchrun --nproc-per-node N -m imagefit train ...`.

Every process builds the same model from the same seed and walks the same seeded batch order; each global batch
is augmented whole (so it is exactly the batch one process would see) and each rank trains on its contiguous
1/N slice. DistributedDataParallel averages the gradients, so a step equals one process's step on the global
batch, up to BatchNorm, whose batch statistics are each rank's own (rank 0's running statistics are broadcast).
Gloo on CPUs, NCCL on GPUs. Only rank 0 logs, tracks and writes files; every rank evaluates, so they agree on
early stopping and the best epoch without exchanging more than the epoch's sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ImagefitError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def setup(device: str) -> World:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group("nccl" if cuda else "gloo")
        except (RuntimeError, ValueError) as e:
            raise ImagefitError(f"could not join the torchrun process group ({str(e)[:100]}); start with "
                                f"'torchrun --nproc-per-node N -m imagefit train ...'") from None
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
