"""A non-neural row of the table: TF-IDF features + logistic regression, on the same split.

Returns the metric keys `gptclf.train.fit` returns (train/validation/test metrics from the same
`metrics.logit_metrics`, `train_seconds`, parameter counts, ...), so the runner and the report
treat it like any other row. Needs scikit-learn (`pip install 'gptclf[experiments]'`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from gptclf.balance import class_weights
from gptclf.data import splits_from_config
from gptclf.errors import GptclfError
from gptclf.metrics import logit_metrics, misclassified
from gptclf.train import SPLITS, TrainConfig

C_GRID = (0.1, 1.0, 10.0, 100.0)  # inverse L2 strength; the best on validation is kept


def tfidf_logreg(cfg: TrainConfig, c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """Fit word 1-2-gram TF-IDF + logistic regression on cfg's training split; pick C by
    validation accuracy (ties: the smaller C, i.e. the stronger regularisation)."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise GptclfError(
            "the TF-IDF baseline needs scikit-learn: pip install 'gptclf[experiments]'"
        ) from None
    started = time.perf_counter()
    data = dict(zip(SPLITS, splits_from_config(dataclasses.asdict(cfg)), strict=True))
    train = data["train"]
    train_start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = {"train": vectorizer.fit_transform(train.texts)}
    features.update({n: vectorizer.transform(data[n].texts) for n in SPLITS[1:]})
    weights = class_weights(cfg.class_weights, train)  # as the neural rows weight their loss
    per_class = None if weights is None else dict(enumerate(weights))
    best, best_acc, history = None, -1.0, []
    for c in c_grid:
        model = LogisticRegression(
            C=c, solver="liblinear", class_weight=per_class, random_state=cfg.seed
        )
        model.fit(features["train"], train.labels)
        acc = float(np.mean(model.predict(features["validation"]) == data["validation"].labels))
        history.append({"C": c, "validation_accuracy": acc})
        if acc > best_acc:
            best, best_acc = model, acc
    train_seconds = time.perf_counter() - train_start
    # every class occurs in the training split (data.check_splits), so column k is class k
    assert list(best.classes_) == list(range(len(train.label_names)))
    metrics: dict[str, Any] = {
        name: logit_metrics(
            best.predict_log_proba(features[name]), data[name].labels, train.label_names
        )
        for name in SPLITS
    }
    metrics["test"]["misclassified"] = misclassified(
        best.predict_log_proba(features["test"]), data["test"].labels
    )
    n_params = int(best.coef_.size + best.intercept_.size)
    metrics.update(
        best_epoch=None,
        train_seconds=train_seconds,
        cache_seconds=0.0,
        total_seconds=time.perf_counter() - started,
        cached_from_block=None,
        prefix_cache=None,
        cache_build_seconds=None,
        trainable_params=n_params,
        total_params=n_params,
        world_size=1,
        labels=train.label_names,
        truncated={name: 0 for name in SPLITS},
        class_weights=weights,
        history=history,
        train_curve={"examples_seen": [], "loss": [], "accuracy": []},
        config={"baseline": "tfidf-logreg", "C": float(best.C),
                "vocabulary": len(vectorizer.vocabulary_),
                "train_config": dataclasses.asdict(cfg)},
    )  # fmt: skip
    return metrics
