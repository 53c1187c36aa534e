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

import numpy as np

from gptclf.balance import class_weights
from gptclf.baseline import C_GRID, select_logreg
from gptclf.data import LabeledTexts, splits_from_config, unseen_indices
from gptclf.metrics import logit_metrics, misclassified, rounded_probabilities, unseen_accuracy
from gptclf.train import SPLITS, TrainConfig


def tfidf_logreg(cfg: TrainConfig, c_grid: tuple[float, ...] = C_GRID) -> dict[str, Any]:
    """Fit word 1-2-gram TF-IDF + logistic regression on cfg's training split; pick C by
    validation accuracy (ties: the smaller C, i.e. the stronger regularisation)."""
    started = time.perf_counter()
    data = dict(zip(SPLITS, splits_from_config(dataclasses.asdict(cfg)), strict=True))
    metrics, log_probs = fit_tfidf(cfg, data, c_grid)
    metrics["probabilities"] = {  # per text, for ensemble rows (runner.PROBABILITY_SPLITS)
        name: rounded_probabilities(np.exp(log_probs[name])) for name in ("validation", "test")
    }
    metrics["total_seconds"] = time.perf_counter() - started
    return metrics


def tfidf_cross_validate(cfg: TrainConfig, folds: int, c_grid: tuple[float, ...] = C_GRID):
    """`gptclf cv`'s record for the TF-IDF row: the same pool, folds and inner validation
    splits (`cv.py`), C chosen on each fold's inner validation split."""
    from gptclf import cv

    started = time.perf_counter()
    pool, share, n = cv.cv_pool(cfg)
    assignment = cv.assign_folds(pool, n, folds, cfg.split_seed)
    record = cv.new_record(cfg, folds, pool, assignment, inner=True)
    for k in range(folds):
        index = cv.fold_indices(pool, assignment, k, share, cfg.split_seed, cfg)
        data = {name: pool.subset(index[name]) for name in SPLITS}
        metrics, log_probs = fit_tfidf(cfg, data, c_grid)
        record["per_fold"].append(cv.fold_result(k, index, metrics, log_probs))
    record.update(cv.summarize(record["per_fold"], pool.subset(range(n))), complete=True)
    record["seconds"] = time.perf_counter() - started
    return record


def fit_tfidf(
    cfg: TrainConfig, data: dict[str, LabeledTexts], c_grid: tuple[float, ...] = C_GRID
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The row's metrics (fit's keys; `total_seconds` = the fit) and log-probabilities per split."""
    from sklearn.feature_extraction.text import TfidfVectorizer

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
    log_probs = {name: best.predict_log_proba(features[name]) for name in SPLITS}
    metrics: dict[str, Any] = {
        name: logit_metrics(log_probs[name], data[name].labels, train.label_names)
        for name in SPLITS
    }
    metrics["test"]["misclassified"] = misclassified(log_probs["test"], data["test"].labels)
    unseen = unseen_indices(train.texts, data["test"].texts)
    metrics["test"].update(unseen_accuracy(metrics["test"]["misclassified"], unseen))
    n_params = int(best.coef_.size + best.intercept_.size)
    metrics.update(
        best_epoch=None,
        train_seconds=train_seconds,
        cache_seconds=0.0,
        total_seconds=train_seconds,
        cached_from_block=None,
        prefix_cache=None,
        cache_build_seconds=None,
        prefix_cache_storage=None,
        prefix_cache_dtype=None,
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
    return metrics, log_probs
