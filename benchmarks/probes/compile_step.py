"""Probe: one training step of a model, eager against torch.compile (inductor), on CUDA or the CPU, bfloat16
autocast and channels_last as training runs them. Steps alternate in rounds, so the ratio comes from one run.
The compile time (first compiled steps) is printed apart: it is what a run pays once.

    python benchmarks/probes/compile_step.py [--device cuda] [--model resnet18] [--batch 128] [--rounds 20]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

from imagefit.config import ModelConfig
from imagefit.models import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def variant(compiled: bool):
        torch.manual_seed(0)
        model = create_model(10, ModelConfig(model=a.model, stem="cifar")).to(dev, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return torch.compile(step) if compiled else step

    steps = {"eager": variant(False), "compiled": variant(True)}
    first = {}
    for k, f in steps.items():  # warm-up: the compile happens here
        start = time.perf_counter()
        for _ in range(3):
            f()
        sync()
        first[k] = time.perf_counter() - start
    times = {k: [] for k in steps}
    for _ in range(a.rounds):
        for k, f in steps.items():
            sync()
            start = time.perf_counter()
            for _ in range(5):
                f()
            sync()
            times[k].append((time.perf_counter() - start) / 5)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                      "model": a.model, "batch": a.batch, "size": a.size,
                      "step_ms": {k: round(v * 1e3, 2) for k, v in med.items()},
                      "images_per_s": {k: round(a.batch / v) for k, v in med.items()},
                      "compiled_speedup": round(med["eager"] / med["compiled"], 3),
                      "warmup_s": {k: round(v, 1) for k, v in first.items()}}))


if __name__ == "__main__":
    main()
