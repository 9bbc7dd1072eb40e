"""A predictor's cost per image by batch size: the batches that concurrent batch-1 requests make in `imagefit serve`
against the offline batch of 256. Same settings as the server: inference threads, no spinning, TTA none.

    python benchmarks/probes/predict_batch.py --bundle RUN [--threads 2] [--batches 1,8,32,256]
"""

from __future__ import annotations

import argparse
import time

import torch

from imagefit.inference import load_predictor

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8,32,256")
    p.add_argument("--backends", default="onnx,pytorch")
    args = p.parse_args()
    for backend in args.backends.split(","):
        predictor = load_predictor(args.bundle, backend, args.threads, spin=False)
        size = predictor.preprocessing["size"]
        for b in map(int, args.batches.split(",")):
            x = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)
            for _ in range(3):
                predictor.probabilities(x, "none")
            n = max(1, 1024 // b)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                predictor.probabilities(x, "none")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{backend:>8} batch {b:4d}: {n * b / wall:7.1f} images/s, "
                  f"{1e3 * cpu / (n * b):.2f} CPU ms per image", flush=True)
