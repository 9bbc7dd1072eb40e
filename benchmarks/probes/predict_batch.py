"""A predictor's cost per image by batch size: the batches that concurrent batch-1 requests make in `imagefit serve`
against the offline batch of 256. Same settings as the server: inference threads, no spinning, TTA none.

    python benchmarks/probes/predict_batch.py --bundle RUN [--threads 2] [--batches 1,8,32,256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imagefit.deploy.inference import load_predictor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve import throughput  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8,32,256")
    p.add_argument("--backends", default="onnx,pytorch")
    args = p.parse_args()
    for backend in args.backends.split(","):
        predictor = load_predictor(args.bundle, backend, args.threads, spin=False)
        for b in map(int, args.batches.split(",")):
            images_per_s, cpu_ms = throughput(predictor, "none", b, images=1024, warmup=3)
            print(f"{backend:>8} batch {b:4d}: {images_per_s:7.1f} images/s, {cpu_ms:.2f} CPU ms per image", flush=True)
