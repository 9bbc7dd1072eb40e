"""What each augmentation costs on a whole batch, against one training step of ResNet18 and of `fast`'s net.

    python benchmarks/augment.py --data DIR [--steps 7] [--batch-size 128]

DIR holds cifar-10-batches-py. All figures come from one run, interleaved, so the ratios are fair on a shared
machine. For each setting of the augmentation (crop+flip alone, then each of colour jitter, RandAugment,
TrivialAugment, random erasing, mixup/CutMix, and all of them), prints the median time of one augmented batch
(uint8 images in memory → normalized, channels_last, targets) and its share of:
  - one ResNet18 training step (CIFAR stem, batch --batch-size, the run's precision: bfloat16 where native);
  - one training step of `fast`'s net (fastnet, batch 500; the augmentation's time scaled to 500 images). The steps
    are plain SGD steps, a little cheaper than `fast`'s Muon steps, so the shares are if anything overstated.
The issue's targets: at most 5% of a ResNet18 step and 10% of a `fast` step. Beside, the anchor a torchvision user
would write: `transforms.v2.RandAugment()` called once per image over the same batch (it draws one op per call).
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
import torch.nn as nn
import torchvision.transforms.v2 as T

from imagefit.config import AugmentConfig, Config
from imagefit.data.augment import BatchAugment
from imagefit.data.sources import load_splits
from imagefit.models import create_model
from imagefit.preprocessing import Normalize
from imagefit.runtime import autocast_for, cpu_has_native_bf16

SETTINGS = {
    "crop+flip": {},
    "color-jitter 0.4 + hue 0.1": {"color_jitter": 0.4, "hue": 0.1},
    "rand-m9-n2": {"augment_policy": "rand-m9-n2"},
    "trivial": {"augment_policy": "trivial"},
    "random-erasing 0.25": {"random_erasing": 0.25},
    "mixup 0.2 / cutmix 1.0": {"mixup": 0.2, "cutmix": 1.0},
    "all of them + cutout 12": {"color_jitter": 0.4, "hue": 0.1, "augment_policy": "trivial", "random_erasing": 0.25,
                                "mixup": 0.2, "cutmix": 1.0, "cutout": 12},
}


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()

    cfg = Config()
    cfg.data.data, cfg.data.val_fraction = a.data, 0.0
    splits = load_splits(cfg.data, 0)
    images, labels = splits.train.images, splits.train.labels
    normalize = Normalize(splits.mean, splits.std, True)
    autocast, _ = autocast_for(torch.device("cpu"), "auto")

    nets = {}
    for name, model_name, batch in (("resnet18", "resnet18", a.batch_size), ("fast", "fastnet", 500)):
        mc = Config().model
        mc.model = model_name
        model = create_model(10, mc).to(memory_format=torch.channels_last).train()
        x = normalize(images[:batch])
        if hasattr(model, "init_from_data"):
            model.init_from_data(x)
        nets[name] = (model, x, labels[:batch])
    augmenters = {k: BatchAugment(AugmentConfig(crop_padding=4, **v), normalize, len(images), 0, 10)
                  for k, v in SETTINGS.items()}
    randaugment = T.RandAugment()
    times: dict[str, list[float]] = {k: [] for k in [*SETTINGS, "torchvision RandAugment per image", *nets]}
    for step in range(a.steps + 1):  # the first round warms up and is dropped
        idx = torch.randint(len(images), (a.batch_size,), generator=torch.Generator().manual_seed(step))
        x, y = images[idx], labels[idx]
        for k, aug in augmenters.items():
            t = time.perf_counter()
            aug(x, y, torch.Generator().manual_seed(step), idx, 5)
            times[k].append(time.perf_counter() - t)
        t = time.perf_counter()
        out = torch.stack([randaugment(img) for img in x])
        normalize(out)
        times["torchvision RandAugment per image"].append(time.perf_counter() - t)
        for name, (model, bx, by) in nets.items():
            times[name].append(step_time(model, bx, by, autocast))
    med = {k: median(v[1:]) for k, v in times.items()}
    r18, fast = med["resnet18"], med["fast"]
    machine = f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}, " \
              f"{torch.get_num_threads()} threads"
    print(f"{machine}; one training step: ResNet18 batch {a.batch_size} {1000 * r18:.0f} ms, fast's net batch 500 "
          f"{1000 * fast:.0f} ms")
    print(f"{'augmentation of a batch of ' + str(a.batch_size):42s} {'ms':>8s} {'/ResNet18 step':>15s} "
          f"{'/fast step (x500/batch)':>24s}")
    rows = {}
    for k in [*SETTINGS, "torchvision RandAugment per image"]:
        per_500 = med[k] * 500 / a.batch_size  # fast trains at batch 500: its batch costs this much more to augment
        rows[k] = {"ms": round(1000 * med[k], 2), "share_resnet18_step": round(med[k] / r18, 4),
                   "share_fast_step": round(per_500 / fast, 4)}
        print(f"{k:42s} {1000 * med[k]:8.1f} {100 * med[k] / r18:14.1f}% {100 * per_500 / fast:23.1f}%")
    out = Path(a.out) / f"augment-{date.today()}.json"
    n = 1
    while out.exists():
        n += 1
        out = out.with_name(f"augment-{date.today()}-{n}.json")
    out.write_text(json.dumps({"machine": machine, "batch_size": a.batch_size, "step_ms": {
        "resnet18": round(1000 * r18, 1), "fast": round(1000 * fast, 1)}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
