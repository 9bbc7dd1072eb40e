"""Probe: one BatchNorm layer's forward + backward on a fastnet-small activation (one rank's half of batch 500),
PyTorch's own against imagefit.training.distributed.GlobalBatchNorm2d in a Gloo group of one (the all-reduces are real
calls, the statistics local), one thread as each torchrun rank has. Median of 20 after 3 warm-up steps.

    python benchmarks/probes/sync_bn.py
"""
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from imagefit.training.distributed import sync_batchnorm

torch.set_num_threads(1)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
dist.init_process_group("gloo", rank=0, world_size=1)


def step_ms(bn: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> float:
    times = []
    for i in range(23):
        x.grad = None
        t = time.perf_counter()
        bn(x).backward(dy)
        if i >= 3:
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


for shape in [(250, 64, 32, 32), (250, 256, 16, 16), (250, 256, 8, 8)]:
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn_like(x)  # a gradient in the layout a conv backward gives (sum().backward() would hand BN a broadcast one)
    native = nn.BatchNorm2d(shape[1])
    ours = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(shape[1])), cuda=False)
    a, b = step_ms(native, x, dy), step_ms(ours, x, dy)
    print(f"{str(shape):<20} native {a:7.2f} ms   global {b:7.2f} ms   ratio {b / a:.2f}")
dist.destroy_process_group()
