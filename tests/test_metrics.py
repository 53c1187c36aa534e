"""gptclf.metrics against scikit-learn (a test-only oracle) on random binary and multi-class data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from gptclf.metrics import (
    average_precision,
    classification_metrics,
    logit_metrics,
    misclassified,
    pr_curve,
    roc_auc,
    roc_curve,
)


def random_task(num_classes: int, n: int = 200, seed: int = 0, ties: bool = False):
    """Labels, logits and their softmax; with ties, probabilities rounded to 1 decimal, so
    thresholds shared by several examples are exercised."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, logits, np.round(probs, 1) if ties else probs


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_sklearn(num_classes: int, ties: bool) -> None:
    labels, logits, probs = random_task(num_classes, seed=num_classes, ties=ties)
    names = [f"c{i}" for i in range(num_classes)]
    preds = logits.argmax(1)
    m = classification_metrics(labels.tolist(), preds.tolist(), num_classes, probs, names)
    approx = pytest.approx
    assert m["accuracy"] == approx(sk.accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == approx(sk.balanced_accuracy_score(labels, preds))
    p, r, f, s = sk.precision_recall_fscore_support(labels, preds, zero_division=0)
    for c, name in enumerate(names):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == approx((p[c], r[c], f[c]))
        assert got["support"] == s[c]
        assert got["roc_auc"] == approx(sk.roc_auc_score(labels == c, probs[:, c]))
        assert got["pr_auc"] == approx(sk.average_precision_score(labels == c, probs[:, c]))
    assert m["macro_f1"] == approx(f.mean())
    assert m["confusion_matrix"] == sk.confusion_matrix(labels, preds).tolist()
    if num_classes == 2:
        assert m["f1"] == approx(f[1])
        assert m["roc_auc"] == approx(sk.roc_auc_score(labels, probs[:, 1]))
        assert m["pr_auc"] == approx(sk.average_precision_score(labels, probs[:, 1]))
    else:
        assert m["f1"] == approx(f.mean())
        if not ties:  # sklearn's multi-class ROC-AUC wants rows that sum to 1
            assert m["roc_auc"] == approx(sk.roc_auc_score(labels, probs, multi_class="ovr"))
    assert m["labels"] == names


@pytest.mark.parametrize("num_classes", [2, 4])
def test_logit_metrics(num_classes: int) -> None:
    labels, logits, probs = random_task(num_classes, seed=1)
    m = logit_metrics(logits, labels.tolist())
    assert m["loss"] == pytest.approx(sk.log_loss(labels, probs))
    assert m == {
        **classification_metrics(labels.tolist(), logits.argmax(1).tolist(), num_classes, probs),
        "loss": m["loss"],
    }


def test_curves_equal_sklearn() -> None:
    labels, _, probs = random_task(2, ties=True)
    fpr, tpr = roc_curve(labels == 1, probs[:, 1])
    sk_fpr, sk_tpr, _ = sk.roc_curve(labels, probs[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    recall, precision = pr_curve(labels == 1, probs[:, 1])
    sk_p, sk_r, _ = sk.precision_recall_curve(labels, probs[:, 1])
    np.testing.assert_allclose(recall[::-1], sk_r[:-1])  # sklearn: lowest threshold first, + (0, 1)
    np.testing.assert_allclose(precision[::-1], sk_p[:-1])


def test_undefined_cases() -> None:
    assert roc_auc(np.array([True, True]), np.array([0.2, 0.9])) is None
    assert average_precision(np.array([False, False]), np.array([0.2, 0.9])) is None
    # class 2 never occurs: its AUCs are None, the macro AUC averages the defined ones
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics([0, 1, 0], [0, 1, 0], 3, probs, ["a", "b", "c"])
    assert m["per_class"]["c"]["roc_auc"] is None and m["roc_auc"] == 1.0
    assert m["balanced_accuracy"] == 1.0  # over the classes that occur
    assert m["per_class"]["c"]["precision"] == 0.0  # 0/0 → 0, as scikit-learn
    m = classification_metrics([0, 1], [1, 1], 2)
    assert m["roc_auc"] is None and m["recall"] == 1.0 and m["precision"] == 0.5


def test_misclassified_lists_wrong_indices():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.4]])
    assert misclassified(logits, [0, 0, 1, 0]) == [1, 2]
    assert misclassified(logits, [0, 1, 0, 0]) == []
