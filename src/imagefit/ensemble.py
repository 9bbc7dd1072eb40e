"""Ensembles of bundles: soft voting (mean probability) or hard voting (majority, ties broken by probability), and
the figures that say whether an ensemble works: each member's error, the error independent members would give,
the observed error, and how often members disagree.
"""

from __future__ import annotations

import math

import torch

from .errors import ImagefitError


def check_same_classes(names: list[str], class_lists: list[list[str]]) -> None:
    """Refuse members whose class lists differ from the first one's, naming the difference."""
    first = class_lists[0]
    for name, classes in zip(names[1:], class_lists[1:]):
        if classes != first:
            missing, extra = sorted(set(first) - set(classes)), sorted(set(classes) - set(first))
            what = (f"lacks {', '.join(missing)}" if missing else "") + ("; " if missing and extra else "") + \
                (f"has {', '.join(extra)} besides" if extra else "")
            raise ImagefitError(f"{name} cannot join the ensemble: its classes differ from {names[0]}'s "
                                f"({what or 'same classes in another order'}); ensemble bundles of the same "
                                f"classes in the same order")


def combine(probs: list[torch.Tensor], vote: str) -> torch.Tensor:
    """Ensemble scores (N×K, argmax = the ensemble's answer) from each member's N×K probabilities. Soft voting
    returns the log of the mean probability; hard voting the vote count plus half the mean probability, which
    only breaks ties (a vote is worth 1, the probability term less than 1)."""
    mean = torch.stack(probs).mean(0)
    if vote == "soft":
        return mean.clamp_min(1e-30).log()
    if vote == "hard":
        k = mean.shape[1]
        votes = sum(torch.nn.functional.one_hot(p.argmax(1), k).float() for p in probs)
        return votes + 0.5 * mean
    raise ImagefitError(f"--vote must be soft or hard (got {vote!r})")


def independent_error(e: float, m: int) -> float:
    """Majority-vote error of `m` members that each err with probability `e`, independently, and never agree on a
    wrong answer unless a majority errs: P(more than half wrong). For m = 3 this is
    1 − (1−e)³ − C(3,2)(1−e)²e."""
    return sum(math.comb(m, k) * e ** k * (1 - e) ** (m - k) for k in range(m // 2 + 1, m + 1))


def disagreement(predictions: list[torch.Tensor]) -> float:
    """Mean over member pairs of the share of images on which the two predict differently."""
    pairs = [(a, b) for i, a in enumerate(predictions) for b in predictions[i + 1:]]
    if not pairs:
        return 0.0
    return sum((a != b).float().mean().item() for a, b in pairs) / len(pairs)
