"""What the report and the ensemble rows read from a cached result, shared by both."""

from __future__ import annotations

import functools
import json
from typing import Any

from gptclf.data import LabeledTexts, splits_from_config, unseen_indices


def train_seconds(record: dict[str, Any]) -> float:
    """What training one seed takes from scratch. A run that read its frozen-prefix states from
    the runner's cache (computed by another row or seed) did not compute them: the time that
    computing them took is added back, so every row's train time counts the same work."""
    seconds = record["train_seconds"]
    if record.get("prefix_cache") == "read":
        seconds += record["cache_build_seconds"] - record["cache_seconds"]
    return seconds


# What `splits_from_config` reads: the runs that agree on these share their splits.
SPLIT_KEYS = (
    "data", "split", "split_seed", "seed", "text_columns", "label_column", "validation", "test",
    "balance", "multi_label", "label_sep",
)  # fmt: skip


def split_key(train_config: dict[str, Any]) -> str:
    """The part of a run's config that fixes its splits, as one hashable string."""
    chosen = {k: train_config[k] for k in SPLIT_KEYS if k in train_config}
    if chosen.get("split_seed") is not None:
        chosen.pop("seed", None)  # the split does not depend on the training seed then
    return json.dumps(chosen, sort_keys=True)


@functools.cache
def splits_of(key: str) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """The train/validation/test splits of `split_key` `key` (read once per key)."""
    return splits_from_config(json.loads(key))


@functools.cache
def unseen_test_texts(key: str) -> tuple[int, ...]:
    """Indices of the test texts without a copy in the training split of `split_key` `key`."""
    train, _, test = splits_of(key)
    return tuple(unseen_indices(train.texts, test.texts))
