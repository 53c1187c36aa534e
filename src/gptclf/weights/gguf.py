"""GGUF (llama.cpp) checkpoints: metadata -> `ModelConfig`, tensors -> our state dict, vocab -> `Tokenizer`.

A GGUF file carries everything in one place: the config and the tokenizer as metadata under
llama.cpp's key names, and the weights under llama.cpp's tensor names, often block-quantized. Each
format quirk is handled in one named place:

- metadata -> config: `CONFIG_KEYS` plus the fixed switches of each architecture in `ARCHITECTURES`;
- tensor names -> our keys: `ARCHITECTURES[arch].tensors`; q/k/v and gate/up are fused row-wise;
- the container (header, metadata, tensor table), quantized blocks and GGUF's reversed
  dimension order: `gguf_file.py`;
- llama.cpp's Q/K row permutation for its RoPE kernel: `unpermute_rope_rows`;
- byte-level BPE from `tokenizer.ggml.*`, pre-tokenizer by `tokenizer.ggml.pre`: `PRE_TOKENIZERS`.

Sources of truth: the format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; the names,
https://github.com/ggml-org/llama.cpp/blob/master/gguf-py/gguf/constants.py; how Hugging Face
checkpoints are written, https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import TokenType
from tokenizers import AddedToken, pre_tokenizers

from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.tokenizer import Tokenizer, byte_level_bpe
from gptclf.weights.depth import first_blocks, unused_block
from gptclf.weights.gguf_file import GGUFFile, Tensor, dequantize

logger = logging.getLogger(__name__)

# ModelConfig field -> metadata keys that may hold it (first present wins); `{arch}` is the value
# of `general.architecture`. vocab_size comes from the token list, the switches from ARCHITECTURES.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "n_layer": ("{arch}.block_count",),
    "d_model": ("{arch}.embedding_length",),
    "n_head": ("{arch}.attention.head_count",),
    "n_kv_head": ("{arch}.attention.head_count_kv",),
    "d_ff": ("{arch}.feed_forward_length",),
    "head_dim": ("{arch}.attention.key_length",),
    "context_length": ("{arch}.context_length",),
    "norm_eps": ("{arch}.attention.layer_norm_rms_epsilon", "{arch}.attention.layer_norm_epsilon"),
    "rope_theta": ("{arch}.rope.freq_base",),
}
REQUIRED_FIELDS = ("n_layer", "d_model", "n_head", "context_length")


@dataclass(frozen=True)
class GGUFArch:
    switches: dict[str, Any]  # ModelConfig fields fixed by the architecture
    # llama.cpp tensor name ({} = layer) -> (our key, row block): the blocks of one key are
    # concatenated along rows in block order (fused q|k|v and gate|up).
    tensors: dict[str, tuple[str, int]]
    # tensors whose rows llama.cpp permuted for its RoPE -> ModelConfig field with their head count
    rope_permuted: dict[str, str]


_COMMON_TENSORS = {
    "token_embd.weight": ("wte.weight", 0),
    "output_norm.weight": ("ln_f.weight", 0),
    "output.weight": ("lm_head.weight", 0),
    "blk.{}.attn_norm.weight": ("h.{}.ln_1.weight", 0),
    "blk.{}.attn_output.weight": ("h.{}.attn.c_proj.weight", 0),
    "blk.{}.ffn_norm.weight": ("h.{}.ln_2.weight", 0),
    "blk.{}.ffn_down.weight": ("h.{}.mlp.c_proj.weight", 0),
}

ARCHITECTURES: dict[str, GGUFArch] = {
    # convert_hf_to_gguf.py `LlamaModel` (also SmolLM2, Mistral-style dense models).
    "llama": GGUFArch(
        switches=dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False),
        tensors={
            **_COMMON_TENSORS,
            "blk.{}.attn_q.weight": ("h.{}.attn.c_attn.weight", 0),
            "blk.{}.attn_k.weight": ("h.{}.attn.c_attn.weight", 1),
            "blk.{}.attn_v.weight": ("h.{}.attn.c_attn.weight", 2),
            "blk.{}.ffn_gate.weight": ("h.{}.mlp.c_fc.weight", 0),
            "blk.{}.ffn_up.weight": ("h.{}.mlp.c_fc.weight", 1),
        },
        rope_permuted={"blk.{}.attn_q.weight": "n_head", "blk.{}.attn_k.weight": "n_kv_head"},
    ),
    # convert_hf_to_gguf.py `GPT2Model`: Conv1D weights already transposed to (out, in).
    "gpt2": GGUFArch(
        switches=dict(norm="layernorm", mlp="gelu_tanh", positions="learned", bias=True),
        tensors={
            **_COMMON_TENSORS,
            "position_embd.weight": ("wpe.weight", 0),
            "output_norm.bias": ("ln_f.bias", 0),
            "blk.{}.attn_norm.bias": ("h.{}.ln_1.bias", 0),
            "blk.{}.attn_qkv.weight": ("h.{}.attn.c_attn.weight", 0),
            "blk.{}.attn_qkv.bias": ("h.{}.attn.c_attn.bias", 0),
            "blk.{}.attn_output.bias": ("h.{}.attn.c_proj.bias", 0),
            "blk.{}.ffn_norm.bias": ("h.{}.ln_2.bias", 0),
            "blk.{}.ffn_up.weight": ("h.{}.mlp.c_fc.weight", 0),
            "blk.{}.ffn_up.bias": ("h.{}.mlp.c_fc.bias", 0),
            "blk.{}.ffn_down.bias": ("h.{}.mlp.c_proj.bias", 0),
        },
        rope_permuted={},
    ),
}


def _byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_byte_level() -> pre_tokenizers.PreTokenizer:
    # llama.cpp splits on "\p{N}" first, then applies GPT-2's regex (= HF's Digits + ByteLevel).
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


# `tokenizer.ggml.pre` -> pre-tokenizer. Source of truth: the `regex_exprs` per
# LLAMA_VOCAB_PRE_TYPE_* in https://github.com/ggml-org/llama.cpp/blob/master/src/llama-vocab.cpp
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _byte_level,
    "gpt-2": _byte_level,
    "smollm": _digits_then_byte_level,
    "starcoder": _digits_then_byte_level,
    "refact": _digits_then_byte_level,
}


def load_gguf(
    path: Path, layers: int | None = None, **config_overrides: Any
) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """(config, float32 state dict in our keys, tokenizer) from a llama.cpp GGUF file.

    `config_overrides` replace fields of the config read from the file (e.g. `dropout`, `name`).
    `layers`: only the first K blocks (`weights/depth.py`): the others are never dequantized.
    """
    path = Path(path)
    start = time.perf_counter()
    reader = open_gguf(path)
    with named_errors(path):
        config = _config(reader, path.stem, config_overrides)
    depth, config = config.n_layer, first_blocks(config, layers)  # its message names no file
    with named_errors(path):
        state = _weights(reader, config, depth)
        tokenizer = tokenizer_from_gguf(reader, _meta(reader, "tokenizer.ggml.tokens"))
    types = dict(Counter(t.tensor_type.name for t in reader.tensors))
    seconds = time.perf_counter() - start
    logger.info("read %s (%d tensors: %s) in %.1fs", path.name, len(reader.tensors), types, seconds)
    return config, state, tokenizer


@contextlib.contextmanager
def named_errors(path: Path) -> Iterator[None]:
    """A GGUF error names the file it is about."""
    try:
        yield
    except GptclfError as exc:
        raise GptclfError(f"{path}: {exc}") from None


def load_gguf_tokenizer(path: Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (e.g. for `--weights random`)."""
    reader = open_gguf(Path(path))
    try:
        return tokenizer_from_gguf(reader, _meta(reader, "tokenizer.ggml.tokens") or [])
    except GptclfError as exc:
        raise GptclfError(f"{path}: {exc}") from None


def _config(reader: GGUFFile, name: str, overrides: dict[str, Any]) -> ModelConfig:
    """The model config of the file's metadata, with `overrides`."""
    arch_name = _architecture(reader)
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise GptclfError("GGUF has no tokenizer.ggml.tokens")
    by_name = {t.name: t for t in reader.tensors}
    config = config_from_gguf(reader, arch_name, len(tokens), _is_tied(by_name), name)
    return ModelConfig.from_dict({**config.to_dict(), **overrides})


def _weights(reader: GGUFFile, config: ModelConfig, depth: int) -> dict[str, torch.Tensor]:
    """Our state dict of `config`'s blocks: the file's blocks from `config.n_layer` up to its
    `depth` (cut off by --layers) are skipped before they are dequantized."""
    tensors = {
        t.name: read_tensor(t)
        for t in reader.tensors
        if not unused_block(t.name, _LAYER, config.n_layer, depth)
    }
    return convert_gguf_tensors(tensors, ARCHITECTURES[_architecture(reader)], config)


def _architecture(reader: GGUFFile) -> str:
    arch_name = _meta(reader, "general.architecture")
    if arch_name not in ARCHITECTURES:
        raise GptclfError(
            f"unsupported GGUF architecture {arch_name!r}; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch_name


def open_gguf(path: Path) -> GGUFFile:
    if not path.is_file():
        raise GptclfError(f"missing GGUF file {path}")
    try:
        return GGUFFile(path)
    except Exception as exc:  # ValueError, UnicodeDecodeError, ... on bad bytes
        raise GptclfError(f"cannot read {path} (truncated or not a GGUF file): {exc}") from None


def _meta(reader: GGUFFile, key: str) -> Any:
    """The value of metadata `key` (a list for arrays), or None when absent."""
    return reader.fields.get(key)


def _is_tied(tensors: dict[str, Tensor]) -> bool:
    """llama.cpp omits `output.weight` for a tied head, except its GPT-2 converter, which writes the
    shared matrix twice (`GPT2Model.modify_tensors`): a byte-identical copy also counts as tied."""
    head, embedding = tensors.get("output.weight"), tensors.get("token_embd.weight")
    if head is None:
        return True
    return (
        embedding is not None
        and head.tensor_type == embedding.tensor_type
        and np.array_equal(head.data, embedding.data)
    )


def config_from_gguf(
    reader: GGUFFile, arch: str, vocab_size: int, tied: bool, name: str
) -> ModelConfig:
    """ModelConfig from the metadata table `CONFIG_KEYS` and the switches of `arch`."""
    fields: dict[str, Any] = {}
    for field, keys in CONFIG_KEYS.items():
        for key in keys:
            value = _meta(reader, key.format(arch=arch))
            if value is not None:
                if isinstance(value, list):
                    raise GptclfError(f"GGUF {key.format(arch=arch)} varies per layer: unsupported")
                fields[field] = value
                break
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        keys = [CONFIG_KEYS[f][0].format(arch=arch) for f in missing]
        raise GptclfError(f"GGUF metadata lacks {', '.join(keys)}")
    config = ModelConfig(
        **fields,
        **ARCHITECTURES[arch].switches,
        vocab_size=vocab_size,
        tie_embeddings=tied,
        name=name,
    )
    # Metadata that would change the maths, which our model does not implement: refuse, not ignore.
    rope_dims = _meta(reader, f"{arch}.rope.dimension_count")
    if config.positions == "rope" and rope_dims not in (None, config.head_dim):
        raise GptclfError(f"GGUF rotates {rope_dims} of {config.head_dim} head dims: unsupported")
    scaling = _meta(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise GptclfError(f"GGUF RoPE scaling {scaling!r} is not supported")
    value_dim = _meta(reader, f"{arch}.attention.value_length")
    if value_dim not in (None, config.head_dim):
        raise GptclfError(f"GGUF value head size {value_dim} != key head size {config.head_dim}")
    return config


def read_tensor(tensor: Tensor) -> torch.Tensor:
    """A GGUF tensor as float32 in torch's dimension order.

    GGUF lists dimensions fastest-first (ggml's ne[0] is the row length), so the torch shape is the
    reverse: a linear weight stored with ne = [in, out] becomes (out, in), as `nn.Linear` wants.
    """
    try:
        return dequantize(tensor)
    except NotImplementedError:
        raise GptclfError(
            f"tensor {tensor.name}: GGUF type {tensor.tensor_type.name} cannot be dequantized "
            "(not supported by the installed gguf package)"
        ) from None


def unpermute_rope_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's row permutation of attn_q / attn_k, back to the HF "rotate half" layout.

    ggml's RoPE rotates adjacent pairs (2i, 2i+1); HF's rotates (i, i + hs/2). llama.cpp's converter
    therefore permutes each head's rows: `LlamaModel.permute` in
    https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py, i.e.
    `w.reshape(n_head, 2, hs // 2, in).swapaxes(1, 2)`. This is its inverse.
    """
    rows, cols = weight.shape
    half = rows // n_head // 2
    w = weight.reshape(n_head, half, 2, cols)  # (heads, pair i, member of pair, in)
    return w.transpose(1, 2).reshape(rows, cols)  # (heads, [first halves | second halves], in)


_LAYER = re.compile(r"blk\.(\d+)\.")
_LAYER_KEY = re.compile(r"h\.(\d+)\.")


def convert_gguf_tensors(
    tensors: dict[str, torch.Tensor], arch: GGUFArch, config: ModelConfig
) -> dict[str, torch.Tensor]:
    """llama.cpp-named float tensors -> our state dict (pure; unknown names are an error)."""
    blocks: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _LAYER.match(name)
        template = _LAYER.sub("blk.{}.", name, count=1) if match else name
        if template not in arch.tensors:
            raise GptclfError(f"unknown GGUF tensor {name!r} for this architecture")
        if name == "output.weight" and config.tie_embeddings:
            continue  # a copy of token_embd.weight (see _is_tied)
        layer = int(match.group(1)) if match else None
        if layer is not None and layer >= config.n_layer:
            raise GptclfError(f"GGUF tensor {name!r} is beyond block_count {config.n_layer}")
        if template in arch.rope_permuted:
            tensor = unpermute_rope_rows(tensor, getattr(config, arch.rope_permuted[template]))
        key, block = arch.tensors[template]
        blocks.setdefault(key.format(layer), {})[block] = tensor
    state = {}
    for key, parts in blocks.items():
        layer = _LAYER_KEY.match(key)
        template = _LAYER_KEY.sub("h.{}.", key, count=1) if layer else key
        wanted = {
            block: theirs for theirs, (ours, block) in arch.tensors.items() if ours == template
        }
        if len(parts) != len(wanted):
            lacking = [wanted[b].format(layer and layer.group(1)) for b in wanted if b not in parts]
            raise GptclfError(f"GGUF lacks {', '.join(lacking)} (part of our {key})")
        state[key] = torch.cat([parts[b] for b in sorted(parts)]) if len(parts) > 1 else parts[0]
    if config.tie_embeddings and "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    return state


def tokenizer_from_gguf(reader: GGUFFile, tokens: list[str]) -> Tokenizer:
    """Byte-level BPE from `tokenizer.ggml.*`: control tokens become special tokens, user-defined
    ones plain added tokens; pad = `padding_token_id`, else eos. BOS is never added."""
    model = _meta(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GptclfError(f"GGUF tokenizer model {model!r} is not supported; supported: 'gpt2'")
    pre = _meta(reader, "tokenizer.ggml.pre") or "default"  # old files: llama.cpp's default too
    if pre not in PRE_TOKENIZERS:
        raise GptclfError(
            f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(PRE_TOKENIZERS)}"
        )
    merges = [tuple(m.split(" ")) for m in _meta(reader, "tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        raise GptclfError("GGUF tokenizer.ggml.merges has an entry that is not two tokens")
    types = _meta(reader, "tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GptclfError(f"GGUF has {len(types)} token types for {len(tokens)} tokens")
    kinds = list(zip(tokens, types, strict=True))
    special = [t for t, kind in kinds if kind == TokenType.CONTROL]
    backend = byte_level_bpe({t: i for i, t in enumerate(tokens)}, merges, special)
    backend.pre_tokenizer = PRE_TOKENIZERS[pre]()
    added = [AddedToken(t, normalized=False) for t, kind in kinds if kind == TokenType.USER_DEFINED]
    backend.add_tokens(added)
    ids = {}
    for role in ("eos", "padding"):
        token_id = _meta(reader, f"tokenizer.ggml.{role}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise GptclfError(f"GGUF tokenizer.ggml.{role}_token_id {token_id} is out of range")
        ids[role] = token_id
    if ids["eos"] is None:
        raise GptclfError("GGUF has no tokenizer.ggml.eos_token_id")
    pad = tokens[ids["padding"]] if ids["padding"] is not None else None
    return Tokenizer(backend, tokens[ids["eos"]], pad)
