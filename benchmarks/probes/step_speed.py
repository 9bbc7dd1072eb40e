"""Probe: training-step speed of the fast nets on this CPU, float32 against bfloat16 autocast, per width and batch
(channels_last, 32 px, whitening bias frozen). Rounds interleave the variants so ratios come from one run.

    python benchmarks/probes/step_speed.py [ROUNDS] [WIDTHS[:BLOCKS] ...]     e.g. 3 32,64,128 96,256,352:1,1,1

BLOCKS: residual BasicBlocks per group (fastnet-res is 96,256,352:1,1,1); none by default.

`step_medians` is the harness the other step probes share (activation_step.py).
"""
import sys
import time

import torch
import torch.nn as nn

from imagefit.allocator import keep_freed_memory
from imagefit.models import FastNet, count_params


def setup(model: nn.Module, batch: int):
    """The model in channels_last, training mode, whitening bias frozen; its SGD; one fixed batch."""
    model = model.to(memory_format=torch.channels_last).train()
    model.set_epoch(5)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return model, opt, x, torch.randint(0, 10, (batch,))


def step_medians(variants: dict, rounds: int, bf16=lambda key: False) -> dict:
    """Median seconds of one training step per variant (key -> setup(...) tuple): round 0 warms up, then each
    round takes two steps of every variant in turn, so machine drift hits all of them alike."""
    times = {k: [] for k in variants}
    for r in range(rounds + 1):
        for k, (m, opt, x, y) in variants.items():
            for _ in range(2):
                start = time.perf_counter()
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16(k)):
                    loss = nn.functional.cross_entropy(m(x), y)
                loss.backward()
                opt.step()
                if r:
                    times[k].append(time.perf_counter() - start)
    return {k: sorted(ts)[len(ts) // 2] for k, ts in times.items()}


def fastnet(spec: str) -> FastNet:
    """A FastNet from 'WIDTHS[:BLOCKS]', e.g. '96,256,352:1,1,1'."""
    widths, blocks = (tuple(int(v) for v in part.split(",")) for part in (spec.split(":") + ["0,0,0"])[:2])
    return FastNet(10, widths, residual_blocks=blocks)


if __name__ == "__main__":
    keep_freed_memory()
    torch.manual_seed(0)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    specs = sys.argv[2:] or ["32,64,128", "64,256,256"]
    variants = {(w, batch, dtype): setup(fastnet(w), batch)
                for w in specs for batch in (250, 500) for dtype in ("fp32", "bf16")}
    med = step_medians(variants, rounds, bf16=lambda k: k[2] == "bf16")
    for (w, batch, dtype), t in med.items():
        n = count_params(variants[(w, batch, dtype)][0])
        print(f"widths {w:18s} ({n / 1e6:.2f}M) batch {batch:4d} {dtype}: {t * 1000:7.0f} ms/step "
              f"{batch / t:6.0f} img/s  {med[(w, batch, 'fp32')] / t:.2f}x fp32")
