"""Probe: what fastnet-small's activation costs in a training step (batch 500, 32 px, channels_last, whitening
bias frozen as after the recipe's first epoch, float32). Each activation is swapped into the same network; the
variants interleave (step_speed.step_medians) so the ratios come from one run on a shared machine.

    python benchmarks/probes/activation_step.py [ROUNDS]
"""
import sys

import torch
import torch.nn as nn
from step_speed import setup, step_medians

from imagefit.allocator import keep_freed_memory
from imagefit.config import ModelConfig
from imagefit.models import create_model

keep_freed_memory()
torch.manual_seed(0)
VARIANTS = {"gelu": nn.GELU(), "gelu-tanh": nn.GELU(approximate="tanh"), "relu": nn.ReLU(), "silu": nn.SiLU()}


def with_activation(act: nn.Module) -> nn.Module:
    model = create_model(10, ModelConfig(model="fastnet-small"))
    for mod in model.modules():
        if hasattr(mod, "act"):
            mod.act = act
    return model


med = step_medians({name: setup(with_activation(act), 500) for name, act in VARIANTS.items()},
                   int(sys.argv[1]) if len(sys.argv) > 1 else 6)
for name, t in med.items():
    print(f"{name:10s} step {t * 1000:6.0f} ms  {500 / t:5.0f} img/s  {med['gelu'] / t:.2f}x gelu")
