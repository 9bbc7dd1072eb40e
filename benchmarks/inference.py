"""Offline inference: images/s and the held-out accuracy each runtime keeps, for one or more bundles.

    python benchmarks/inference.py --data DIR RUN [RUN ...] [--batch-size 256] [--rounds 3] [--inductor]

DIR holds cifar-10-batches-py; each RUN is a run folder with its bundle, its float ONNX export (model.onnx) and
its int8 export (model.int8.onnx; `imagefit export --bundle RUN [--quantize int8]` make them). For each run,
every runtime scores the same 5,000 held-out images, no TTA (one view: the runtimes are compared, not the views):
  - eager: the PyTorch bundle (float32, channels_last, imagefit's predictor);
  - inductor (with --inductor): torch.compile of the same network with freezing (constant-folded weights, oneDNN
    weight prepacking), float32; its compile time printed apart;
  - onnx: ONNX Runtime, float32 export;
  - onnx-int8: ONNX Runtime, the int8 export.
images/s is the best of --rounds timed passes over the 5,000 at --batch-size (after one warm-up pass), all in one
run, interleaved by round, so the ratios are fair on a shared machine. Accuracy is each runtime's own argmax.
Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

import imagefit
from imagefit.bundle import load_bundle
from imagefit.evaluation.evaluate import split_images
from imagefit.runtime import cpu_has_native_bf16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--inductor", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    machine = f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}, " \
              f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    print(machine, flush=True)
    results = {}
    for run in a.runs:
        run = Path(run)
        bundle = load_bundle(run)
        test = split_images(bundle, a.data, "test")
        images, labels = test.images, test.labels
        batches = images.split(a.batch_size)
        runtimes = {"eager": imagefit.load(run, backend="pytorch").predictor,
                    "onnx": imagefit.load(run / "model.onnx").predictor,
                    "onnx-int8": imagefit.load(run / "model.int8.onnx").predictor}
        logits_of = {name: (lambda x, pr=pr: pr._logits(x.float())) for name, pr in runtimes.items()}
        compile_s = None
        if a.inductor:
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            from imagefit.deploy.export import Deployable
            module = Deployable(bundle).eval().to(memory_format=torch.channels_last)
            compiled = torch.compile(module, dynamic=False)
            t = time.perf_counter()
            with torch.no_grad():
                for x in {b.shape[0]: b for b in batches}.values():  # one compile per batch shape
                    compiled(x.float().contiguous(memory_format=torch.channels_last))
            compile_s = time.perf_counter() - t
            logits_of["inductor"] = lambda x: compiled(x.float().contiguous(memory_format=torch.channels_last))
        best = {name: float("inf") for name in logits_of}
        accuracy = {}
        with torch.no_grad():
            for round_ in range(a.rounds + 1):  # round 0 warms up and gives the accuracy
                for name, logits in logits_of.items():
                    t = time.perf_counter()
                    outs = [logits(x) for x in batches]
                    seconds = time.perf_counter() - t
                    if round_ == 0:
                        accuracy[name] = (torch.cat(outs).argmax(1) == labels).float().mean().item()
                    else:
                        best[name] = min(best[name], seconds)
        rows = {name: {"images_per_s": round(len(images) / best[name], 1), "accuracy": accuracy[name]}
                for name in logits_of}
        eager = rows["eager"]["images_per_s"]
        print(f"\n{run} ({bundle.config.model.model}, {len(images):,} held-out images, batch {a.batch_size})")
        for name, r in rows.items():
            print(f"  {name:10s} {r['images_per_s']:9.1f} images/s  {r['images_per_s'] / eager:5.2f}x eager  "
                  f"accuracy {100 * r['accuracy']:.2f}%")
        if compile_s is not None:
            print(f"  (inductor compile: {compile_s:.1f} s)")
        results[str(run)] = {"model": bundle.config.model.model, "rows": rows, "inductor_compile_s": compile_s}
    out = Path(a.out) / f"inference-{date.today()}.json"
    n = 1
    while out.exists():
        n += 1
        out = out.with_name(f"inference-{date.today()}-{n}.json")
    out.write_text(json.dumps({"machine": machine, "batch_size": a.batch_size, "runs": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
