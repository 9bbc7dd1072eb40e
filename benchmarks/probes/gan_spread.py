"""Replay the GAN collapse monitor (gan.SpreadMonitor, what `generate train --family gan` logs at each checkpoint)
on every snapshot a finished GAN run kept: for runs made before the monitor existed.

    python benchmarks/probes/gan_spread.py GAN_FOLDER DATA_DIR   # DATA_DIR: the cifar-10-batches-py it trained on
"""

import sys
from pathlib import Path

import torch

from imagefit.data.sources import read_cifar10
from imagefit.generative.gan import SpreadMonitor, load_gan, record_spread
from imagefit.generative.generate import snapshots

torch.set_num_threads(1)
folder = Path(sys.argv[1])
train, _ = read_cifar10(Path(sys.argv[2]) / "cifar-10-batches-py")
gen, cfg = load_gan(folder / "gan.pt")
monitor, spread = SpreadMonitor(train.images, train.labels, cfg), []
for step, path in snapshots(folder):
    warning = record_spread(spread, step, monitor(load_gan(folder / "gan.pt", path)[0]), cfg.classes)
    last = spread[-1]
    print(f"step {step}: spread {last['mean']:.2f} (lowest {last['lowest']:.2f}, {last['class']})"
          + (f"  <- warning: {warning}" if warning else ""))
