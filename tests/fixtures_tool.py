"""A user's dataset as the tool sees it: reviews with unfamiliar column names and string labels.

``write_reviews`` writes a small synthetic 3-class table (CSV, TSV or JSONL); ``train_reviews``
trains the tiny random GPT-2 on it through the CLI, with flags only (the conftest fixture
``reviews_run`` shares one such run between test modules).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

WORDS = {
    "positive": ["great", "love", "excellent", "perfect", "happy", "recommend"],
    "negative": ["terrible", "broke", "refund", "awful", "waste", "angry"],
    "neutral": ["okay", "average", "fine", "arrived", "normal", "expected"],
}
COLUMNS = ["id", "review_body", "headline", "sentiment"]


def reviews(n_per_class: int = 30, seed: int = 0) -> list[dict[str, str]]:
    """Rows with id, review_body, headline and sentiment (positive/negative/neutral).

    Each body mixes words of its class with a few of other classes, so the task is learnable but
    not perfectly separable (curves and confusion matrices have something to show).
    """
    rng = np.random.default_rng(seed)
    every = [w for words in WORDS.values() for w in words]
    headlines = ["My order", "Review", "Feedback", "About this item", "Verified purchase"]
    rows = []
    for label, words in WORDS.items():
        for _ in range(n_per_class):
            own = list(rng.choice(words, size=int(rng.integers(2, 6))))
            noise = list(rng.choice(every, size=int(rng.integers(1, 4))))
            body = " ".join(rng.permutation(own + noise))
            headline = str(rng.choice(headlines))
            rows.append(
                {"review_body": f"It was {body}.", "headline": headline, "sentiment": label}
            )
    order = rng.permutation(len(rows))
    return [{"id": str(i), **rows[j]} for i, j in enumerate(order)]


def write_reviews(path: Path, rows: list[dict[str, str]] | None = None) -> Path:
    """Write ``rows`` (default: ``reviews()``) as CSV, TSV or JSONL by the file's suffix."""
    rows = reviews() if rows is None else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


TRAIN_FLAGS = [
    "--model",
    "gpt2-tiny",
    "--weights",
    "random",
    "--epochs",
    "2",
    "--lr",
    "1e-3",
    "--batch-size",
    "8",
    "--max-length",
    "12",
    "--no-progress",
]


def train_reviews(root: Path) -> Path:
    """Train on ``root/reviews.csv`` with flags only; returns the run directory."""
    from gptclf.cli import main

    data = write_reviews(root / "reviews.csv")
    out = root / "run"
    argv = [
        "train",
        "--data",
        str(data),
        "--text-column",
        "headline",
        "review_body",
        "--label-column",
        "sentiment",
        "--out",
        str(out),
        *TRAIN_FLAGS,
    ]
    assert main(argv) == 0
    return out
