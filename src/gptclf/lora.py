"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685): a low-rank update beside frozen linears.

`LoRALinear` replaces an `nn.Linear` in place and keeps its parameters at the same state-dict keys
(`weight`, `bias`), so a base checkpoint loads into a LoRA model unchanged; only `lora_A`/`lora_B`
are new. Output: `x W^T + b + scaling * (dropout(x) A^T) B^T` with

    scaling = alpha / rank   ("alpha_over_rank", the paper and peft; the default)
    scaling = alpha          ("alpha", the book's appendix E / bonus code)

B starts at zero, so a freshly wrapped model computes exactly what the base model did.
`apply_lora` wraps layers (never a model class hierarchy); `set_trainable(model, "lora")` in
`classifier.py` then freezes everything but the adapters and the class head.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gptclf.choices import LORA_SCALINGS, LORA_TARGETS
from gptclf.errors import GptclfError

log = logging.getLogger(__name__)

LoRAScaling = Literal["alpha_over_rank", "alpha"]
LoRATargets = Literal["attention", "mlp", "all"]
LORA_PARAMS = ("lora_A", "lora_B")


class LoRALinear(nn.Module):
    """An `nn.Linear` plus a trainable rank-`rank` update; `weight`/`bias` keep their keys."""

    def __init__(
        self,
        linear: nn.Linear,
        rank: int,
        alpha: float,
        scaling: LoRAScaling = "alpha_over_rank",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise GptclfError(f"LoRA rank must be at least 1, got {rank}")
        if scaling not in LORA_SCALINGS:
            raise GptclfError(f"unknown LoRA scaling {scaling!r}; expected one of {LORA_SCALINGS}")
        if not 0.0 <= dropout < 1.0:
            raise GptclfError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rank, self.alpha, self.scaling_mode = rank, alpha, scaling
        self.scaling = alpha / rank if scaling == "alpha_over_rank" else float(alpha)
        # The very same Parameter objects: no copy, and the keys `weight`/`bias` are unchanged.
        self.weight = linear.weight
        self.bias = linear.bias
        factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        # Kaiming-uniform A as in the paper's code, peft and the book; B = 0 makes the update 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update `scaling * B A`, shaped like `weight` (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y  # the update already lives in `weight`
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return y + self.scaling * update

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into `weight` (idempotent: a second call changes nothing).

        After merging, `weight` holds base + update and forward skips the LoRA path, so outputs
        are unchanged. Save merged models with `merge_lora` (plain linears), not this layer's
        state dict, whose `weight` would then already include the update.
        """
        if not self.merged:
            self.weight += self.delta_weight().to(self.weight.dtype)
            self.merged = True

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` computing this layer's output (merged weights)."""
        self.merge()
        with torch.device("meta"):  # shapes only; the merged tensors are assigned below
            linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = nn.Parameter(self.weight.detach().clone())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone())
        return linear

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, scaling={self.scaling_mode} ({self.scaling:g})"
        )


def _targeted(name: str, targets: LoRATargets) -> bool:
    """Is the linear at `name` (relative to a block, e.g. "attn.c_attn") a target?"""
    if targets == "all":
        return True
    return name.split(".")[0] == ("attn" if targets == "attention" else "mlp")


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: LoRATargets = "all",
    scaling: LoRAScaling = "alpha_over_rank",
    dropout: float = 0.0,
    last_blocks: int | None = None,
) -> list[str]:
    """Replace the target linears inside the backbone blocks by `LoRALinear`s; returns their names.

    model: a `SequenceClassifier` (or a bare backbone with blocks in `h`); the class head is never
    wrapped. targets: "attention" (the linears of `attn`: GPT's c_attn/c_proj, BERT's
    query/key/value/c_proj), "mlp" (mlp.c_fc, mlp.c_proj) or "all" (every linear in the blocks).
    last_blocks: only the last N blocks (None = all); frozen blocks below them stay cacheable.
    Freezing is `set_trainable(model, "lora")`'s job.
    """
    if targets not in LORA_TARGETS:
        raise GptclfError(f"unknown LoRA targets {targets!r}; expected one of {LORA_TARGETS}")
    backbone = getattr(model, "backbone", model)
    blocks = list(backbone.h)
    n = len(blocks) if last_blocks is None else last_blocks
    if not 1 <= n <= len(blocks):
        raise GptclfError(f"LoRA last_blocks={last_blocks}: the model has {len(blocks)} blocks")
    prefix = "backbone.h" if backbone is not model else "h"
    replaced = []
    for i in range(len(blocks) - n, len(blocks)):
        block = blocks[i]
        for name, module in list(block.named_modules()):
            if isinstance(module, LoRALinear):
                raise GptclfError(f"{prefix}.{i}.{name} already has a LoRA adapter")
            if not isinstance(module, nn.Linear) or not _targeted(name, targets):
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = block.get_submodule(parent_name)
            setattr(parent, attr, LoRALinear(module, rank, alpha, scaling, dropout))
            replaced.append(f"{prefix}.{i}.{name}")
    if not replaced:
        raise GptclfError(f"LoRA targets {targets!r} match no linear layer in the blocks")
    log.info(
        "LoRA rank %d, alpha %g (%s) on %d linears (%s)",
        rank,
        alpha,
        scaling,
        len(replaced),
        targets,
    )
    return replaced


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """Every `LoRALinear` in `model`."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def mark_trainable(model: nn.Module) -> None:
    """Unfreeze the LoRA parameters and the class head (`model.head`); the caller froze the rest."""
    layers = lora_layers(model)
    if not layers:
        raise GptclfError("--trainable lora: the model has no LoRA layers (apply_lora first)")
    for layer in layers:
        layer.lora_A.requires_grad = True
        layer.lora_B.requires_grad = True
    for p in model.head.parameters():
        p.requires_grad = True  # a new head must always train; it is saved with the adapters


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by a plain `nn.Linear` with merged weights (in place).

    The result has exactly the base model's keys and computes what the LoRA model computed.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, module.to_linear())
    return model
