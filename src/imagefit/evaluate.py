"""Evaluation: logits over a loader, then accuracy, top-5, per-class precision/recall/F1 and the confusion matrix.

Every metric derives from the confusion matrix, one `bincount`, written here rather than imported from torchmetrics:
importing torchmetrics takes 4.6 s on the 2-core reference machine (it loads torchvision, torch._dynamo and
scipy.signal), 1.5% of the `fast` recipe's five minutes and most of `imagefit predict`'s start-up. The tests check
these figures against torchmetrics' functional API.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TTA_MODES
from .errors import ImagefitError
from .loader import Loader


def tta_views(x: torch.Tensor, tta: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs for a normalized batch. `flip`: the image and its mirror. `crops`: the image and two
    copies shifted one pixel up-left and down-right (reflect-padded). `flip+crops`: those three, each with its
    mirror. The unshifted views carry half the weight, as in airbench; 6 views at most, so the cost is at most
    6 forward passes per batch."""
    if tta not in TTA_MODES:
        raise ImagefitError(f"unknown test-time augmentation '{tta}'; choose one of {', '.join(TTA_MODES)}")
    views = [(1.0, x)]
    if tta in ("crops", "flip+crops"):
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [(0.5, x), (0.25, padded[..., :h, :w]), (0.25, padded[..., 2:, 2:])]
    if tta in ("flip", "flip+crops"):
        views = [(w / 2, view) for w, v in views for view in (v, v.flip(-1))]
    return views


def predict_logits(model: nn.Module, x: torch.Tensor, tta: str = "none", average: str = "logits") -> torch.Tensor:
    """Scores for a normalized batch over the test-time views of `tta`: the weighted mean of the logits, or with
    `average="probs"` the log of the weighted mean probability (so softmax and argmax read it like logits)."""
    views = tta_views(x, tta)
    if average == "logits":
        return sum(w * model(v).float() for w, v in views)
    if average == "probs":
        return torch.log(sum(w * model(v).float().softmax(1) for w, v in views).clamp_min(1e-30))
    raise ImagefitError(f"--tta-average must be logits or probs (got {average!r})")


@torch.inference_mode()
def gather_logits(model: nn.Module, loader: Loader, autocast=None, tta: str = "none",
                  average: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scores (with test-time augmentation `tta`, see `predict_logits`) and labels for every image the
    loader yields, in order, on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for _, x, y in loader.batches():
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits.append(predict_logits(model, x, tta, average).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """k×k counts: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(num_classes, num_classes)


def summarize(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """The headline metrics as plain numbers (JSON-ready), plus per-class rows and the confusion matrix. A class
    never predicted has precision 0, a class absent from the labels recall 0 (torchmetrics' convention)."""
    k = len(classes)
    confusion = confusion_matrix(logits.argmax(1), labels, k)
    hits, support, predicted = confusion.diag().double(), confusion.sum(1).double(), confusion.sum(0).double()
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, hits / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    top5 = (logits.topk(min(5, k), dim=1).indices == labels[:, None]).any(1)
    present = support > 0
    return {
        "accuracy": (hits.sum() / max(len(labels), 1)).item(),
        # beside accuracy, because on imbalanced data accuracy mostly measures the large classes
        "balanced_accuracy": recall[present].mean().item() if present.any() else 0.0,
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
        "top5": top5.double().mean().item() if len(labels) else 0.0,
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(labels),
        "per_class": {c: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": confusion.tolist(),
    }


def format_report(m: dict, classes: list[str]) -> str:
    """A plain-text table for the terminal."""
    loss = "" if m["loss"] is None else f"   loss {m['loss']:.4f}"
    lines = [f"accuracy {m['accuracy']:.4f}   balanced {m['balanced_accuracy']:.4f}   macro-F1 {m['macro_f1']:.4f}"
             f"   top-5 {m['top5']:.4f}{loss}   n {m['n']}",
             f"{'class':>14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for c in classes:
        r = m["per_class"][c]
        lines.append(f"{c:>14} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:7.3f} {r['support']:8d}")
    return "\n".join(lines)
