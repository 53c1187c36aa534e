"""A language model turned classifier: the LM head swapped for `Linear(d_model, num_classes)`.

`pool()` picks which token's hidden state feeds the head; `set_trainable()` picks what trains.
Both are used by training, evaluation and prediction alike.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import torch
from torch import nn

from gptclf.choices import POOL_MODES, TRAINABLE_HELP
from gptclf.errors import GptclfError
from gptclf.lora import mark_trainable

log = logging.getLogger(__name__)

PoolMode = Literal["last", "last_real", "first", "cls", "mean"]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: PoolMode) -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d), one vector per sequence.

    last:      the last position, pads included (the book's chapter 6).
    last_real: the last real token, from the mask — right or left padding, and pad id == eos id.
    first:     position 0 (with left padding that is a pad: prefer right padding for `first`).
    cls:       alias of `first` (BERT's [CLS] token).
    mean:      mean over real tokens.
    """
    if mode == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype)
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1)
    B, T = hidden.shape[:2]
    index = pool_index(attention_mask, mode, B, T, hidden.device)
    return hidden[torch.arange(B, device=hidden.device), index]


def pool_index(
    attention_mask: torch.Tensor | None, mode: PoolMode, B: int, T: int, device: torch.device
) -> torch.Tensor:
    """(B,) the position each sequence's vector is read from, for the single-position modes."""
    if mode == "last" or (mode == "last_real" and attention_mask is None):
        return torch.full((B,), T - 1, device=device)
    if mode in ("first", "cls"):
        return torch.zeros(B, dtype=torch.long, device=device)
    if mode == "last_real":
        # index of the last 1 in each row: argmax of mask * position (ties impossible: positions differ)
        return (attention_mask.long() * torch.arange(1, T + 1, device=device)).argmax(dim=1)
    raise GptclfError(f"unknown pooling {mode!r}; expected one of {', '.join(POOL_MODES)}")


class SequenceClassifier(nn.Module):
    """Backbone + pooling + class head.

    The backbone needs `embed(ids, mask)`, `run_blocks(x, mask, start, stop, index=None)` (with
    `index`, only those positions leave the last block), `config.d_model`, blocks in `h` and a
    final norm `ln_f`. Its LM head is dropped.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pool_mode: PoolMode = "last",
        head_bias: bool = True,
    ):
        super().__init__()
        if pool_mode not in POOL_MODES:
            raise GptclfError(
                f"unknown pooling {pool_mode!r}; expected one of {', '.join(POOL_MODES)}"
            )
        if num_classes < 2:
            raise GptclfError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.backbone.lm_head = None
        self.head = nn.Linear(backbone.config.d_model, num_classes)
        self.pool_mode = pool_mode
        if not head_bias:
            drop_head_bias(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        prefix: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """Class logits (B, num_classes); from `prefix`, the hidden states entering block `start`
        (a frozen-prefix cache), when given. One entry point, so DDP/FSDP hooks see every call."""
        if prefix is None:
            prefix, start = self.backbone.embed(input_ids, self.backbone_mask(attention_mask)), 0
        return self.forward_from(prefix, attention_mask, start)

    def forward_from(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, start: int
    ) -> torch.Tensor:
        """Class logits from hidden states `x` entering block `start` (a frozen-prefix cache)."""
        return self.head(self.pooled_from(x, attention_mask, start))

    def pooled_from(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """(B, d): the vector the head reads, from hidden states `x` entering block `start`
        through blocks[start:stop] and the final norm (`stop` short of the last block: an
        intermediate layer's, for a linear probe's layer sweep)."""
        mask = self.backbone_mask(attention_mask)
        if self.pool_mode == "mean":
            hidden = self.backbone.ln_f(self.backbone.run_blocks(x, mask, start, stop))
            return pool(hidden, attention_mask, self.pool_mode)
        # One position is read: the last block computes its output there only (exact, see
        # `run_blocks`), and the final norm, being per position, runs on that vector alone.
        B, T = x.shape[:2]
        index = pool_index(attention_mask, self.pool_mode, B, T, x.device)
        hidden = self.backbone.run_blocks(x, mask, start, stop, index=index)  # (B, 1, d)
        return self.backbone.ln_f(hidden[:, 0])

    def prefix_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, stop: int
    ) -> torch.Tensor:
        """Hidden states entering block `stop`: what `forward_from(..., start=stop)` consumes."""
        mask = self.backbone_mask(attention_mask)
        return self.backbone.run_blocks(self.backbone.embed(input_ids, mask), mask, 0, stop)

    def backbone_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        # `last` is the book's mode: pads are ordinary tokens, so the backbone sees no mask.
        return None if self.pool_mode == "last" else attention_mask


def drop_head_bias(model: SequenceClassifier) -> None:
    """A class head without bias (`--no-head-bias`). The bias is drawn with the weight and then
    dropped, so the weight and every later random draw are those of the biased head: a seed
    compares like with like."""
    model.head.bias = None  # nn.Linear's `bias=False` state: a registered parameter set to None


def _last_n(spec: str) -> int | None:
    named = {"last_block": 1, "last_two_blocks": 2}
    if spec in named:
        return named[spec]
    match = re.fullmatch(r"last_(\d+)", spec)
    return int(match.group(1)) if match else None


def set_trainable(model: SequenceClassifier, spec: str) -> tuple[int, int]:
    """`freeze(model, spec)`, logged; returns (trainable, total) parameter counts."""
    freeze(model, spec)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log.info(
        "trainable parameters: %s of %s (%.2f%%), spec %s",
        f"{n_trainable:,}",
        f"{n_total:,}",
        100 * n_trainable / n_total,
        spec,
    )
    return n_trainable, n_total


def freeze(model: SequenceClassifier, spec: str) -> None:
    """Freeze everything, then unfreeze by `spec`.

    head: the class head only. last_N: the last N blocks + the final norm + head (the book trains
    the final norm with the last block). all: everything. lora: the LoRA adapters + head (after
    `lora.apply_lora`).
    """
    for p in model.parameters():
        p.requires_grad = spec == "all"
    if spec == "lora":
        mark_trainable(model)
    elif spec != "all":
        n = 0 if spec == "head" else _last_n(spec)
        blocks = model.backbone.h
        if n is None:
            raise GptclfError(f"unknown trainable spec {spec!r}; expected {TRAINABLE_HELP}")
        if not 0 <= n <= len(blocks):
            raise GptclfError(f"--trainable {spec}: the model has only {len(blocks)} blocks")
        trainable = [model.head]
        if n > 0:
            trainable += list(blocks[len(blocks) - n :])
            if getattr(model.backbone, "ln_f", None) is not None:
                trainable.append(model.backbone.ln_f)
        for module in trainable:
            for p in module.parameters():
                p.requires_grad = True


def first_trainable_block(model: SequenceClassifier) -> int:
    """The blocks below the first one with a trainable parameter: the frozen prefix (0 where
    anything before block 0, the embeddings, trains; every block where none trains)."""
    backbone = model.backbone
    below_blocks = (p for n, p in backbone.named_parameters() if not n.startswith(("h.", "ln_f.")))
    if any(p.requires_grad for p in below_blocks):
        return 0  # trainable embeddings: nothing before block 0 is fixed
    for i, block in enumerate(backbone.h):
        if any(p.requires_grad for p in block.parameters()):
            return i
    return len(backbone.h)
