"""`--int8-prefix` against fp32: the frozen-prefix pass of SmolLM2-135M (blocks 0-27 below the
recipe's two trained ones; dynamic padding, batches of 32 sorted by length), timed A/B/A/B so
that other jobs slow both alike, and the batch dependence of the states entering block 28 (a
text alone vs in its batch of 32).

    PYTHONPATH=src python benchmarks/int8_prefix.py [N_TEXTS] [REPEATS]
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

from gptclf.batching import encode, sorted_batches
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.data import load_dataset, split_book
from gptclf.lm import load_lm
from gptclf.quantize import quantize_prefix

START = 28  # the recipe trains blocks 28 and 29 of 30


@torch.inference_mode()
def prefix(model: SequenceClassifier, ids: list[list[int]], batch: int, pad: int):
    """The states entering block START of every text, each at its own length."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    for b in sorted_batches(ids, batch, pad, None):
        x = model.prefix_states(b.input_ids, b.attention_mask, START)
        for row, i in enumerate(b.indices.tolist()):
            out[i] = x[row, : len(ids[i])]
    return out


def main(n: int, repeats: int) -> None:
    lm = load_lm("smollm2-135m", progress=False)
    train = split_book(load_dataset("sms-spam"))[0]
    ids = encode(lm.tokenizer, train.texts[:n], lm.config.context_length, "head", None)
    fp32 = SequenceClassifier(lm.model, 2, "last_real")
    set_trainable(fp32, "last_two_blocks")
    int8 = copy.deepcopy(fp32)
    quantize_prefix(int8)
    pad = lm.tokenizer.pad_id
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(repeats):
        for name, model in (("fp32", fp32), ("int8", int8)):
            began = time.perf_counter()
            prefix(model, ids, 32, pad)
            times[name].append(time.perf_counter() - began)
    tokens = sum(map(len, ids))
    for name, t in times.items():
        print(f"{name}: {n} texts, {tokens} tokens: best {min(t):.1f} s, median "
              f"{statistics.median(t):.1f} s of {repeats}")  # fmt: skip
    print(f"int8 speed-up: best {min(times['fp32']) / min(times['int8']):.2f}x")
    k = min(n, 64)
    ref = prefix(fp32, ids[:k], 32, pad)
    for name, model in (("fp32", fp32), ("int8", int8)):
        batched, alone = prefix(model, ids[:k], 32, pad), prefix(model, ids[:k], 1, pad)
        moved = max(
            ((a - b).abs().max() / b.abs().max()).item()
            for a, b in zip(alone, batched, strict=True)
        )
        error = max(((b - r).norm() / r.norm()).item() for b, r in zip(batched, ref, strict=True))
        print(f"{name}: alone vs in a batch, max |diff| / max |state| over {k} texts {moved:.1e}; "
              f"relative L2 distance from fp32 (worst text) {error:.3f}")  # fmt: skip


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 96, int(sys.argv[2]) if len(sys.argv) > 2 else 3
    )
