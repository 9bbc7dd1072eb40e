"""The images, from a folder to batches: `sources` (CIFAR-10 batches, ImageFolder trees, the download, the splits and
their statistics; `ImageSet` in memory, `FileSet` streamed), `imbalance` (imbalanced study sets and the resampling
remedies), `augment` (per-image-random augmentation of whole batches), `policy` (colour jitter, RandAugment,
TrivialAugment, random erasing), `mix` (mixup and CutMix, which turn the targets into probabilities) and `loader` (the in-memory batch path, and the
streaming one through DataLoader workers, yielding the same batches).

May import: errors, config, files, preprocessing, seeds.
"""
