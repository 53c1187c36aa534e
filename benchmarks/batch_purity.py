"""How one-class are training batches, bucketed by length or random? (No model, no test labels.)

    python benchmarks/batch_purity.py   # prints a JSON summary, writes benchmarks/results/batch_purity.json

On the SMS data spam is long, so sorting texts by length before batching (`--bucket`) puts most
spam in the same batches. This counts, over 5 epochs of the `smollm2` recipe's training batches
(book split, SmolLM2 tokenizer, batch size 8, seeds 123-125), the share of batches that hold a
single class and the mean share of a batch's majority class, with and without bucketing. It
uses the training split only: the reason the recipe trains on random batches, stated without
looking at validation or test accuracy.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from gptclf.batching import batches
from gptclf.data import load_splits
from gptclf.weights.registry import KNOWN_MODELS, tokenizer_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "batch_purity.json"
SEEDS = (123, 124, 125)
EPOCHS, BATCH_SIZE = 5, 8


def purity(labels: list[list[int]]) -> dict[str, float]:
    """Share of one-class batches and mean majority share, over full batches."""
    full = [b for b in labels if len(b) == BATCH_SIZE]
    majority = [max(b.count(c) for c in set(b)) / len(b) for b in full]
    return {
        "batches": len(full),
        "one_class_share": sum(m == 1.0 for m in majority) / len(full),
        "mean_majority_share": statistics.fmean(majority),
    }


def main() -> dict:
    train, _, _ = load_splits("sms-spam", split="book", seed=123)
    ids = tokenizer_for(KNOWN_MODELS["smollm2-135m"], progress=False).encode_batch(train.texts)
    summary: dict = {"train_texts": len(ids), "spam_share": statistics.fmean(train.labels)}
    for bucket in (True, False):
        labels = []
        for seed in SEEDS:
            generator = torch.Generator().manual_seed(seed)
            for _ in range(EPOCHS):
                for batch in batches(
                    ids, train.labels, BATCH_SIZE, 0, None,
                    shuffle=True, generator=generator, bucket=bucket,
                ):  # fmt: skip
                    labels.append(batch.labels.tolist())
        summary["bucketed" if bucket else "random"] = purity(labels)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
