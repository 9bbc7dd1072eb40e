"""Class imbalance: make imbalanced training sets for study, and the remedies.

- `--imbalance exp:R` keeps n_max·R^(−c/(K−1)) images of class c (the long-tailed CIFAR of Cui et al. 2019:
  largest/smallest = R); `step:R` keeps all of the first half of the classes and 1/R of the rest. n_max is the
  smallest class's size, so every class can give what the profile asks; the choice of images is seeded; the test
  split is never touched.
- `--balance oversample|undersample`: each epoch draws every class to the largest (with replacement) or to the
  smallest (without) class's count, seeded by (seed, epoch) like the plain order, so resume stays exact and the
  in-memory and streaming paths draw the same images. `reweight`: the loss weighs class c by N/(K·n_c).
- `--logit-adjust T`: at evaluation, scores − T·log(prior of the class in the training set) (Menon et al. 2021;
  applied by `preprocessing.adjust_logits`, part of the bundle's contract); `auto` picks T on the validation split
  (the best balanced accuracy over a grid).
"""

from __future__ import annotations

import torch

from ..seeds import Stream, choice_generator
from ..config import parse_imbalance
from ..errors import ImagefitError

TAU_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def counts_for(spec: str, sizes: list[int]) -> list[int]:
    """Images to keep per class (in class order) for the profile, refusing ratios the data cannot meet."""
    kind, ratio = parse_imbalance(spec)
    k, n_max = len(sizes), min(sizes)
    if ratio > n_max:
        raise ImagefitError(f"--imbalance {spec} needs {ratio:g} images or more in every class, and the smallest "
                            f"has {n_max}; the largest possible ratio here is {kind}:{n_max}")
    if kind == "exp":
        return [max(1, int(n_max * ratio ** (-c / max(k - 1, 1)))) for c in range(k)]
    return [n_max if c < (k + 1) // 2 else max(1, int(n_max / ratio)) for c in range(k)]


def imbalanced_subset(labels: torch.Tensor, spec: str, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded imbalanced subset."""
    sizes = [int((labels == c).sum()) for c in range(num_classes)]
    keep = counts_for(spec, sizes)
    g = choice_generator(seed, Stream.IMBALANCE)
    parts = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    return torch.cat([idx[torch.randperm(len(idx), generator=g)[:n]] for idx, n in zip(parts, keep)]).sort().values


def resampled_order(labels: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """One epoch's shuffled indices with every class drawn to the largest (oversample) or smallest (undersample)
    class's count."""
    parts = [torch.nonzero(labels == c).flatten() for c in labels.unique().tolist()]
    target = max(map(len, parts)) if mode == "oversample" else min(map(len, parts))
    drawn = []
    for idx in parts:
        if mode == "oversample":  # all of the class, then the rest drawn with replacement
            extra = idx[torch.randint(len(idx), (target - len(idx),), generator=gen)]
            drawn += [idx, extra]
        else:
            drawn.append(idx[torch.randperm(len(idx), generator=gen)[:target]])
    order = torch.cat(drawn)
    return order[torch.randperm(len(order), generator=gen)]


def epoch_size(labels: torch.Tensor, mode: str) -> int:
    if mode not in ("oversample", "undersample"):
        return len(labels)
    sizes = torch.bincount(labels)
    sizes = sizes[sizes > 0]
    return len(sizes) * int(sizes.max() if mode == "oversample" else sizes.min())


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N/(K·n_c): 1 for every class when balanced."""
    counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1)
    return (len(labels) / (num_classes * counts)).float()


def log_priors(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1)
    return (counts / counts.sum()).log().float()
