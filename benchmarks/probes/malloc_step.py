"""Probe: one fastnet-small training step (batch 500, 32 px) with glibc's default allocator or with freed memory
kept in the process (imagefit.allocator); median step time and minor page faults per step, one process per setting.

    python benchmarks/probes/malloc_step.py default
    python benchmarks/probes/malloc_step.py tuned
"""
import resource
import sys
import time

import torch
import torch.nn as nn

from imagefit.allocator import keep_freed_memory
from imagefit.config import ModelConfig
from imagefit.models import create_model

if sys.argv[1] == "tuned":
    keep_freed_memory()
m = create_model(10, ModelConfig(model="fastnet-small")).to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
x = torch.randn(500, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (500,))


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


times, first = [], 0
for i in range(12):
    if i == 2:  # two warm-up steps
        first = faults()
    start = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
    times.append(time.perf_counter() - start)
median = sorted(times[2:])[5]
print(f"{sys.argv[1]}: step {median * 1000:.0f} ms, {500 / median:.0f} img/s, minor faults/step "
      f"{(faults() - first) / 10:.0f}, maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
