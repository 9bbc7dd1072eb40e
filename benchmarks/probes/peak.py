"""This machine's practical compute ceilings, in the precisions training uses: a large matmul and a large 3×3
convolution through oneDNN (torch's CPU path), float32 and bfloat16, on the threads training would use.

    python benchmarks/probes/peak.py [--threads N] [--seconds 3]

Prints GFLOP/s per case (best of the repeats inside --seconds, after a warm-up) and a JSON line. The convolution
is channels_last (what training runs) at a shape like the fast net's widest layers (batch 256, 256→256 channels,
16×16); FLOPs are counted as 2·MACs. A recipe's achieved rate divided by the convolution ceiling says how much of
the machine its training uses (`benchmarks/speed.py --peak` runs this probe first and prints that share).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F


def rate(fn, flops: float, seconds: float) -> float:
    for _ in range(3):
        fn()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - start))
    return best / 1e9


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ceilings(seconds: float = 3.0, n: int = 2048) -> dict:
    """GFLOP/s of a large matmul and a large 3x3 convolution, float32 and bfloat16, on torch's current threads."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    results = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "native_bf16": native}
    x = torch.randn(256, 256, 16, 16).to(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).to(memory_format=torch.channels_last)
    conv_flops = 2 * 256 * 256 * 256 * 9 * 16 * 16
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            results[f"matmul_{name}_gflops"] = round(rate(lambda: a @ b, 2 * n ** 3, seconds), 1)
            xc, wc = x.to(dtype), w.to(dtype)
            results[f"conv3x3_{name}_gflops"] = round(rate(lambda: F.conv2d(xc, wc, padding=1), conv_flops,
                                                           seconds), 1)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--n", type=int, default=2048, help="matmul side")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = ceilings(args.seconds, args.n)
    for key, value in results.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
