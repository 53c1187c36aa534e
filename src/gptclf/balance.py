"""Imbalanced training data: undersampling and class weights for the cross-entropy (multi-label:
positive weights per label for the binary cross-entropy)."""

from __future__ import annotations

import logging

import numpy as np

from gptclf.data import LabeledTexts
from gptclf.errors import GptclfError

logger = logging.getLogger(__name__)


def undersample(data: LabeledTexts, seed: int = 123) -> LabeledTexts:
    """Every present class cut down (at random, with ``seed``) to the rarest one's count; shuffled."""
    kept = data.subset(undersample_indices(data.labels, seed))
    logger.info("undersampled the training set from %d to %d rows", len(data), len(kept))
    return kept


def undersample_indices(labels: list[int], seed: int = 123) -> np.ndarray:
    """The rows ``undersample`` keeps, in its order (cross-validation gathers them by index)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    n = counts[counts > 0].min()
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(np.flatnonzero(labels == c), n, replace=False) for c in np.flatnonzero(counts)
    ]
    return rng.permutation(np.concatenate(keep))


def parse_class_weights(spec: str) -> str | list[float] | None:
    """``"none"`` → None, ``"auto"`` → ``"auto"``, ``"w1,w2,..."`` → the weights (checked)."""
    if spec in ("none", "auto"):
        return None if spec == "none" else spec
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise GptclfError(
            f"--class-weights must be auto, none or numbers like 1,2.5 (got {spec!r})"
        ) from None
    if min(weights) < 0 or max(weights) <= 0 or any(w != w for w in weights):
        raise GptclfError(f"--class-weights must be non-negative with one positive (got {spec!r})")
    return weights


def class_weights(spec: str, train: LabeledTexts) -> list[float] | None:
    """Cross-entropy weights per class: ``auto`` = n / (classes × count), as scikit-learn's
    "balanced" (over the classes present); ``none`` = None; or explicit ``w1,w2,...``."""
    weights = parse_class_weights(spec)
    num_classes = len(train.label_names)
    if train.multi_label:
        return positive_weights(weights, train)
    if weights == "auto":
        counts = np.bincount(train.labels, minlength=num_classes)
        present = int(np.count_nonzero(counts))
        return [len(train) / (present * c) if c else 1.0 for c in counts.tolist()]
    if weights is not None and len(weights) != num_classes:
        raise GptclfError(
            f"--class-weights has {len(weights)} weights but there are {num_classes} classes "
            f"({', '.join(train.label_names)})"
        )
    return weights


def positive_weights(weights: str | list[float] | None, train: LabeledTexts) -> list[float] | None:
    """Multi-label: the weight of each label's positive examples in its binary cross-entropy
    (``pos_weight``): ``auto`` = negatives / positives in the training split (1 for a label
    without positives), or explicit ``w1,w2,...``, one per label."""
    if weights == "auto":
        positives = train.targets.sum(axis=0)
        negatives = len(train) - positives
        return [float(n / p) if p else 1.0 for n, p in zip(negatives, positives, strict=True)]
    if weights is not None and len(weights) != len(train.label_names):
        raise GptclfError(
            f"--class-weights has {len(weights)} weights but there are "
            f"{len(train.label_names)} labels ({', '.join(train.label_names)})"
        )
    return weights
