"""Core speed and memory figures, all measured in one run so ratios are fair on a shared machine.

    python benchmarks/core.py --data DIR [--model resnet18] [--batch-size 128] [--steps 8]

DIR holds cifar-10-batches-py (e.g. from ../shared/datasets/make-cifar10). Prints:
  - dataset memory: the uint8 tensor's bytes against float32's;
  - augmented-batch time (crop+flip+normalize, the fast path) against one training step, and the ratio;
  - one training step, contiguous against channels_last memory layout;
  - imagefit's training images/s against a bare PyTorch loop on the same model, batch and layout, interleaved;
  - inference images/s;
  - peak resident memory of a real `imagefit train` process (batch as given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from imagefit.data.augment import BatchAugment
from imagefit.preprocessing import Normalize
from imagefit.config import AugmentConfig, Config, DataConfig, ModelConfig
from imagefit.data.sources import load_splits
from imagefit.data.loader import Loader
from imagefit.models import create_model
from imagefit.runtime import autocast_for, cpu_has_native_bf16, resolve_amp
from imagefit.training.train import RunOptions, Trainer


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_step(model, opt, x, y, steps, autocast=contextlib.nullcontext):
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return median(times)


def bare_loop(data, model_cfg, batch, steps, channels_last, autocast) -> float:
    """The plainest loop: pre-normalized random batches from memory, no augmentation, no bookkeeping; in the
    precision the Trainer runs (a skilled user autocasts too where the CPU has native bfloat16)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(10, model_cfg).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = (data.images[:batch].float() / 255).contiguous(memory_format=fmt)
    y = data.labels[:batch]
    time_step(model, opt, x, y, 2, autocast)  # warm-up: oneDNN builds its kernels on the first steps
    t = time.perf_counter()
    time_step(model, opt, x, y, steps, autocast)
    return steps * batch / (time.perf_counter() - t)


def imagefit_loop(data_dir, model_name, batch, steps, channels_last, amp) -> float:
    """imagefit's own Trainer (loader, augmentation, loss, schedule, bookkeeping) for warm-up+steps steps,
    minus a warm-up-only run, so setup and first-step kernel building cancel out."""
    def run(n):
        cfg = Config()
        cfg.data.data, cfg.data.val_fraction = str(data_dir), 0.0
        cfg.model.model, cfg.train.batch_size = model_name, batch
        cfg.train.channels_last, cfg.train.amp = ("yes" if channels_last else "no"), amp
        with tempfile.TemporaryDirectory() as out:
            tr = Trainer(cfg, RunOptions(out=Path(out) / "r", tracking_uri="none", stop_after_steps=n,
                                         progress="lines", log=lambda m: None))
            tr.fit()
            return tr.seconds
    warm = run(2)
    return steps * batch / (run(2 + steps) - warm)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--amp", choices=("auto", "bf16", "no"), default="auto",
                    help="precision of every timed step, the Trainer's and the bare loop's (auto: as --amp auto)")
    args = ap.parse_args()
    b, figures = args.batch_size, {}
    amp = resolve_amp(torch.device("cpu"), args.amp)
    autocast = autocast_for(torch.device("cpu"), amp)[0]
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16 {'yes' if cpu_has_native_bf16() else 'no'}; timed steps in {'bfloat16' if amp == 'bf16' else 'float32'}")

    splits = load_splits(DataConfig(data=args.data, val_fraction=0.0), seed=0)
    train = splits.train
    figures["dataset_uint8_mb"] = train.images.numel() / 2**20
    figures["dataset_float32_mb"] = train.images.numel() * 4 / 2**20
    print(f"dataset in memory: {figures['dataset_uint8_mb']:.0f} MB as uint8 (float32 would be "
          f"{figures['dataset_float32_mb']:.0f} MB)")

    # Augmented batches: the whole fast path from the uint8 tensor to a normalized float batch.
    for cl in (False, True):
        norm = Normalize(splits.mean, splits.std, cl)
        loader = Loader(train, b, norm, augment=BatchAugment(AugmentConfig(), norm), shuffle=True, drop_last=True)
        it = loader.batches(0)
        next(it)
        t = time.perf_counter()
        n = 50
        for _ in range(n):
            next(it)
        figures[f"batch_ms_{'cl' if cl else 'nchw'}"] = (time.perf_counter() - t) / n * 1000

    # One training step in each memory layout.
    mcfg = ModelConfig(model=args.model)
    for cl in (False, True):
        torch.manual_seed(0)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = create_model(10, mcfg).to(memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(b, 3, 32, 32).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (b,))
        time_step(model, opt, x, y, 2, autocast)
        figures[f"step_ms_{'cl' if cl else 'nchw'}"] = time_step(model, opt, x, y, args.steps, autocast) * 1000
    cl = figures["step_ms_cl"] < figures["step_ms_nchw"]
    layout = "cl" if cl else "nchw"
    print(f"training step ({args.model}, batch {b}): {figures['step_ms_nchw']:.0f} ms contiguous, "
          f"{figures['step_ms_cl']:.0f} ms channels_last")
    ratio = figures[f"batch_ms_{layout}"] / figures[f"step_ms_{layout}"]
    figures["batch_over_step"] = ratio
    print(f"augmented batch (crop+flip+normalize): {figures['batch_ms_nchw']:.2f} ms contiguous, "
          f"{figures['batch_ms_cl']:.2f} ms channels_last = {100 * ratio:.2f}% of a step")

    # imagefit against a bare loop, interleaved so drifting machine load hits both alike.
    bare, ours = [], []
    for _ in range(2):
        bare.append(bare_loop(train, mcfg, b, args.steps, cl, autocast))
        ours.append(imagefit_loop(args.data, args.model, b, args.steps, cl, amp))
    figures["bare_img_s"], figures["imagefit_img_s"] = max(bare), max(ours)
    figures["overhead_pct"] = 100 * (1 - figures["imagefit_img_s"] / figures["bare_img_s"])
    print(f"training images/s ({'channels_last' if cl else 'contiguous'}): bare loop {figures['bare_img_s']:.0f}, "
          f"imagefit {figures['imagefit_img_s']:.0f} (runs: bare {[round(v) for v in bare]}, imagefit "
          f"{[round(v) for v in ours]}); imagefit overhead {figures['overhead_pct']:.1f}%")

    # Inference.
    model = create_model(10, mcfg).eval().to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    x = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(3):
            model(x)
        figures["inference_img_s"] = 3 * 256 / (time.perf_counter() - t)
    print(f"inference images/s (batch 256): {figures['inference_img_s']:.0f}")

    if not args.skip_memory:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "imagefit", "train", "--data", args.data, "--model", args.model,
                   "--batch-size", str(b), "--out", f"{out}/r", "--tracking-uri", "none",
                   "--stop-after-steps", "10", "--progress", "lines"]
            subprocess.run(cmd, check=True, capture_output=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB → GiB
        figures["train_peak_rss_gb"] = peak
        print(f"peak resident memory of 'imagefit train --model {args.model} --batch-size {b}': {peak:.2f} GB")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
