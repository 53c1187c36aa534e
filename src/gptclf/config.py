"""Model configuration: one dataclass for every decoder family, with named presets.

GPT-2 and Llama-style models differ only by the switches below (norm, MLP, positions, bias,
grouped-query attention, tied head); `model.py` reads them, never the preset name.
`arch="bert"` selects the post-norm encoder of `encoder.py` (same fields, plus token types).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gptclf.errors import GptclfError


@dataclass
class ModelConfig:
    name: str = "custom"
    vocab_size: int = 50257
    context_length: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain multi-head)
    d_model: int = 768
    d_ff: int | None = None  # MLP hidden size; None = 4 * d_model
    head_dim: int | None = None  # None = d_model // n_head
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu_tanh", "swiglu", "gelu"] = "gelu_tanh"  # gelu = exact (erf): BERT
    positions: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    bias: bool = True  # bias on the attention and MLP projections (GPT-2 yes, Llama no)
    tie_embeddings: bool = True  # LM head shares the token embedding matrix
    causal: bool = True  # False: every token attends to every (non-pad) token
    dropout: float = 0.0  # 0.0 for finetuning, as in the book's chapter 6
    arch: Literal["decoder", "bert"] = "decoder"  # bert: post-norm encoder (encoder.py)
    type_vocab_size: int = 0  # bert: token type (segment) embeddings

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise GptclfError(
                    f"d_model {self.d_model} is not divisible by n_head {self.n_head}"
                )
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise GptclfError(
                f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}"
            )
        for field, allowed in (
            ("norm", ("layernorm", "rmsnorm")),
            ("mlp", ("gelu_tanh", "swiglu", "gelu")),
            ("positions", ("learned", "rope")),
            ("arch", ("decoder", "bert")),
        ):
            if getattr(self, field) not in allowed:
                raise GptclfError(
                    f"config {field}={getattr(self, field)!r}; expected one of {allowed}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise GptclfError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.arch == "bert":
            fixed = {"norm": "layernorm", "mlp": "gelu", "positions": "learned"}
            if any(getattr(self, k) != v for k, v in fixed.items()) or self.type_vocab_size < 1:
                raise GptclfError(f"arch bert needs {fixed} and type_vocab_size >= 1")
            self.causal = False  # an encoder is bidirectional: the causal switch is for decoders
        elif self.mlp == "gelu":
            raise GptclfError("mlp 'gelu' (erf) is implemented by the bert encoder only")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """The preset `name` (aliases accepted), with fields replaced by `overrides`."""
        key = ALIASES.get(name, name)
        if key not in PRESETS:
            raise GptclfError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[key], "name": key, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GptclfError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


_GPT2 = dict(
    vocab_size=50257,
    context_length=1024,
    norm="layernorm",
    mlp="gelu_tanh",
    positions="learned",
    bias=True,
    tie_embeddings=True,
)
_LLAMA = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False)

PRESETS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/openai-community/gpt2 (and -medium, -large, -xl): config.json
    "gpt2-small": {**_GPT2, "n_layer": 12, "n_head": 12, "d_model": 768},
    "gpt2-medium": {**_GPT2, "n_layer": 24, "n_head": 16, "d_model": 1024},
    "gpt2-large": {**_GPT2, "n_layer": 36, "n_head": 20, "d_model": 1280},
    "gpt2-xl": {**_GPT2, "n_layer": 48, "n_head": 25, "d_model": 1600},
    # Tiny shapes for tests: real GPT-2 vocabulary, so the real tokenizer works with them.
    "gpt2-tiny": {**_GPT2, "n_layer": 2, "n_head": 4, "d_model": 32, "context_length": 128},
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M: config.json
    "smollm2-135m": {
        **_LLAMA,
        "vocab_size": 49152,
        "context_length": 8192,
        "n_layer": 30,
        "n_head": 9,
        "n_kv_head": 3,
        "d_model": 576,
        "d_ff": 1536,
        "rope_theta": 100000.0,
        "tie_embeddings": True,
    },
    "llama-tiny": {
        **_LLAMA,
        "vocab_size": 512,
        "context_length": 128,
        "n_layer": 2,
        "n_head": 4,
        "n_kv_head": 2,
        "d_model": 32,
        "d_ff": 64,
        "rope_theta": 10000.0,
    },
    # https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2: config.json (a BERT encoder)
    "minilm-l6": {
        "arch": "bert",
        "vocab_size": 30522,
        "context_length": 512,
        "n_layer": 6,
        "n_head": 12,
        "d_model": 384,
        "d_ff": 1536,
        "norm_eps": 1e-12,
        "mlp": "gelu",
        "type_vocab_size": 2,
        "tie_embeddings": False,
    },
}
ALIASES = {"gpt2": "gpt2-small"}
