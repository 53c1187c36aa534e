"""Decoder-only transformer: GPT-2 and Llama-style models from one set of classes.

Module names follow the GPT-2 checkpoint (`wte`, `wpe`, `h.N.ln_1`, `attn.c_attn`, `mlp.c_fc`,
`ln_f`, `lm_head`) so that loading GPT-2 weights is a near-identity key map. Llama differs by config
switches only (see `ModelConfig`): RMSNorm, rotary positions, SwiGLU, grouped-query attention, no bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gptclf.batching import eighth_step
from gptclf.config import ModelConfig
from gptclf.weights.strict import assign_state_dict


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class RotaryEmbedding(nn.Module):
    """RoPE in the Hugging Face "rotate half" layout (first half of a head pairs with second half).

    llama.cpp stores Q/K rows interleaved instead; `weights/gguf.py` undoes that permutation.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(config.context_length, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (T_max, head_dim)
        # Not persistent: derived from the config, never part of a checkpoint.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: (B, nh, T, hs); positions: (B, T) or (T,)
        cos = self.cos[positions].to(x.dtype)  # (B, T, hs) or (T, hs)
        sin = self.sin[positions].to(x.dtype)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = (
            config.n_head,
            config.n_kv_head,
            config.head_dim,
        )
        # Fused projection: rows are [q (n_head*hs) | k (n_kv_head*hs) | v (n_kv_head*hs)].
        qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.d_model, qkv_out, bias=config.bias)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        rope: RotaryEmbedding | None,
        positions: torch.Tensor,
        index: torch.Tensor | None = None,
        layout: Unpadded | None = None,
    ) -> torch.Tensor:
        """Self-attention output (B, T, d); with `index` (B,), only for the query at position
        index[b] of each row, over the keys and values of every position: (B, 1, d).

        With `layout`, x is (N, d), the real positions only, and so is the output (without
        `index`): the projections skip the pads and only attention sees the (B, T) layout."""
        B, T = layout.shape if layout is not None else x.shape[:2]
        hs = self.head_dim
        q_size, kv_size = self.n_head * hs, self.n_kv_head * hs
        if index is None:
            qkv = self.c_attn(x)
            if layout is not None:
                qkv = layout.pad(qkv)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q_positions = positions
        else:
            q, kv = self._project_at(x, index, q_size, layout)
            k, v = kv.split([kv_size, kv_size], dim=-1)
            q_positions = positions[index] if positions.dim() == 1 else rows(positions, index)
            q_positions = q_positions.view(B, 1)
        q = q.view(B, -1, self.n_head, hs).transpose(1, 2)  # (B, nh, T or 1, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if rope is not None:
            q, k = rope(q, q_positions), rope(k, positions)
        dropout_p = self.config.dropout if self.training else 0.0
        if index is None:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=attn_mask is None and self.config.causal,
                dropout_p=dropout_p,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        else:
            y = one_query_attention(q, k, v, attn_mask, dropout_p)
        y = y.transpose(1, 2).reshape(B, -1, q_size)  # (B, T or 1, nh*hs)
        if layout is not None and index is None:
            y = layout.unpad(y)
        return self.resid_dropout(self.c_proj(y))

    def _project_at(
        self, x: torch.Tensor, index: torch.Tensor, q_size: int, layout: Unpadded | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q of the rows at `index` (B, 1, q_size), k|v of every position (B, T, 2 * kv_size))."""
        if type(self.c_attn) is nn.Linear:  # project the query rows only: a third less work
            w, b = self.c_attn.weight, self.c_attn.bias
            queries = rows(x, index) if layout is None else layout.rows(x, index)
            q = F.linear(queries, w[:q_size], None if b is None else b[:q_size])
            kv = F.linear(x, w[q_size:], None if b is None else b[q_size:])
            return q, kv if layout is None else layout.pad(kv)
        # LoRA-wrapped or quantized: one projection of everything, then the query's rows.
        qkv = self.c_attn(x)
        if layout is not None:
            qkv = layout.pad(qkv)
        return rows(qkv[..., :q_size], index), qkv[..., q_size:]


def one_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """SDPA for one query per row: q (B, nh, 1, hs), k/v (B, n_kv, T, hs), mask (B, 1, 1, T).

    Written out because SDPA's CPU kernel is slow at this shape (its backward ~2.5x this one).
    Causality is in the mask (`query_mask_to_bias`): SDPA's is_causal would align a single
    query with key 0.
    """
    B, nh, _, hs = q.shape
    n_kv = k.shape[1]
    # Query heads grouped by the key/value head they share (GQA), as SDPA's enable_gqa does.
    scores = q.view(B, n_kv, nh // n_kv, hs) @ k.transpose(-1, -2) * hs**-0.5  # (B, n_kv, g, T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = F.dropout(scores.float().softmax(dim=-1).to(v.dtype), dropout_p)
    return (weights @ v).view(B, nh, 1, hs)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        # SwiGLU: c_fc fuses [gate | up] into one matmul; c_proj is the down projection.
        fc_out = 2 * config.d_ff if self.swiglu else config.d_ff
        self.c_fc = nn.Linear(config.d_model, fc_out, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask, rope, positions, index=None, layout=None):
        """(B, T, d); with `index` (B,), only the output at position index[b] of each row
        (B, 1, d): attention still reads every position, the rest is per position.
        With `layout` (`Unpadded`), x holds the real positions only: (N, d) in and out."""
        h = self.ln_1(x)
        if index is not None:
            x = rows(x, index) if layout is None else layout.rows(x, index)
        x = x + self.attn(h, attn_mask, rope, positions, index, layout)
        return x + self.mlp(self.ln_2(x))


def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b]] for each row b, keeping the position axis: (B, T, ...) -> (B, 1, ...)."""
    return x[torch.arange(x.shape[0], device=x.device), index].unsqueeze(1)


class Unpadded:
    """Where a padded batch's real tokens sit, so that a block's per-position work (norms,
    projections, MLP: nearly all of its FLOPs) runs on those N tokens only, and attention alone
    sees the (B, T) layout. Random batches of texts are mostly pads: the SMS training split in
    batches of 8, padded per batch, has 38,111 tokens in 80,080 positions.

    The same arithmetic per real position, so the same result up to float rounding.

    The rows are N rounded up by `round_rows` (spare rows repeat the first real token and are
    dropped): oneDNN keeps a primitive, with its own bf16 weight copies, per input shape, and one
    per distinct N grew the bf16 main job's peak RSS from 1.5 to 2.5 GiB."""

    @staticmethod
    def round_rows(n: int) -> int:
        """Rows for N real tokens: a multiple of 64, or above 512 of an eighth (at most 8
        lengths per doubling). Two epochs of batches of 8 SMS texts in bf16: exact N took 1.3 GiB
        more memory and 1.3x the time of rounding, which was faster than the padded batches."""
        step = max(64, eighth_step(n))
        return -(-n // step) * step

    def __init__(self, attention_mask: torch.Tensor) -> None:
        self.shape = attention_mask.shape  # (B, T)
        real = attention_mask.reshape(-1).bool()
        flat = real.nonzero().squeeze(1)  # positions of the N real tokens in B * T
        self.n = len(flat)
        spare = self.round_rows(self.n) - self.n
        # (N + spare,): the spare rows read the first real token (any finite row would do; `pad`
        # drops them, so their gradient is zero), which saves a padded copy of x per block
        self.flat = torch.cat([flat, flat[:1].expand(spare)])
        self.rank = real.long().cumsum(0) - 1  # a real position's row among the N

    @classmethod
    def of(cls, attention_mask: torch.Tensor | None, index: torch.Tensor | None) -> Unpadded | None:
        """The layout when unpadding pays: fewer rows than B * T, every read position a real
        token, and an eager forward (torch.compile and tracing want static shapes)."""
        if attention_mask is None or bool(attention_mask.all()):
            return None
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return None
        if index is not None and not bool(rows(attention_mask[..., None], index).all()):
            return None  # a read position is a pad (`first` with left padding): keep it
        if cls.round_rows(int(attention_mask.sum())) >= attention_mask.numel():
            return None  # small batches: the rounded rows would be no fewer than B * T
        return cls(attention_mask)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (N + spare, C)."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.flat)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N + spare, C) -> (B, T, C), zeros at the pads (masked keys: never read)."""
        B, T = self.shape
        out = x.new_zeros(B * T, x.shape[-1]).index_copy(0, self.flat[: self.n], x[: self.n])
        return out.view(B, T, -1)

    def rows(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """`rows` for unpadded x (N, C): the real position index[b] of each row b, (B, 1, C)."""
        T = self.shape[1]
        at = torch.arange(len(index), device=index.device) * T + index
        return x.index_select(0, self.rank[at]).unsqueeze(1)


def attention_mask_to_bias(attention_mask: torch.Tensor, causal: bool) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, T, T), True = may attend, from a (B, T) padding mask (1 = real).

    None when nothing is padded (SDPA then uses its fast causal path). Pad keys are masked out; every
    query may always attend to itself so a pad query never sees an all-masked row (NaN).
    """
    if bool(attention_mask.all()):
        return None
    T = attention_mask.shape[1]
    allowed = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T) over keys
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=allowed.device).tril()
    return allowed | torch.eye(T, dtype=torch.bool, device=allowed.device)


def query_mask_to_bias(
    attention_mask: torch.Tensor | None, index: torch.Tensor, T: int, causal: bool
) -> torch.Tensor | None:
    """The row of `attention_mask_to_bias` for one query per sequence, at position index[b]:
    (B, 1, 1, T), True = may attend; None when that query may attend to every key."""
    keys = torch.arange(T, device=index.device)
    if attention_mask is None:
        allowed = torch.ones(len(index), T, dtype=torch.bool, device=index.device)
    else:
        allowed = attention_mask.bool()
    if causal:
        allowed = allowed & (keys <= index[:, None])
    allowed = allowed | (keys == index[:, None])
    return None if bool(allowed.all()) else allowed[:, None, None, :]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = (
            nn.Embedding(config.context_length, config.d_model)
            if config.positions == "learned"
            else None
        )
        self.rope = RotaryEmbedding(config) if config.positions == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        self.lm_head: nn.Linear | None = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if self.wte.weight.device.type != "meta":  # from_state_dict assigns real weights anyway
            self.reset_parameters()

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> GPT:
        """Build a model directly from converted weights (strict), without a random init first."""
        with torch.device("meta"):
            model = cls(config)
        assign_state_dict(model, state_dict, config.name)
        if config.tie_embeddings:
            model.lm_head.weight = model.wte.weight
        model.init_buffers()
        return model

    def init_buffers(self) -> None:
        """Recompute the derived (non-persistent) buffers, e.g. after building on the meta device."""
        if self.rope is not None:
            self.rope = RotaryEmbedding(self.config)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (as in nanoGPT): N(0, 0.02), residual projections scaled by depth."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02
                if name.endswith("c_proj.weight"):
                    std /= math.sqrt(2 * self.config.n_layer)  # keeps the residual stream's scale
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)  # norm weights

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token (+ learned position) embeddings (B, T, d_model): the input of block 0."""
        T = input_ids.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence length {T} exceeds context {self.config.context_length}")
        x = self.wte(input_ids)
        if self.wpe is not None:
            x = x + self.wpe(self._positions(T, attention_mask, input_ids.device))
        return self.drop(x)

    def run_blocks(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply blocks[start:stop] to hidden states x (B, T, d_model).

        Split so that frozen lower blocks can run once and be cached (see `prefix_cache.py`).
        index (B,): only position index[b] of each row is wanted (single-token pooling), so the
        last of these blocks computes queries, attention output and MLP at that position only;
        keys and values still come from every position. Returns (B, 1, d_model) then.
        """
        T = x.shape[1]
        positions = self._positions(T, attention_mask, x.device)
        blocks = list(self.h[start:stop])
        last = blocks.pop() if index is not None and blocks else None
        attn_mask = (
            None
            if attention_mask is None or not blocks
            else attention_mask_to_bias(attention_mask, self.config.causal)
        )
        layout = Unpadded.of(attention_mask, index) if blocks or last else None
        if layout is not None:
            x = layout.unpad(x)
        for block in blocks:
            x = block(x, attn_mask, self.rope, positions, layout=layout)
        if index is None:
            return x if layout is None else layout.pad(x)
        if last is None:
            return rows(x, index) if layout is None else layout.rows(x, index)
        query_mask = query_mask_to_bias(attention_mask, index, T, self.config.causal)
        return last(x, query_mask, self.rope, positions, index, layout)

    @staticmethod
    def _positions(T: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor:
        if attention_mask is None:
            return torch.arange(T, device=device)
        return positions_from_mask(attention_mask)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, d_model).

        attention_mask (B, T), 1 = real token: pad keys are masked out and positions count real
        tokens only. Without it every token (pads included) is an ordinary token, as in the book.
        """
        return self.ln_f(self.run_blocks(self.embed(input_ids, attention_mask), attention_mask))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vocabulary logits (B, T, vocab_size)."""
        if self.lm_head is None:
            raise RuntimeError("this model's LM head was replaced; call hidden_states()")
        return self.lm_head(self.hidden_states(input_ids, attention_mask))
