"""Probe: what fastnet-small's activation costs in a training step (batch 500, 32 px, channels_last, whitening
bias frozen as after the recipe's first epoch). Each activation is swapped into the same network; rounds
interleave the variants so the ratios come from one run on a shared machine.

    python benchmarks/probes/activation_step.py [ROUNDS]
"""
import sys
import time

import torch
import torch.nn as nn

from imagefit.allocator import keep_freed_memory
from imagefit.config import ModelConfig
from imagefit.models import create_model

keep_freed_memory()
torch.manual_seed(0)
VARIANTS = {"gelu": nn.GELU(), "gelu-tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU(), "silu": nn.SiLU()}
x = torch.randn(500, 3, 32, 32).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (500,))


def build(act: nn.Module):
    m = create_model(10, ModelConfig(model="fastnet-small")).to(memory_format=torch.channels_last).train()
    m.set_epoch(5)
    for mod in m.modules():
        if hasattr(mod, "act"):
            mod.act = act
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    return m, opt


def step(m, opt) -> float:
    start = time.perf_counter()
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
    return time.perf_counter() - start


nets = {name: build(act) for name, act in VARIANTS.items()}
times: dict[str, list[float]] = {name: [] for name in VARIANTS}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6
for r in range(rounds + 1):
    for name, (m, opt) in nets.items():
        for _ in range(2):
            t = step(m, opt)
            if r:  # round 0 warms up
                times[name].append(t)
base = sorted(times["gelu"])[len(times["gelu"]) // 2]
for name, ts in times.items():
    med = sorted(ts)[len(ts) // 2]
    print(f"{name:10s} step {med * 1000:6.0f} ms  {500 / med:5.0f} img/s  {base / med:.2f}x gelu")
