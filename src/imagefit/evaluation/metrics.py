"""Metrics from scores and labels: accuracy, balanced accuracy, macro-F1, top-5, per-class precision/recall/F1, the
confusion matrix, and the calibration error.

Every classification metric derives from the confusion matrix, one `bincount`, written here rather than imported
from torchmetrics: importing torchmetrics takes 4.6 s on the 2-core reference machine (it loads torchvision,
torch._dynamo and scipy.signal), 1.5% of the `fast` recipe's five minutes and most of `imagefit predict`'s start-up.
The tests check these figures against torchmetrics' functional API.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def _covering(counts: torch.Tensor, share: float = 0.9) -> torch.Tensor:
    """Indices of the fewest classes that hold `share` of `counts`, largest first."""
    order = counts.sort(descending=True)
    cumulative = order.values.cumsum(0) / counts.sum()
    return order.indices[: int((cumulative < share - 1e-9).sum().item()) + 1]


def collapse_warning(confusion: list[list[int]], classes: list[str]) -> str | None:
    """A warning when the predictions pile onto a few classes that the labels do not (a run too short for its
    model, or a rate that blew it up, predicts one class, or two or three, for every image), else None: 90% of the
    predictions in at most a third of the classes, where the labels need more than twice as many for their 90%.
    (ResNet18 from scratch, 28 steps on 1,800 CIFAR images: 3 classes took every prediction, 12% accuracy.)"""
    c = torch.tensor(confusion, dtype=torch.float64)
    n, k = c.sum().item(), len(classes)
    if k < 3 or n < 10:
        return None
    predicted, truth = _covering(c.sum(0)), _covering(c.sum(1))
    if len(predicted) > max(1, k // 3) or len(truth) <= 2 * len(predicted):
        return None
    names = ", ".join(classes[i] for i in predicted.tolist())
    share = c.sum(0)[predicted].sum().item() / n
    return (f"the model predicts {names} for {share:.0%} of the {int(n):,} test images ({len(predicted)} of {k} "
            f"classes): its predictions have collapsed and it learned next to nothing; train longer (--epochs), with "
            f"a smaller --batch-size or a lower --lr, or fine-tune a pretrained model")


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


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimizing the cross-entropy of scores / T (Guo et al. 2017, temperature scaling): one
    number, so accuracy is unchanged; searched on log T in [1/100, 100] (a bounded 1-D minimization)."""
    from scipy.optimize import minimize_scalar
    scores, labels = scores.double(), labels.long()

    def nll(log_t: float) -> float:
        return F.cross_entropy(scores / math.exp(log_t), labels).item()
    best = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100)), method="bounded",
                           options={"xatol": 1e-4})
    return round(math.exp(best.x), 4)


def scale_temperature(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """The fitted temperature and the expected calibration error of `scores` before and after dividing by it."""
    temperature = fit_temperature(scores, labels)
    return {"temperature": temperature, "ece_before": calibration(scores.softmax(1), labels)["ece"],
            "ece_after": calibration((scores / temperature).softmax(1), labels)["ece"]}


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """Expected calibration error over equal-width confidence bins, and the bins (confidence, accuracy, count)."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        n = int(inside.sum())
        if n:
            conf, acc = confidence[inside].mean().item(), correct[inside].mean().item()
            ece += n / len(labels) * abs(acc - conf)
            rows.append({"low": lo.item(), "high": hi.item(), "confidence": conf, "accuracy": acc, "n": n})
    return {"ece": ece, "bins": rows}
