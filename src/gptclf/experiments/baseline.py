"""A non-neural row of the table: TF-IDF features + logistic regression, on the same split.

Returns the metric keys `gptclf.train.fit` returns (train/validation/test metrics from the same
`metrics.logit_metrics`, `train_seconds`, parameter counts, ...), so the runner and the report
treat it like any other row. (Word n-grams only, as the row was run; every training run also fits
`gptclf.baseline`, with character n-grams too.)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gptclf.balance import class_weights
from gptclf.baseline import C_GRID, select_logreg
from gptclf.data import splits_from_config, unseen_indices
from gptclf.metrics import logit_metrics, misclassified, rounded_probabilities, unseen_accuracy
from gptclf.train import SPLITS, TrainConfig


def tfidf_logreg(cfg: TrainConfig, c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """Fit word 1-2-gram TF-IDF + logistic regression on cfg's training split; pick C by
    validation accuracy (ties: the smaller C, i.e. the stronger regularisation)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.perf_counter()
    data = dict(zip(SPLITS, splits_from_config(dataclasses.asdict(cfg)), strict=True))
    train = data["train"]
    train_start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = {"train": vectorizer.fit_transform(train.texts)}
    features.update({n: vectorizer.transform(data[n].texts) for n in SPLITS[1:]})
    weights = class_weights(cfg.class_weights, train)  # as the neural rows weight their loss
    # primal, and scikit-learn's default max_iter: as the row's results were computed
    best, history = select_logreg(
        features, data, weights, cfg.seed, c_grid, dual=False, max_iter=100
    )
    train_seconds = time.perf_counter() - train_start
    metrics: dict[str, Any] = {
        name: logit_metrics(
            best.predict_log_proba(features[name]), data[name].labels, train.label_names
        )
        for name in SPLITS
    }
    metrics["probabilities"] = {  # per text, for ensemble rows (runner.PROBABILITY_SPLITS)
        name: rounded_probabilities(best.predict_proba(features[name]))
        for name in ("validation", "test")
    }
    metrics["test"]["misclassified"] = misclassified(
        best.predict_log_proba(features["test"]), data["test"].labels
    )
    unseen = unseen_indices(train.texts, data["test"].texts)
    metrics["test"].update(unseen_accuracy(metrics["test"]["misclassified"], unseen))
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
