"""Classification metrics from labels, predictions and probabilities (numpy; no scikit-learn).

Binary tasks report precision/recall/F1 of the positive class (label 1, e.g. spam) as
``precision``/``recall``/``f1``; multi-class tasks report their macro average there. Every task
also gets balanced accuracy, per-class and macro P/R/F1, the confusion matrix and, given
probabilities, ROC-AUC and PR-AUC (average precision): of the positive class when binary, the
macro average of one-vs-rest when multi-class. Conventions follow scikit-learn: an undefined ratio
(0/0) is 0.0; an undefined AUC (a class absent, or every example of it) is None.

Multi-label tasks (``multilabel_metrics``: an (N, L) 0/1 target matrix, a text may have any
number of labels) report subset accuracy (every label of a text right), micro and macro P/R/F1,
Hamming loss and per label P/R/F1, support and ROC-AUC/PR-AUC; ``tune_thresholds`` picks each
label's decision threshold on validation data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def classification_metrics(
    labels: Sequence[int],
    preds: Sequence[int],
    num_classes: int,
    probabilities: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``preds`` against ``labels``; ``probabilities`` (N, C) add ROC-AUC and PR-AUC.

    ``label_names`` name the classes in ``per_class`` (default "0", "1", ...).
    """
    if len(labels) != len(preds):
        raise ValueError("labels and predictions differ in length")
    names = list(label_names) if label_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} label names for {num_classes} classes")
    confusion = [[0] * num_classes for _ in range(num_classes)]  # rows: true, columns: predicted
    for y, p in zip(labels, preds, strict=True):
        confusion[y][p] += 1
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(num_classes))
        actual = sum(confusion[c])
        precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    macro = {
        k: sum(m[k] for m in per_class.values()) / num_classes
        for k in ("precision", "recall", "f1")
    }
    headline = per_class[names[1]] if num_classes == 2 else macro
    supported = [m["recall"] for m in per_class.values() if m["support"]]
    correct = sum(confusion[c][c] for c in range(num_classes))
    out: dict[str, Any] = {
        "accuracy": _ratio(correct, len(labels)),
        "balanced_accuracy": _ratio(sum(supported), len(supported)),
        "precision": headline["precision"],
        "recall": headline["recall"],
        "f1": headline["f1"],
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "roc_auc": None,
        "pr_auc": None,
        "per_class": per_class,
        "confusion_matrix": confusion,
        "labels": names,
        "n": len(labels),
    }
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(labels)
        for c, name in enumerate(names):
            per_class[name]["roc_auc"] = roc_auc(y == c, probs[:, c])
            per_class[name]["pr_auc"] = average_precision(y == c, probs[:, c])
        for key in ("roc_auc", "pr_auc"):
            if num_classes == 2:
                out[key] = per_class[names[1]][key]
            else:  # macro one-vs-rest over the classes where it is defined
                defined = [m[key] for m in per_class.values() if m[key] is not None]
                out[key] = sum(defined) / len(defined) if defined else None
    return out


def logit_metrics(
    logits: np.ndarray, labels: Sequence[int], label_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``classification_metrics`` from (N, C) logits, plus the mean cross-entropy ``loss``."""
    logits = np.asarray(logits, dtype=np.float64)
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))  # log-softmax
    metrics = classification_metrics(
        labels, logits.argmax(axis=1).tolist(), logits.shape[1], np.exp(log_probs), label_names
    )
    y = np.asarray(labels, dtype=np.int64)
    metrics["loss"] = float(-log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    return metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def mean_probability_logits(members_probs: Sequence[Any]) -> np.ndarray:
    """Logits (log probabilities) of the mean of several (N, C) probability arrays: an ensemble
    scored by `logit_metrics` like any run (their softmax is the mean itself)."""
    mean = np.mean([np.asarray(p, dtype=np.float64) for p in members_probs], axis=0)
    return np.log(np.clip(mean, 1e-12, 1.0))


def rounded_probabilities(probs: np.ndarray, digits: int = 6) -> list[list[float]]:
    """(N, C) probabilities as JSON-ready lists, rounded: results keep every text's, so ensembles
    of cached runs are scored without rerunning them (1e-6 cannot flip a decision that matters)."""
    return np.round(np.asarray(probs, dtype=np.float64), digits).tolist()


def misclassified(logits: np.ndarray, labels: Sequence[int]) -> list[int]:
    """Indices of the examples whose highest logit is not their label's."""
    return np.flatnonzero(np.asarray(logits).argmax(axis=1) != np.asarray(labels)).tolist()


def unseen_accuracy(wrong: Sequence[int], unseen: Sequence[int]) -> dict[str, Any]:
    """Accuracy on the texts at `unseen` (those without a copy in the training data,
    `data.unseen_indices`) from the indices of every mistake (multi-label: of every text with a
    label wrong, so it is subset accuracy): `unseen_accuracy` (None when every text has a copy)
    and `unseen_count`, how many texts it is over."""
    missed = len(set(unseen) & set(wrong))
    return {
        "unseen_accuracy": 1.0 - missed / len(unseen) if unseen else None,
        "unseen_count": len(unseen),
    }


def _ranked(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Cumulative true and false positives at each distinct threshold, highest score first."""
    y = np.asarray(is_positive, dtype=bool)
    if not y.any() or y.all():
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s, y = np.asarray(scores)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(y) - 1]  # the last index of each score value
    tps = np.cumsum(y)[last]
    return tps, last + 1 - tps


def roc_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1); None if undefined."""
    ranked = _ranked(is_positive, scores)
    if ranked is None:
        return None
    tps, fps = ranked
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (trapezoids: ties count half); None with a single class."""
    curve = roc_curve(is_positive, scores)
    if curve is None:
        return None
    fpr, tpr = curve
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(recalls, precisions) at each distinct threshold, highest score first; None if undefined."""
    ranked = _ranked(is_positive, scores)
    if ranked is None:
        return None
    tps, fps = ranked
    return tps / tps[-1], tps / (tps + fps)


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """PR-AUC as scikit-learn's average precision: Σ (R_k − R_{k−1}) P_k, no interpolation."""
    curve = pr_curve(is_positive, scores)
    if curve is None:
        return None
    recall, precision = curve
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def multilabel_metrics(
    targets: np.ndarray,
    preds: np.ndarray,
    probabilities: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Multi-label metrics of ``preds`` against ``targets``, both (N, L) 0/1 matrices.

    ``accuracy`` = ``subset_accuracy`` (a text counts when its predicted label set is its true
    one, scikit-learn's ``accuracy_score``); ``precision``/``recall``/``f1`` are the micro
    averages (every label decision of every text pooled); ``macro_*`` average the per-label
    values over all labels. ``probabilities`` (N, L) add ROC-AUC and PR-AUC per label and their
    macro average over the labels where they are defined.
    """
    y = np.asarray(targets).astype(bool)
    p = np.asarray(preds).astype(bool)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"targets {y.shape} and predictions {p.shape} must be equal (N, L)")
    names = list(label_names) if label_names is not None else [str(c) for c in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} label names for {y.shape[1]} labels")
    tp, fp, fn = ((y & p).sum(0).tolist(), (~y & p).sum(0).tolist(), (y & ~p).sum(0).tolist())
    per_label: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        per_label[name] = {
            "precision": _ratio(tp[c], tp[c] + fp[c]),
            "recall": _ratio(tp[c], tp[c] + fn[c]),
            "f1": _ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c]),
            "support": int(y[:, c].sum()),
            "predicted": int(p[:, c].sum()),
        }
    TP, FP, FN = sum(tp), sum(fp), sum(fn)
    macro = {
        k: float(np.mean([m[k] for m in per_label.values()])) for k in ("precision", "recall", "f1")
    }
    micro = {
        "precision": _ratio(TP, TP + FP),
        "recall": _ratio(TP, TP + FN),
        "f1": _ratio(2 * TP, 2 * TP + FP + FN),
    }
    subset = _ratio(int((y == p).all(axis=1).sum()), len(y))
    out: dict[str, Any] = {
        "accuracy": subset,
        "subset_accuracy": subset,
        "hamming_loss": float((y != p).mean()) if y.size else 0.0,
        **micro,
        **{f"micro_{k}": v for k, v in micro.items()},
        **{f"macro_{k}": v for k, v in macro.items()},
        "roc_auc": None,
        "pr_auc": None,
        "per_label": per_label,
        "labels": names,
        "n": len(y),
    }
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        for c, name in enumerate(names):
            per_label[name]["roc_auc"] = roc_auc(y[:, c], probs[:, c])
            per_label[name]["pr_auc"] = average_precision(y[:, c], probs[:, c])
        for key in ("roc_auc", "pr_auc"):
            defined = [m[key] for m in per_label.values() if m[key] is not None]
            out[key] = sum(defined) / len(defined) if defined else None
    return out


def multilabel_decisions(probs: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
    """(N, L) booleans: a label is chosen where its probability reaches its threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    limit = np.full(probs.shape[1], 0.5) if thresholds is None else np.asarray(thresholds)
    return probs >= limit


def multilabel_logit_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    label_names: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``multilabel_metrics`` from (N, L) logits (sigmoid, each label chosen at its threshold,
    0.5 by default), plus ``loss``: the binary cross-entropy averaged over texts and labels."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    probs = sigmoid(logits)
    metrics = multilabel_metrics(y, multilabel_decisions(probs, thresholds), probs, label_names)
    # BCE(x, y) = log(1 + e^x) - y x, computed without overflow
    loss = np.logaddexp(0.0, logits) - y * logits
    metrics["loss"] = float(loss.mean()) if loss.size else float("nan")
    return metrics


def multilabel_misclassified(
    logits: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None = None
) -> list[int]:
    """Indices of the texts whose predicted label set is not their true one."""
    chosen = multilabel_decisions(sigmoid(logits), thresholds)
    return np.flatnonzero((chosen != np.asarray(targets).astype(bool)).any(axis=1)).tolist()


def tune_thresholds(targets: np.ndarray, probs: np.ndarray, default: float = 0.5) -> list[float]:
    """Per label, the threshold with the highest F1 on (validation) ``targets``; ties go to the
    threshold closest to ``default``, so a label whose F1 cannot be improved keeps it.

    The candidates are ``default`` and the midpoints between consecutive distinct
    probabilities (and below the lowest / above the highest), so a chosen threshold lies as far
    as possible from the probabilities around it.
    """
    y = np.asarray(targets).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    return [_best_threshold(y[:, c], probs[:, c], default) for c in range(y.shape[1])]


def _best_threshold(y: np.ndarray, scores: np.ndarray, default: float) -> float:
    if not len(scores):
        return default
    values = np.unique(scores)  # ascending
    edges = np.r_[values[0] / 2, (values[:-1] + values[1:]) / 2, (values[-1] + 1) / 2]
    candidates = np.r_[default, edges]
    ordered = np.argsort(scores, kind="mergesort")
    positives_below = np.r_[0, np.cumsum(y[ordered])]  # positives among the i lowest scores
    below = np.searchsorted(scores[ordered], candidates, side="left")  # scores < candidate
    chosen = len(y) - below
    tp = positives_below[-1] - positives_below[below]
    denominator = chosen + positives_below[-1]
    f1 = np.divide(2 * tp, denominator, out=np.zeros(len(candidates)), where=denominator > 0)
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - default))]])
