"""Images/s of a bundle's ONNX export by batch size, through imagefit's predictor with and without its torch-threads
guard (OnnxPredictor.probabilities runs the tensor work around the session on one torch thread), alternated in one
process, and the eager PyTorch model beside them.

    python benchmarks/probes/onnx_batch.py RUN [RUN ...] [--threads 2] [--batches 1,2,8,16,32,256]

Without the guard, torch's pool threads spin after the float conversion and softmax on the cores ONNX Runtime's
pool needs next; this is what made `fast` at batch 2-32 run at a quarter to half of its batch-1 images/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from imagefit.deploy.inference import Predictor, load_predictor


def images_per_s(call, size: int, batch: int, images: int) -> float:
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    for _ in range(2):
        call(x)
    n = max(1, images // batch)
    start = time.perf_counter()
    for _ in range(n):
        call(x)
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batches", default="1,2,8,16,32,256")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        onnx = load_predictor(run, "onnx", args.threads, spin=False)
        eager = load_predictor(run, "pytorch", args.threads)
        size = onnx.preprocessing.size
        arms = {"onnx, guarded": lambda x: onnx.probabilities(x, "none"),
                "onnx, unguarded": lambda x: Predictor.probabilities(onnx, x, "none"),
                "eager": lambda x: eager.probabilities(x, "none")}
        print(f"{Path(run).name}: images/s by batch size (best of {args.repeats}), {args.threads} threads")
        for batch in map(int, args.batches.split(",")):
            best = {k: 0.0 for k in arms}
            for _ in range(args.repeats):
                for k, call in arms.items():
                    best[k] = max(best[k], images_per_s(call, size, batch, args.images))
            print(f"  batch {batch:4d}: " + "  ".join(f"{k} {v:7.0f}" for k, v in best.items()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
