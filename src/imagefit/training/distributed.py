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
import torch.nn.functional as F
from torch import nn

from ..errors import ImagefitError


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
    """Batch normalization over the batch of every rank. Forward: per-channel count, sum and sum of squares
    all-reduced (in float64, so the variance does not cancel), then PyTorch's fused normalization with those
    statistics. Backward: the two reductions of PyTorch's batch-norm gradient (Σdy and Σdy·x̂ over this rank's
    images), all-reduced, then the input gradient in two fused passes: x̂·a + b by the normalization kernel, plus
    dy·k. Fused kernels throughout: written out elementwise it ran 4.5× slower than PyTorch's BatchNorm
    (benchmarks/probes/sync_bn.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        c = x.shape[1]
        # the statistics half of PyTorch's CPU batch norm (13 ms here on a 250×64×32×32 channels_last
        # activation, where torch.var_mean takes 166 ms): per-channel mean and biased variance
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        n = x.numel() // c
        mean, var = mean.double(), var.double()
        sums = torch.cat([mean * n, (var + mean * mean) * n, mean.new_full((1,), n)])
        dist.all_reduce(sums)  # the default group: the one torchrun's ranks joined
        total = sums[-1].item()
        g_mean = sums[:c] / total
        g_var = (sums[c:2 * c] / total - g_mean * g_mean).clamp_min(0)
        mean, var = g_mean.to(x.dtype), g_var.to(x.dtype)
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.local, ctx.total = eps, n, total
        return y, mean, g_var.mul(total / max(total - 1, 1)).to(x.dtype)  # running variance: unbiased

    @staticmethod
    def backward(ctx, dy, _d_mean, _d_var):
        x, weight, mean, var = ctx.saved_tensors
        c = x.shape[1]
        w = weight if weight is not None else x.new_ones(c)
        invstd = (var + ctx.eps).rsqrt()
        dy = dy.contiguous(memory_format=_layout(x))
        _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(  # the two reductions only
            dy, x, w, None, None, mean, invstd, True, ctx.eps, [False, True, True])
        sums = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(sums)
        k = w * invstd  # dx = k·(dy − Σdy/N − x̂·Σ(dy·x̂)/N), the sums over every rank's N images
        dx = F.batch_norm(x, mean, var, -k * sums[c:] / ctx.total, -k * sums[:c] / ctx.total, False, 0.0, ctx.eps)
        dx.addcmul_(dy, k.view(1, c, *[1] * (x.dim() - 2)))
        d_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        d_bias = sum_dy if weight is not None and ctx.needs_input_grad[2] else None
        return dx, d_weight, d_bias, None


def _layout(x: torch.Tensor):
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across the process group; the
    same parameters and buffers as the layer it replaces, so bundles and checkpoints do not change."""

    def forward(self, x):
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        # Under bfloat16 autocast the input arrives in bfloat16 while the parameters stay float32; PyTorch's
        # BatchNorm takes the mix, the fused kernels below do not: normalize in float32, hand back the input's dtype.
        y, mean, var = _GlobalBatchNorm.apply(x.to(torch.promote_types(x.dtype, torch.float32)), self.weight,
                                              self.bias, self.eps)
        y = y.to(x.dtype)
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
