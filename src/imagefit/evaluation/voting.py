"""Voting: how an ensemble's members combine (soft: mean probability; hard: majority, ties broken by probability),
and the figures that say whether an ensemble works: the error independent members would give, and how often
members disagree. `expand` reads an ensemble folder's manifest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import ImagefitError

MANIFEST = "ensemble.json"


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


def combine(probs: list[torch.Tensor], vote: str, weights: list[float] | None = None) -> torch.Tensor:
    """Ensemble scores (N×K, argmax = the ensemble's answer) from each member's N×K probabilities, members
    weighted by `weights` (boosting's α; default equal). Soft voting returns the log of the weighted mean
    probability; hard voting the weighted vote count plus a probability term smaller than the lightest vote,
    which only breaks ties."""
    w = torch.tensor(weights or [1.0] * len(probs), dtype=torch.float32)
    w = w / w.sum()
    mean = sum(wi * p for wi, p in zip(w, probs))
    if vote == "soft":
        return mean.clamp_min(1e-30).log()
    if vote == "hard":
        k = mean.shape[1]
        votes = sum(wi * torch.nn.functional.one_hot(p.argmax(1), k).float() for wi, p in zip(w, probs))
        return votes + 0.5 * float(w.min()) * mean
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


def expand(paths: list[str]) -> tuple[list[str], list[float], str | None]:
    """Bundle paths and member weights, ensemble folders (an `ensemble.json` beside member runs) replaced by
    their members and the weights they were saved with (boosting's α; 1 otherwise), and the vote a folder asks
    for (boosting: hard), if any."""
    out, weights, vote = [], [], None
    for p in paths:
        manifest = Path(p) / MANIFEST
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            out += [str(Path(p) / name) for name in m["members"]]
            weights += m.get("weights") or [1.0] * len(m["members"])
            vote = vote or m.get("vote")
        else:
            out.append(p)
            weights.append(1.0)
    return out, weights, vote
