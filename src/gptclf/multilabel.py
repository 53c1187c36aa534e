"""Multi-label data: label cells with zero or more labels, multi-hot targets, and splits.

A label cell holds its labels separated by ``--label-sep`` (default ``|``: ``spam|money``); in
JSONL it may also be a list of strings. An empty cell (``""``, ``null``, ``[]``) is a text with
no label. Labels are stripped; empty parts (``a||b``) and repeats are dropped.

Splits keep every label's share in each part by the iterative stratification of Sechidis,
Tsoumakas and Vlahavas (2011, "On the stratification of multi-label data"): the label with the
fewest rows left is placed first, each of its rows going to the part that still wants the most
of that label (ties: the part that wants the most rows, then at random). Stratifying by the
whole label set instead would leave rare combinations (most of them, with several labels)
unstratified. Rows without a label fill the parts up to their sizes at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gptclf import tables
from gptclf.errors import GptclfError

log = logging.getLogger(__name__)


def parse_labels(value: Any, sep: str, column: str, where: str) -> list[str]:
    """The labels of one cell, in order of appearance (see the module docstring)."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(sep)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        kind = "a list with non-text items" if isinstance(value, list) else type(value).__name__
        raise GptclfError(
            f"{where}: {column} {value!r} is {kind}, not text: with --multi-label a label "
            f"cell holds labels separated by {sep!r} (in JSONL also a list of strings)"
        )
    labels = [p.strip() for p in parts]
    return list(dict.fromkeys(label for label in labels if label))


def read_labeled(
    path: str | Path,
    text_columns: Sequence[str],
    label_column: str,
    sep: str,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Texts and label lists of every row of a table (`tables.read_labeled`, multi-label)."""
    texts: list[str] = []
    labels: list[list[str]] = []
    with tables.open_table(path, encoding, delimiter) as table:
        text_cols = tables.resolve_columns(table.columns, text_columns, path)
        (label_col,) = tables.resolve_columns(table.columns, [label_column], path)
        for where, row in table:
            if label_col not in row:  # JSONL rows need not share keys; [] is "no label"
                raise GptclfError(f"{where}: missing column {label_col!r}")
            labels.append(parse_labels(row[label_col], sep, label_col, where))
            texts.append(tables.row_text(row, text_cols, where))
    if not texts:
        raise GptclfError(f"{path}: no data rows")
    return texts, labels


def multi_hot(label_lists: Sequence[Sequence[str]], names: Sequence[str]) -> list[list[int]]:
    """A 0/1 row per text, one column per name."""
    index = {name: i for i, name in enumerate(names)}
    rows = []
    for labels in label_lists:
        row = [0] * len(names)
        for label in labels:
            row[index[label]] = 1
        rows.append(row)
    return rows


def warn_if_single(targets: np.ndarray, sep: str, source: object) -> None:
    """A warning when no text has two labels: the separator may be wrong, or the data single-label."""
    if len(targets) and not (np.asarray(targets).sum(axis=1) > 1).any():
        log.warning(
            "%s: with --multi-label, no text has more than one label (--label-sep %r occurs in "
            "none): every row has one label or none. Wrong --label-sep, or single-label data "
            "(then train without --multi-label)?",
            source,
            sep,
        )


def iterative_split(targets: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Row indices of each part (``fractions`` sum to 1), by iterative stratification; each part
    shuffled, deterministic for a ``seed``."""
    y = np.asarray(targets).astype(bool).reshape(len(targets), -1)
    rng = np.random.default_rng(seed)
    fractions = np.asarray(fractions, dtype=np.float64)
    open_parts = np.flatnonzero(fractions > 0)
    rows_wanted = fractions * len(y)
    labels_wanted = np.outer(fractions, y.sum(axis=0))  # (parts, labels)
    part_of = np.full(len(y), -1)

    def place(row: int, wanted: np.ndarray) -> None:
        # the most wanted (ties: the part that wants the most rows, then at random)
        keys = np.lexsort((rng.random(len(open_parts)), -rows_wanted[open_parts], -wanted))
        part = open_parts[keys[0]]
        part_of[row] = part
        rows_wanted[part] -= 1
        labels_wanted[part, y[row]] -= 1

    while (left := y[part_of < 0].sum(axis=0)).any():
        fewest = np.flatnonzero(left == left[left > 0].min())
        label = fewest[rng.integers(len(fewest))]
        for row in rng.permutation(np.flatnonzero((part_of < 0) & y[:, label])):
            place(row, labels_wanted[open_parts, label])
    for row in rng.permutation(np.flatnonzero(part_of < 0)):  # texts without a label
        place(row, rows_wanted[open_parts])
    return [rng.permutation(np.flatnonzero(part_of == p)) for p in range(len(fractions))]
