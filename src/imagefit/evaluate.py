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
    return {
        "accuracy": (hits.sum() / max(len(labels), 1)).item(),
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
    lines = [f"accuracy {m['accuracy']:.4f}   top-5 {m['top5']:.4f}{loss}   n {m['n']}",
             f"{'class':>14} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for c in classes:
        r = m["per_class"][c]
        lines.append(f"{c:>14} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:7.3f} {r['support']:8d}")
    return "\n".join(lines)
