"""Evaluation: a model's scores over a loader, and one bundle (or an ensemble of bundles) evaluated on a split with
the metrics of `metrics` and the voting of `voting`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ImagefitError
from ..data.loader import Loader
from .metrics import summarize
from ..preprocessing import tta_scores
from .voting import check_same_classes, combine, disagreement, expand, independent_error


@torch.inference_mode()
def gather_logits(model: nn.Module, loader: Loader, autocast=None, tta: str = "none",
                  average: str = "logits", on_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scores (with test-time augmentation `tta`, see `preprocessing.tta_scores`) and labels for every image the
    loader yields, in order, on the CPU; `on_batch()` after each batch (progress)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for _, x, y in loader.batches():
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits.append(tta_scores(model, x, tta, average).cpu())
        labels.append(y.cpu())
        if on_batch:
            on_batch()
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def split_images(bundle, data: str | None, split: str):
    """The bundle's test or validation split (from `data` if given), prepared as in training and labelled in the
    bundle's class order."""
    from ..data.sources import align_classes, load_splits, load_test_split
    cfg = bundle.config.data
    if data:
        cfg.data, cfg.test_data = data, None
    if split == "test":
        images = load_test_split(cfg)
    else:
        images = load_splits(cfg, bundle.config.train.seed).val
        if images is None:
            raise ImagefitError(f"{bundle.path} was trained without a validation split (--val-fraction 0); "
                                f"use --split test")
    return align_classes(images, bundle.classes)


def bundle_scores(bundle, images, *, batch_size: int, tta: str, average: str):
    """One bundle's scores (its logit adjustment applied) and the labels, on `images` (see `split_images`)."""
    loader = Loader(images, batch_size, bundle.preprocessing.normalizer(bundle.device), device=bundle.device)
    with torch.inference_mode():
        scores, labels = gather_logits(bundle.model, loader, tta=tta, average=average)
    return bundle.preprocessing.adjust(scores), labels


def evaluate_bundles(paths: list[str], *, data: str | None = None, split: str = "test", batch_size: int = 256,
                     tta: str | None = None, tta_average: str | None = None, vote: str | None = None,
                     device: torch.device = torch.device("cpu")):
    """(metrics, first bundle): the metrics of one bundle (with and without its TTA), or of an ensemble with its
    members and the figures of the module docstring. Every bundle uses its own TTA unless `tta` is given."""
    from ..bundle import load_bundle
    members_paths, weights, asked = expand(paths)
    vote = vote or asked or "soft"
    bundles = [load_bundle(b, device) for b in members_paths]
    check_same_classes([str(b.path) for b in bundles], [b.classes for b in bundles])
    classes, members, plain = bundles[0].classes, [], []
    for bundle in bundles:
        t, images = tta or bundle.config.train.tta, split_images(bundle, data, split)
        scores, labels = bundle_scores(bundle, images, batch_size=batch_size, tta=t,
                                       average=tta_average or bundle.config.train.tta_average)
        members.append({"bundle": str(bundle.path), "tta": t, "scores": scores, **summarize(scores, labels, classes)})
        if t != "none" and len(bundles) == 1:  # the same model without TTA, side by side
            scores = bundle_scores(bundle, images, batch_size=batch_size, tta="none", average="logits")[0]
            plain.append(summarize(scores, labels, classes)["accuracy"])
    if len(bundles) == 1:
        m = {k: v for k, v in members[0].items() if k != "scores"}
        if plain:
            m["accuracy_without_tta"] = plain[0]
    else:
        probs = [r["scores"].softmax(1) for r in members]
        m = summarize(combine(probs, vote, weights), labels, classes)
        if vote == "hard":
            m["loss"] = None  # vote counts, not log-probabilities
        errors = [1 - r["accuracy"] for r in members]
        m.update(vote=vote, members=[{**{k: r[k] for k in ("bundle", "tta", "accuracy", "balanced_accuracy")},
                                      "weight": w} for r, w in zip(members, weights)],
                 best_member_accuracy=max(r["accuracy"] for r in members),
                 independent_error=independent_error(sum(errors) / len(errors), len(members)),
                 observed_error=1 - m["accuracy"], disagreement=disagreement([p.argmax(1) for p in probs]))
    return m, bundles[0]
