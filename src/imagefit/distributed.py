"""Data-parallel training under torchrun: `torchrun --nproc-per-node N -m imagefit train ...`.

Every process builds the same model from the same seed and walks the same seeded batch order; each global batch
is augmented whole (so it is exactly the batch one process would see) and each rank trains on its contiguous
1/N slice. DistributedDataParallel averages the gradients and BatchNorm normalizes by the statistics of the whole
global batch (`sync_batchnorm`), so a step is one process's step on the global batch, up to the order of float
sums. Gloo on CPUs, NCCL on GPUs. Only rank 0 logs, tracks and writes files; every rank evaluates, so they agree on
early stopping and the best epoch without exchanging more than the epoch's sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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


# Why by hand: torch.nn.SyncBatchNorm refuses CPU tensors (PyTorch 2.14), and without it each of N CPU ranks
# normalizes by its own 1/N of the batch: the fast recipe lost 0.62 points held-out at 2 ranks that way
# (benchmarks/RESULTS.md, issue 8). On CUDA we use PyTorch's own.
class _GlobalBatchNorm(torch.autograd.Function):
    """Batch normalization over the batch of every rank: per-channel sums all-reduced in the forward pass (count,
    sum, sum of squares, in float64 so the variance does not cancel) and again in the backward pass (sum of dy and
    of dy·x̂, the two reductions the input gradient needs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        n = x.numel() // c
        mean, var = mean.double(), var.double()
        sums = torch.cat([mean * n, (var + mean * mean) * n, mean.new_full((1,), n)])
        dist.all_reduce(sums, group=group)
        total = sums[-1]
        g_mean = sums[:c] / total
        g_var = (sums[c:2 * c] / total - g_mean * g_mean).clamp_min(0)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = (g_var + eps).rsqrt().to(x.dtype)
        xhat = (x - g_mean.to(x.dtype).view(shape)) * invstd.view(shape)
        y = xhat * weight.view(shape) + bias.view(shape) if weight is not None else xhat
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.group, ctx.total, ctx.dims, ctx.shape = group, total.item(), dims, shape
        unbiased = g_var * (total / (total - 1)) if total > 1 else g_var
        return y, g_mean.to(x.dtype), unbiased.to(x.dtype)

    @staticmethod
    def backward(ctx, dy, _d_mean, _d_var):
        xhat, weight, invstd = ctx.saved_tensors
        c, shape = xhat.shape[1], ctx.shape
        sum_dy, sum_dy_xhat = dy.sum(ctx.dims), (dy * xhat).sum(ctx.dims)
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums, group=ctx.group)
        scale = invstd if weight is None else invstd * weight
        dx = (dy - (sums[:c] / ctx.total).view(shape) - xhat * (sums[c:] / ctx.total).view(shape)) * scale.view(shape)
        d_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        d_bias = sum_dy if weight is not None and ctx.needs_input_grad[2] else None
        return dx, d_weight, d_bias, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across the process group; the
    same parameters and buffers as the layer it replaces, so bundles and checkpoints do not change."""

    group = None

    def forward(self, x):
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        y, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps, self.group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                rate = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var, rate)
        return y


def sync_batchnorm(model: nn.Module, cuda: bool) -> nn.Module:
    """Make every BatchNorm2d normalize over the global batch: PyTorch's SyncBatchNorm on CUDA, ours on CPU.
    Ours is swapped in place (the module's class), so the optimizer's parameters and every reference stay valid."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return model
