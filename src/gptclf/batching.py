"""Token ids -> padded batches: truncation (head, tail, head+tail), the three padding modes,
shuffled batching.

Padding is always on the right (as in the book); every batch carries an attention mask
(1 = real token) so pad-aware pooling and attention work in every mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from gptclf.choices import PADDING_MODES, TRUNCATIONS
from gptclf.errors import GptclfError
from gptclf.tokenizer import PROMPT_SLOT, Tokenizer

log = logging.getLogger(__name__)

PaddingMode = Literal["longest", "max_context", "dynamic"]
Truncation = Literal["head", "tail", "head+tail"]
# Dynamic batches are padded to a bounded set of lengths. oneDNN keeps a primitive (with its own
# weight copies) per input shape; with every length distinct, bf16 training grew memory by
# ~850 MB on SmolLM2-135M (and bf16 inference over 256 distinct lengths by ~1 GB on GPT-2 small).
PAD_MULTIPLE = 16


def round_to_multiple(longest: int) -> int:
    """Training's padded length: a multiple of PAD_MULTIPLE (at most 15 pads per row)."""
    return -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE


def round_to_eighth(longest: int) -> int:
    """Inference's padded length: a multiple of the power of two at most longest/8, i.e. exact
    below 16, then 8 lengths per doubling. As few shapes as `round_to_multiple` over a 1024
    context (64) but at most 1/8 pads, so short texts, the common case, get 1-4 pads, not ~8:
    the SMS test set in sorted batches of 32 computes 16% more tokens than it has, not 43%
    (without rounding: 14%)."""
    step = eighth_step(longest)
    return -(-longest // step) * step


def eighth_step(n: int) -> int:
    """The largest power of two at most n/8 (1 below 16): `round_to_eighth`'s granularity."""
    return 1 << max((n // 8).bit_length() - 1, 0)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 1 = real token
    labels: torch.Tensor  # (B,)
    indices: torch.Tensor  # (B,) positions in the encoded dataset

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)),
            self.indices,
        )


def encode(
    tokenizer: Tokenizer,
    texts: list[str],
    max_length: int,
    truncation: Truncation = "head",
    prompt: str | None = None,
) -> list[list[int]]:
    """Token ids per text, truncated to `max_length` by `truncate` (counted, with a warning).

    With `prompt` (a template with one "{text}"), each text is encoded inside it, and
    truncation cuts only the text's own tokens: the prompt is always kept whole."""
    return encode_with_lengths(tokenizer, texts, max_length, truncation, prompt)[0]


def encode_with_lengths(
    tokenizer: Tokenizer,
    texts: list[str],
    max_length: int,
    truncation: Truncation = "head",
    prompt: str | None = None,
) -> tuple[list[list[int]], list[int]]:
    """`encode`, and each text's token count before truncation."""
    if prompt is None and tokenizer.add_special_tokens:
        prompt = PROMPT_SLOT  # so truncation cuts the text and keeps [CLS] ... [SEP] whole
    if prompt is not None:
        return _encode_in_prompt(tokenizer, texts, max_length, truncation, prompt)
    ids = tokenizer.encode_batch(texts)
    for i, seq in enumerate(ids):
        if not seq:
            raise GptclfError(f"text #{i + 1} encodes to no tokens (empty text?)")
    _warn_truncated(ids, max_length, truncation)
    return [truncate(seq, max_length, truncation) for seq in ids], [len(seq) for seq in ids]


def _encode_in_prompt(
    tokenizer: Tokenizer, texts: list[str], max_length: int, truncation: Truncation, prompt: str
) -> tuple[list[list[int]], list[int]]:
    encoded = tokenizer.encode_in_prompt(texts, prompt)
    out = []
    for i, (seq, start, end) in enumerate(encoded):
        if start == end:
            raise GptclfError(f"text #{i + 1} encodes to no tokens (empty text?)")
        budget = max_length - (len(seq) - (end - start))  # what the prompt leaves the text
        if budget < 1:
            raise GptclfError(
                f"the prompt takes {len(seq) - (end - start)} of the {max_length} tokens a text "
                "may have: shorten --prompt or raise --max-length"
            )
        out.append(seq[:start] + truncate(seq[start:end], budget, truncation) + seq[end:])
    _warn_truncated([seq for seq, _, _ in encoded], max_length, truncation)
    return out, [len(seq) for seq, _, _ in encoded]


def _warn_truncated(ids: list[list[int]], max_length: int, truncation: Truncation) -> None:
    truncated = sum(len(seq) > max_length for seq in ids)
    if truncated:
        log.warning(
            "%d of %d texts truncated to %d tokens (%s)",
            truncated,
            len(ids),
            max_length,
            truncation,
        )


def truncate(seq: list[int], max_length: int, truncation: Truncation = "head") -> list[int]:
    """At most `max_length` tokens: the first (head), the last (tail), or the first half and
    the last half (head+tail: openings and conclusions both carry the label in long reviews)."""
    if len(seq) <= max_length:
        return seq
    if truncation == "head":
        return seq[:max_length]
    if truncation == "tail":
        return seq[len(seq) - max_length :]
    if truncation == "head+tail":
        head = (max_length + 1) // 2
        return seq[:head] + seq[len(seq) - (max_length - head) :]
    raise GptclfError(
        f"unknown truncation {truncation!r}; expected one of {', '.join(TRUNCATIONS)}"
    )


def pad_length(mode: PaddingMode, train_ids: list[list[int]], max_length: int) -> int | None:
    """Fixed length every batch is padded to, or None for per-batch (dynamic) padding.

    longest: the longest training example (the book; validation/test are truncated to it).
    max_context: `max_length`, what the texts were cut to (the model's context, or a shorter
    --max-length).
    dynamic: None.
    """
    if mode == "longest":
        return min(max(len(seq) for seq in train_ids), max_length)
    if mode == "max_context":
        return max_length
    if mode == "dynamic":
        return None
    raise GptclfError(f"unknown padding {mode!r}; expected one of {', '.join(PADDING_MODES)}")


def collate(
    seqs: list[list[int]],
    labels: list[int],
    indices: list[int],
    pad_id: int,
    length: int | None,
    cap: int | None = None,
    round_up: Callable[[int], int] = round_to_multiple,
) -> Batch:
    """Right-pad to `length`, or (dynamic) to the batch's longest rounded by `round_up` but
    never beyond `cap` (the longest sequence of the dataset, so never beyond the context)."""
    if length is not None:
        T = length
    else:
        longest = max(len(s) for s in seqs)
        T = max(longest, min(round_up(longest), cap or longest))
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, seq in enumerate(seqs):
        seq = seq[:T]
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return Batch(input_ids, mask, torch.tensor(labels, dtype=torch.long), torch.tensor(indices))


def batches(
    ids: list[list[int]],
    labels: list[int],
    batch_size: int,
    pad_id: int,
    length: int | None,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    bucket: bool = False,
    round_up: Callable[[int], int] = round_to_multiple,
) -> Iterator[Batch]:
    """Batches in order (or shuffled with `generator`), padded to `length` or per batch (the
    longest row rounded by `round_up`: `round_to_multiple` for training, or `round_to_eighth`).

    bucket (with shuffle): sort by length within windows of 64 batches, then shuffle the batch
    order, so dynamic padding computes almost no pads while batches stay random.
    """
    order = (
        torch.randperm(len(ids), generator=generator).tolist() if shuffle else list(range(len(ids)))
    )
    bucket = bucket and shuffle
    if bucket:
        window = batch_size * 64
        order = [
            i
            for w in range(0, len(order), window)
            for i in sorted(order[w : w + window], key=lambda i: len(ids[i]))
        ]
    chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if drop_last and len(order) >= batch_size:
        chunks = [c for c in chunks if len(c) == batch_size]
    if bucket:
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    cap = max((len(seq) for seq in ids), default=0)
    for chunk in chunks:
        yield collate(
            [ids[i] for i in chunk],
            [labels[i] for i in chunk],
            chunk,
            pad_id,
            length,
            cap,
            round_up,
        )


def sorted_batches(
    ids: list[list[int]], batch_size: int, pad_id: int, length: int | None
) -> Iterator[Batch]:
    """Inference batches in order of length (dynamic padding then wastes little, rounded by
    `round_to_eighth`), each batch's `indices` the input positions, so results go back in
    input order. Labels are zeros: for prediction and the prefix cache."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    sorted_ids = [ids[i] for i in order]
    for batch in batches(
        sorted_ids, [0] * len(ids), batch_size, pad_id, length, round_up=round_to_eighth
    ):
        batch.indices = torch.tensor([order[j] for j in batch.indices.tolist()])
        yield batch
