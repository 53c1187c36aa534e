"""BERT-style encoder: post-norm blocks, bidirectional attention, absolute learned positions.

Fits the backbone protocol of `SequenceClassifier` (`embed`, `run_blocks`, blocks in `h`, `ln_f`,
`config.d_model`, `lm_head`), so classification, pooling (`cls`, `mean`), freezing, LoRA and the
prefix cache work unchanged. Differences from `model.GPT`, each a property of BERT itself:
- post-norm: `x = LN(x + sublayer(x))`, hence no final norm (`ln_f` is the identity);
- embeddings = token + position + token type (always type 0: single sentences), then LayerNorm;
- exact (erf) GELU; no causal mask; separate query/key/value projections (see below).

Module names follow `model.py` where the roles match (`wte`, `wpe`, `h.N.attn.c_proj`,
`mlp.c_fc`, `mlp.c_proj`, `ln_1`, `ln_2`). Query, key and value stay three linears, as in the
checkpoint: the key conversion (`weights/bert.py`) stays a pure one-to-one rename table, and LoRA
adapts each projection with its own rank-r update (as the LoRA paper and the book do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.model import Unpadded, one_query_attention, rows
from gptclf.weights.strict import assign_state_dict


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        inner = config.n_head * config.head_dim
        self.query = nn.Linear(config.d_model, inner, bias=config.bias)
        self.key = nn.Linear(config.d_model, inner, bias=config.bias)
        self.value = nn.Linear(config.d_model, inner, bias=config.bias)
        self.c_proj = nn.Linear(inner, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        index: torch.Tensor | None = None,
        layout: Unpadded | None = None,
    ) -> torch.Tensor:
        """(B, T, d); with `index` (B,), only for the query at position index[b]: (B, 1, d).
        With `layout`, x is (N, d), the real positions only, and so is the output (without
        `index`), as in `model.Attention`."""
        B = layout.shape[0] if layout is not None else x.shape[0]
        if index is None:
            queries = x
        else:
            queries = rows(x, index) if layout is None else layout.rows(x, index)
        q, k, v = (
            proj(inputs) for proj, inputs in ((self.query, queries), (self.key, x), (self.value, x))
        )
        if layout is not None:  # attention alone sees the (B, T) layout
            k, v = layout.pad(k), layout.pad(v)
            q = layout.pad(q) if index is None else q
        q, k, v = (t.view(B, -1, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        if index is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        else:
            y = one_query_attention(q, k, v, attn_mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, -1, self.n_head * self.head_dim)  # (B, T or 1, nh*hs)
        if layout is not None and index is None:
            y = layout.unpad(y)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))  # exact (erf) GELU, as BERT


class EncoderBlock(nn.Module):
    """Post-norm block: x = LN(x + attn(x)), then x = LN(x + mlp(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        index: torch.Tensor | None = None,
        layout: Unpadded | None = None,
    ) -> torch.Tensor:
        """(B, T, d); with `index` (B,), only the output at position index[b]: (B, 1, d).
        With `layout` (`Unpadded`), x holds the real positions only: (N, d) in and out."""
        if index is None:
            residual = x
        else:
            residual = rows(x, index) if layout is None else layout.rows(x, index)
        x = self.ln_1(residual + self.attn(x, attn_mask, index, layout))
        return self.ln_2(x + self.mlp(x))


def padding_mask_to_bias(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, 1, T) over keys, True = real token; None when nothing is padded.

    Every query (pads too) attends to all real keys, exactly as BERT's additive mask does; a row
    never ends up all-masked because every sequence has real tokens ([CLS] at least).
    """
    if bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class Encoder(nn.Module):
    """BERT: embeddings -> post-norm blocks. `forward` returns hidden states (no LM head)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "bert":
            raise GptclfError(f"Encoder needs a config with arch 'bert', got {config.arch!r}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context_length, config.d_model)
        self.wtt = nn.Embedding(config.type_vocab_size, config.d_model)
        self.ln_emb = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.Identity()  # post-norm: every block already ends with a LayerNorm
        self.lm_head: nn.Module | None = None  # the MLM head is not loaded
        if self.wte.weight.device.type != "meta":  # from_state_dict assigns real weights anyway
            self.reset_parameters()

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> Encoder:
        """Build directly from converted weights (strict: same keys, same shapes), no random init."""
        with torch.device("meta"):
            model = cls(config)
        assign_state_dict(model, state_dict, config.name)
        return model

    def init_buffers(self) -> None:
        """Nothing derived to recompute (kept for the backbone protocol, see `GPT.init_buffers`)."""

    def reset_parameters(self) -> None:
        """BERT initialisation: N(0, 0.02) for matrices and embeddings, zero biases, unit norms."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LayerNorm(token + position + token-type-0 embeddings) (B, T, d): the input of block 0.

        Positions are 0..T-1 whatever the mask, as in BERT (batches are right-padded).
        """
        T = input_ids.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds context {self.config.context_length}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions) + self.wtt.weight[0]
        return self.drop(self.ln_emb(x))

    def run_blocks(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply blocks[start:stop] to hidden states x (B, T, d_model); pad keys are masked out,
        and where that pays the blocks run on the real tokens only (pads' states are zeros).

        index (B,): only position index[b] of each row is wanted, as in `GPT.run_blocks`: the
        last of these blocks computes that position only. Returns (B, 1, d_model) then.
        """
        attn_mask = None if attention_mask is None else padding_mask_to_bias(attention_mask)
        blocks = list(self.h[start:stop])
        last = blocks.pop() if index is not None and blocks else None
        # The real tokens only (`model.Unpadded`): pad keys are masked out, so a pad's own
        # state reaches no real position; it is left at zero instead of computed.
        layout = Unpadded.of(attention_mask, index) if blocks or last else None
        if layout is not None:
            x = layout.unpad(x)
        for block in blocks:
            x = block(x, attn_mask, layout=layout)
        if index is None:
            return x if layout is None else layout.pad(x)
        if last is None:
            return rows(x, index) if layout is None else layout.rows(x, index)
        return last(x, attn_mask, index, layout)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Last-layer hidden states (B, T, d_model), BERT's `last_hidden_state` at the real
        positions; at pads, zeros where the batch ran unpadded (`run_blocks`), which nothing
        reads (pad keys are masked, the pools skip pads)."""
        return self.run_blocks(self.embed(input_ids, attention_mask), attention_mask)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states (B, T, d_model): an encoder has no LM head here."""
        return self.hidden_states(input_ids, attention_mask)
