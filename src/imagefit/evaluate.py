"""Evaluation: logits over a loader, then accuracy, top-5, per-class precision/recall/F1 and the confusion matrix.

The metrics come from torchmetrics' functional API; this module only gathers logits and names the results.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_precision,
                                                    multiclass_recall)

from .loader import Loader


def predict_logits(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Logits for a normalized batch, averaged over test-time views: `flip` adds the mirror image; `flip-translate`
    also the image shifted one pixel up-left and down-right (reflect-padded), each with its mirror, weighted as
    airbench does: half on the two unshifted views, half on the four shifted ones."""
    def with_mirror(v: torch.Tensor) -> torch.Tensor:
        return (model(v).float() + model(v.flip(-1)).float()) / 2

    if tta == "none":
        return model(x).float()
    logits = with_mirror(x)
    if tta == "flip-translate":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (with_mirror(padded[..., :h, :w]) + with_mirror(padded[..., 2:, 2:])) / 2
        logits = (logits + shifted) / 2
    return logits


@torch.inference_mode()
def gather_logits(model: nn.Module, loader: Loader, autocast=None, tta: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits (with test-time augmentation `tta`) and labels for every image the loader yields, in order,
    on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for _, x, y in loader.batches():
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits.append(predict_logits(model, x, tta).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def summarize(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """The headline metrics as plain numbers (JSON-ready), plus per-class rows and the confusion matrix."""
    k = len(classes)
    args = dict(num_classes=k, average=None)
    precision = multiclass_precision(logits, labels, **args)
    recall = multiclass_recall(logits, labels, **args)
    f1 = multiclass_f1_score(logits, labels, **args)
    return {
        "accuracy": multiclass_accuracy(logits, labels, num_classes=k, average="micro").item(),
        "top5": multiclass_accuracy(logits, labels, num_classes=k, average="micro", top_k=min(5, k)).item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "n": len(labels),
        "per_class": {c: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(),
                          "support": int((labels == i).sum())} for i, c in enumerate(classes)},
        "confusion": multiclass_confusion_matrix(logits, labels, num_classes=k).tolist(),
    }


def format_report(m: dict, classes: list[str]) -> str:
    """A plain-text table for the terminal."""
    lines = [f"accuracy {m['accuracy']:.4f}   top-5 {m['top5']:.4f}   loss {m['loss']:.4f}   n {m['n']}",
             f"{'class':>14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for c in classes:
        r = m["per_class"][c]
        lines.append(f"{c:>14} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:7.3f} {r['support']:8d}")
    return "\n".join(lines)
