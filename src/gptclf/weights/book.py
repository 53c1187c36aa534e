"""The book's `GPTModel` (Raschka, *Build a Large Language Model From Scratch*, ch. 4) → our keys.

Its layout differs from GPT-2's by names only, apart from attention: separate `W_query`/`W_key`/
`W_value` linears, which our fused `c_attn` stacks as [q | k | v] rows. Its LayerNorm is
`scale * (x - mean) / sqrt(var + 1e-5) + shift` with the biased variance: `nn.LayerNorm` exactly.
Used by the speed benchmark to train ours from exactly the book's random weights.
"""

from __future__ import annotations

import re

import torch

from gptclf.config import PRESETS, ModelConfig
from gptclf.errors import GptclfError

# The book's cfg dict -> ModelConfig field (`qkv_bias` is handled by the conversion: the book's
# output projection and MLP always have biases, so a missing q/k/v bias becomes zeros).
BOOK_CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "context_length": "context_length",
    "emb_dim": "d_model",
    "n_heads": "n_head",
    "n_layers": "n_layer",
    "drop_rate": "dropout",
}
# Per block: the book's name -> ours ({} = block index).
BLOCK_KEYS = {
    "att.out_proj": "attn.c_proj",
    "ff.layers.0": "mlp.c_fc",
    "ff.layers.2": "mlp.c_proj",
    "norm1": "ln_1",
    "norm2": "ln_2",
}
TOP_KEYS = {"tok_emb": "wte", "pos_emb": "wpe", "final_norm": "ln_f", "out_head": "lm_head"}
# The book's LayerNorm parameters -> nn.LayerNorm's.
PARAM_NAMES = {"scale": "weight", "shift": "bias", "weight": "weight", "bias": "bias"}
QKV = ("att.W_query", "att.W_key", "att.W_value")  # stacked in this order


def config_from_book(cfg: dict, name: str = "book") -> ModelConfig:
    """The book's cfg dict (e.g. GPT_CONFIG_124M) -> a GPT-2-style ModelConfig (untied LM head:
    the book's `out_head` is its own matrix)."""
    fields = {ours: cfg[theirs] for theirs, ours in BOOK_CONFIG_MAP.items()}
    gpt2 = {k: v for k, v in PRESETS["gpt2-small"].items() if k not in fields}
    return ModelConfig(**{**gpt2, **fields, "tie_embeddings": False, "name": name})


def convert_book_gpt(book_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The book's GPTModel state dict -> our GPT state dict. Pure; drops the causal-mask buffers.

    Without `out_head.weight` (e.g. it was replaced by a class head and removed), the result has
    no `lm_head.weight` either: a `SequenceClassifier` drops the LM head anyway.
    """
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (block, weight|bias) -> q/k/v
    for key, tensor in book_state.items():
        top, _, param = key.rpartition(".")
        if re.fullmatch(r"trf_blocks\.\d+\.att\.mask", key):
            continue  # a buffer: the causal mask, recomputed by SDPA
        block = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)", top)
        if block is not None:
            index, module = block.groups()
            if module in QKV:
                qkv.setdefault((index, param), {})[module] = tensor
                continue
            ours = f"h.{index}.{BLOCK_KEYS[module]}" if module in BLOCK_KEYS else None
        else:
            ours = TOP_KEYS.get(top)
        if ours is None or param not in PARAM_NAMES:
            raise GptclfError(f"unknown key {key!r} in the book's GPTModel state dict")
        state[f"{ours}.{PARAM_NAMES[param]}"] = tensor
    for (index, param), parts in qkv.items():
        if len(parts) != len(QKV):
            raise GptclfError(f"block {index}: expected {QKV} {param}s, got {sorted(parts)}")
        state[f"h.{index}.attn.c_attn.{param}"] = torch.cat([parts[name] for name in QKV])
    for index, _ in list(qkv):  # qkv_bias=False: the book has no q/k/v bias, ours is zero
        bias = f"h.{index}.attn.c_attn.bias"
        if bias not in state:
            weight = state[f"h.{index}.attn.c_attn.weight"]
            state[bias] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return state
