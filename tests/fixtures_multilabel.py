"""Multi-label data as a user has it: texts about zero to three topics, the label cell listing
them (``sport|money``; in JSONL also a list). ``topics`` makes the rows, ``write_topics`` the file,
``train_topics`` a tiny classifier on them (the conftest fixture ``multilabel_run`` shares one)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

TOPICS = {
    "sport": ["match", "goal", "team", "score"],
    "money": ["cash", "prize", "bank", "pay"],
    "food": ["pizza", "lunch", "cake", "soup"],
}
FILLER = ["today", "maybe", "later", "see", "you", "the", "and", "ok"]
COLUMNS = ["--text-column", "message", "--label-column", "tags"]
FLAGS = [
    "--multi-label", *COLUMNS, "--model", "gpt2-tiny", "--weights", "random", "--epochs", "3",
    "--lr", "2e-3", "--trainable", "all", "--max-length", "16", "--no-progress",
]  # fmt: skip


def topics(n: int = 120, seed: int = 0) -> list[dict[str, object]]:
    """Rows ``{"id", "message", "tags"}``; each text mentions the words of its topics (0-3)."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        chosen = [t for t in names if rng.random() < 0.4]
        words = [w for t in chosen for w in rng.choice(TOPICS[t], size=2, replace=False)]
        words += list(rng.choice(FILLER, size=int(rng.integers(2, 4))))
        rows.append({"id": i, "message": " ".join(rng.permutation(words)), "tags": chosen})
    return rows


def write_topics(path: Path, rows: list[dict[str, object]] | None = None, sep: str = "|") -> Path:
    """CSV/TSV with the tags joined by ``sep``, or JSONL with them as a list."""
    rows = topics() if rows is None else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(["id", "message", "tags"])
        for r in rows:
            writer.writerow([r["id"], r["message"], sep.join(r["tags"])])
    return path


def train_topics(root: Path) -> Path:
    """Train the tiny random GPT-2 on 150 topic rows with tuned thresholds; the run directory."""
    from gptclf.cli import main

    data = write_topics(root / "topics.csv", topics(150))
    out = root / "run"
    assert main(["train", "--data", str(data), *FLAGS, "--tune-thresholds", "--out", str(out)]) == 0
    return out
