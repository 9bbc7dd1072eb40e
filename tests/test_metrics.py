"""evaluate.summarize against torchmetrics' functional API, including the zero-division corners."""

import pytest
import torch
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_precision, multiclass_recall)

from imagefit.evaluation.evaluate import summarize


@pytest.mark.parametrize("k", [10, 3])
def test_summarize_matches_torchmetrics(k):
    gen = torch.Generator().manual_seed(k)
    labels = torch.randint(0, k - 1, (500,), generator=gen)  # the last class never occurs
    logits = torch.randn(500, k, generator=gen)
    logits[:, 0] -= 100  # class 0 is never predicted
    logits[labels == 1, 1] += 3  # some real signal
    m = summarize(logits, labels, [f"c{i}" for i in range(k)])
    args = dict(num_classes=k, average=None)
    for name, fn in [("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)]:
        expected = fn(logits, labels, **args)
        got = torch.tensor([m["per_class"][f"c{i}"][name] for i in range(k)], dtype=expected.dtype)
        torch.testing.assert_close(got, expected)
    assert m["accuracy"] == pytest.approx(multiclass_accuracy(logits, labels, num_classes=k, average="micro").item())
    assert m["top5"] == pytest.approx(multiclass_accuracy(logits, labels, num_classes=k, average="micro",
                                                          top_k=min(5, k)).item())
    assert m["confusion"] == multiclass_confusion_matrix(logits, labels, num_classes=k).tolist()
    assert [m["per_class"][f"c{i}"]["support"] for i in range(k)] == torch.bincount(labels, minlength=k).tolist()
    assert m["per_class"][f"c{k - 1}"]["recall"] == 0.0 and m["per_class"]["c0"]["precision"] == 0.0


def test_balanced_accuracy_and_macro_f1_match_torchmetrics_on_imbalanced_labels():
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(450, dtype=torch.long), torch.ones(40, dtype=torch.long), torch.full((10,), 2)])
    logits = torch.randn(500, 3, generator=gen)
    logits[:, 0] += 1.5  # a model that favours the large class
    m = summarize(logits, labels, ["big", "mid", "small"])
    assert m["balanced_accuracy"] == pytest.approx(multiclass_recall(logits, labels, num_classes=3).item())
    assert m["macro_f1"] == pytest.approx(multiclass_f1_score(logits, labels, num_classes=3).item())
    assert m["balanced_accuracy"] < m["accuracy"]
