"""Multi-label metrics and threshold tuning against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from gptclf.metrics import (
    multilabel_logit_metrics,
    multilabel_metrics,
    multilabel_misclassified,
    sigmoid,
    tune_thresholds,
)


def random_multilabel(n: int = 300, labels: int = 5, seed: int = 0, ties: bool = False):
    """Targets with 0-3 labels per text (one label rare, one never present when `ties`), logits
    that lean towards them, and their sigmoid (rounded to 1 decimal with ties)."""
    rng = np.random.default_rng(seed)
    rates = np.linspace(0.05, 0.6, labels)
    y = (rng.random((n, labels)) < rates).astype(int)
    if ties:
        y[:, 0] = 0  # a label no text has: its AUCs are undefined
    logits = rng.normal(size=(n, labels)) + 2.0 * (y - 0.5)
    probs = sigmoid(logits)
    return y, logits, np.round(probs, 1) if ties else probs


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_metrics_equal_sklearn(ties: bool, seed: int) -> None:
    y, _, probs = random_multilabel(seed=seed, ties=ties)
    preds = (probs >= 0.5).astype(int)
    names = [f"l{i}" for i in range(y.shape[1])]
    m = multilabel_metrics(y, preds, probs, names)
    approx = pytest.approx
    assert m["subset_accuracy"] == m["accuracy"] == approx(sk.accuracy_score(y, preds))
    assert m["hamming_loss"] == approx(sk.hamming_loss(y, preds))
    for avg in ("micro", "macro"):
        p, r, f, _ = sk.precision_recall_fscore_support(y, preds, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"]) == approx((p, r))
        assert m[f"{avg}_f1"] == approx(sk.f1_score(y, preds, average=avg, zero_division=0))
    assert (m["precision"], m["recall"], m["f1"]) == (
        m["micro_precision"], m["micro_recall"], m["micro_f1"],
    )  # fmt: skip
    p, r, f, s = sk.precision_recall_fscore_support(y, preds, zero_division=0)
    aucs = []
    for c, name in enumerate(names):
        got = m["per_label"][name]
        assert (got["precision"], got["recall"], got["f1"]) == approx((p[c], r[c], f[c]))
        assert got["support"] == s[c] and got["predicted"] == preds[:, c].sum()
        if y[:, c].any():
            assert got["roc_auc"] == approx(sk.roc_auc_score(y[:, c], probs[:, c]))
            assert got["pr_auc"] == approx(sk.average_precision_score(y[:, c], probs[:, c]))
            aucs.append(got["roc_auc"])
        else:
            assert got["roc_auc"] is None and got["pr_auc"] is None
    assert m["roc_auc"] == approx(np.mean(aucs))
    if not ties:  # sklearn's macro ROC-AUC needs every label present
        assert m["roc_auc"] == approx(sk.roc_auc_score(y, probs, average="macro"))
    assert m["labels"] == names and m["n"] == len(y)


def test_logit_metrics_loss_thresholds_and_mistakes() -> None:
    y, logits, probs = random_multilabel(seed=3)
    m = multilabel_logit_metrics(logits, y)
    bce = -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean()
    assert m["loss"] == pytest.approx(bce)
    assert m["subset_accuracy"] == pytest.approx(sk.accuracy_score(y, probs >= 0.5))
    thresholds = [0.3, 0.5, 0.7, 0.9, 0.1]
    tuned = multilabel_logit_metrics(logits, y, thresholds=thresholds)
    preds = probs >= np.array(thresholds)
    assert tuned["micro_f1"] == pytest.approx(sk.f1_score(y, preds, average="micro"))
    wrong = multilabel_misclassified(logits, y, thresholds)
    assert wrong == np.flatnonzero((preds != y.astype(bool)).any(1)).tolist()
    assert len(wrong) == round(len(y) * (1 - tuned["subset_accuracy"]))


def test_multilabel_metrics_edge_cases() -> None:
    # no label anywhere, nothing predicted: 0/0 ratios are 0 (as scikit-learn), subset right
    m = multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert m["subset_accuracy"] == 1.0 and m["micro_f1"] == 0.0 and m["roc_auc"] is None
    with pytest.raises(ValueError, match="must be equal"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))


def f1_at(y: np.ndarray, scores: np.ndarray, t: float) -> float:
    return sk.f1_score(y, scores >= t, zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuned_thresholds_maximize_f1(seed: int) -> None:
    y, _, probs = random_multilabel(n=80, seed=seed)
    tuned = tune_thresholds(y, probs)
    for c, t in enumerate(tuned):
        best = max(f1_at(y[:, c], probs[:, c], s) for s in np.r_[0.0, probs[:, c], 1.01])
        assert f1_at(y[:, c], probs[:, c], t) == pytest.approx(best)
        assert t not in probs[:, c]  # a midpoint, not on a validation probability


def test_tuned_threshold_ties_go_to_the_default() -> None:
    y = np.array([[1], [1], [0], [0]])
    separable = np.array([[0.9], [0.8], [0.2], [0.1]])
    assert tune_thresholds(y, separable) == [0.5]  # every t in (0.2, 0.8] is perfect
    shifted = np.array([[0.45], [0.4], [0.2], [0.1]])
    assert tune_thresholds(y, shifted) == [pytest.approx(0.3)]  # the cut closest to 0.5
    assert tune_thresholds(np.zeros((3, 1)), np.array([[0.1], [0.6], [0.7]])) == [0.5]  # F1 0
