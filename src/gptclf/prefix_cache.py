"""Frozen-prefix caching: run the frozen lower blocks once per example, train only the suffix.

When the embeddings and blocks[:k] are frozen and deterministic (no dropout), the hidden states
entering block k are a fixed function of the input. Computing them once and reusing them every
epoch (and for every evaluation) removes most of the work of `--trainable last_block` runs.

Where that would be wrong, `cache_start` returns None and training runs uncached:
- anything trainable below block k (embeddings, or adapters inside frozen blocks — their
  parameters have requires_grad, so they count as trainable);
- dropout > 0 (frozen blocks would still be random);
- `last` pooling with dynamic padding: pads are then ordinary tokens and their number depends on
  the batch, so an example's states depend on its batch-mates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.utils.rnn import pad_sequence

from gptclf.batching import Batch, batches, round_to_eighth
from gptclf.classifier import SequenceClassifier

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 2 * 1024**3


def cache_start(model: SequenceClassifier, fixed_length: bool) -> int | None:
    """First block with trainable parameters, if caching the blocks below it is exact."""
    backbone = model.backbone
    if backbone.config.dropout > 0:
        return None
    if not fixed_length and model.pool_mode == "last":
        return None
    below_blocks = (p for n, p in backbone.named_parameters() if not n.startswith(("h.", "ln_f.")))
    if any(p.requires_grad for p in below_blocks):
        return None  # trainable embeddings: nothing before block 0 is fixed
    for i, block in enumerate(backbone.h):
        if any(p.requires_grad for p in block.parameters()):
            return i if i > 0 else None
    return len(backbone.h)


class PrefixCache:
    """Hidden states entering block `start` for each example, stored at its (padded) length."""

    def __init__(self, states: list[torch.Tensor], start: int):
        self.states, self.start = states, start

    def gather(self, batch: Batch) -> torch.Tensor:
        """(B, T, d) states for a batch, zero-filled beyond each stored length (masked pads)."""
        x = pad_sequence([self.states[i] for i in batch.indices.tolist()], batch_first=True)
        T = batch.input_ids.shape[1]
        return (
            x[:, :T] if x.shape[1] >= T else torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[1]))
        )

    def logits(self, model: SequenceClassifier, batch: Batch) -> torch.Tensor:
        # `model` may be wrapped (DDP) and have no `.head`; its parameters tell the dtype.
        x = self.gather(batch).to(batch.input_ids.device, next(model.parameters()).dtype)
        return model(batch.input_ids, batch.attention_mask, prefix=x, start=self.start)


@torch.inference_mode()
def build_caches(
    model: SequenceClassifier,
    splits: dict[str, list[list[int]]],
    start: int,
    *,
    pad_id: int,
    length: int | None,
    batch_size: int = 32,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> dict[str, PrefixCache] | None:
    """States entering block `start` for every example of every split, or None over budget.

    Fixed-length padding keeps every position (pads included: `last` pooling may read them);
    dynamic padding keeps only the real tokens. Stored in float32 when all splits fit the budget,
    else bfloat16, else not at all.
    """
    d = model.backbone.config.d_model
    n_tokens = sum(length or len(seq) for ids in splits.values() for seq in ids)
    dtype = next(
        (t for t in (torch.float32, torch.bfloat16) if n_tokens * d * t.itemsize <= budget_bytes),
        None,
    )
    if dtype is None:
        log.info("prefix cache would need %.1f GiB; running uncached", n_tokens * d * 2 / 1024**3)
        return None
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    caches = {}
    for name, ids in splits.items():
        # Sorted by length, dynamic batches are nearly pad-free; states return to input order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        sorted_ids = [ids[i] for i in order]
        for batch in batches(
            sorted_ids, [0] * len(ids), batch_size, pad_id, length, round_up=round_to_eighth
        ):
            batch = batch.to(device)
            with autocast():
                x = model.prefix_states(batch.input_ids, batch.attention_mask, start)
            for row, j in enumerate(batch.indices.tolist()):
                keep = length or len(ids[order[j]])
                states[order[j]] = x[row, :keep].to("cpu", dtype).clone()
        caches[name] = PrefixCache(states, start)
    model.train(was_training)
    log.info(
        "cached the inputs of block %d: %d tokens (%s, %.0f MiB)",
        start,
        n_tokens,
        str(dtype).removeprefix("torch."),
        n_tokens * d * dtype.itemsize / 1024**2,
    )
    return caches
