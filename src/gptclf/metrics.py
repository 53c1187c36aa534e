"""Classification metrics from labels and predictions (no scikit-learn at runtime).

Binary tasks report precision/recall/F1 of the positive class (label 1, e.g. spam); multi-class
tasks report their macro average. Undefined ratios (0/0) are 0.0, as scikit-learn's default.
"""

from __future__ import annotations

from typing import Any


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_metrics(labels: list[int], preds: list[int], num_classes: int) -> dict[str, Any]:
    if len(labels) != len(preds):
        raise ValueError("labels and predictions differ in length")
    confusion = [[0] * num_classes for _ in range(num_classes)]  # rows: true, columns: predicted
    for y, p in zip(labels, preds, strict=True):
        confusion[y][p] += 1
    per_class = []
    for c in range(num_classes):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(num_classes))
        actual = sum(confusion[c])
        precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
        per_class.append((precision, recall, _ratio(2 * precision * recall, precision + recall)))
    if num_classes == 2:
        precision, recall, f1 = per_class[1]
    else:
        precision, recall, f1 = (sum(m[i] for m in per_class) / num_classes for i in range(3))
    correct = sum(confusion[c][c] for c in range(num_classes))
    return {
        "accuracy": _ratio(correct, len(labels)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": confusion,
        "n": len(labels),
    }
