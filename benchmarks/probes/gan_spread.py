"""Replay the GAN collapse monitor (gan.SpreadMonitor, what `generate train --family gan` logs at each checkpoint)
on every snapshot a finished GAN run kept: for runs made before the monitor existed.

    python benchmarks/probes/gan_spread.py GAN_FOLDER DATA_DIR   # DATA_DIR holds the cifar-10-batches-py it trained on
"""
import sys, torch
from pathlib import Path
from imagefit.generative.gan import SpreadMonitor, collapse_warning, load_gan, SPREAD_WARN
from imagefit.generative.generate import snapshots
from imagefit.data.sources import read_cifar10
torch.set_num_threads(1)
folder = Path(sys.argv[1])
train, _ = read_cifar10(Path(sys.argv[2]) / "cifar-10-batches-py")
gen, cfg = load_gan(folder / "gan.pt")
monitor = SpreadMonitor(train.images, train.labels, cfg)
spread = []
for step, path in snapshots(folder):
    gen, _ = load_gan(folder / "gan.pt", path)
    r = monitor(gen)
    low = int(r.argmin())
    spread.append({"step": step, "mean": round(float(r.mean()), 4), "lowest": round(float(r[low]), 4), "class": cfg.classes[low]})
    w = collapse_warning(spread)
    flag = "  <- warning: " + w if w and (len(spread) < 2 or spread[-2]["lowest"] >= SPREAD_WARN) else ""
    print(f"step {step}: spread {spread[-1]['mean']:.2f} (lowest {spread[-1]['lowest']:.2f}, {spread[-1]['class']}){flag}")
