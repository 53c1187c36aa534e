"""Batched forward passes without gradients: class probabilities and evaluation metrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from gptclf.batching import batches
from gptclf.classifier import SequenceClassifier
from gptclf.metrics import classification_metrics


@torch.inference_mode()
def predict_logits(
    model: SequenceClassifier,
    ids: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    length: int | None,
) -> torch.Tensor:
    """Class logits (N, C) for already-encoded texts, in input order."""
    was_training = model.training
    model.eval()
    out = []
    for batch in batches(ids, [0] * len(ids), batch_size, pad_id, length):
        out.append(model(batch.input_ids, batch.attention_mask).float())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.head.out_features)


def evaluate(
    model: SequenceClassifier,
    ids: list[list[int]],
    labels: list[int],
    *,
    batch_size: int,
    pad_id: int,
    length: int | None,
) -> dict[str, Any]:
    """Metrics (accuracy, precision, recall, f1, confusion matrix, n) plus the mean loss."""
    logits = predict_logits(model, ids, batch_size=batch_size, pad_id=pad_id, length=length)
    targets = torch.tensor(labels, dtype=torch.long)
    metrics = classification_metrics(labels, logits.argmax(-1).tolist(), model.head.out_features)
    metrics["loss"] = F.cross_entropy(logits, targets).item() if labels else float("nan")
    return metrics
