"""Probe: training-step speed of the fast nets on this CPU, float32 against bfloat16 autocast, per width and batch
(channels_last, 32 px, whitening bias frozen). Rounds interleave the variants so ratios come from one run.

    python benchmarks/probes/step_speed.py [ROUNDS] [WIDTHS ...]     e.g. 3 32,64,128 64,256,256
"""
import sys
import time

import torch
import torch.nn as nn

from imagefit.allocator import keep_freed_memory
from imagefit.models import FastNet, count_params

keep_freed_memory()
torch.manual_seed(0)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
widths = [tuple(int(w) for w in s.split(",")) for s in sys.argv[2:]] or [(32, 64, 128), (64, 256, 256)]
variants = {}
for w in widths:
    for batch in (250, 500):
        for dtype in ("fp32", "bf16"):
            m = FastNet(10, w).to(memory_format=torch.channels_last).train()
            m.set_epoch(5)
            opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
            x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,))
            variants[(w, batch, dtype)] = (m, opt, x, y)


def step(m, opt, x, y, dtype) -> float:
    start = time.perf_counter()
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


times = {k: [] for k in variants}
for r in range(rounds + 1):
    for k, (m, opt, x, y) in variants.items():
        for _ in range(2):
            t = step(m, opt, x, y, k[2])
            if r:
                times[k].append(t)
for (w, batch, dtype), ts in times.items():
    med = sorted(ts)[len(ts) // 2]
    ref = sorted(times[(w, batch, "fp32")])[len(ts) // 2]
    n = count_params(variants[(w, batch, dtype)][0])
    print(f"widths {w!s:15s} ({n / 1e6:.2f}M) batch {batch:4d} {dtype}: {med * 1000:7.0f} ms/step "
          f"{batch / med:6.0f} img/s  {ref / med:.2f}x fp32")
