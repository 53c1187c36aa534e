"""BERT in the Hugging Face layout: `config.json` + `model.safetensors` + `tokenizer.json`.

Key conversion is one table (`WEIGHT_MAP`, `{}` = layer index, None = dropped on purpose) applied
by a pure function; a key the table does not know is an error naming it. Checkpoints saved from
`BertModel` have bare keys, those from `BertFor*` models a `bert.` prefix: both are accepted. Source
of truth: transformers' `models/bert/modeling_bert.py` (module names) and the config of
https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer

from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.fileio import read_json, read_safetensors
from gptclf.tokenizer import Tokenizer
from gptclf.weights.depth import first_blocks, unused_block

# HF key (without `bert.`) -> our key in `encoder.Encoder`.
WEIGHT_MAP: dict[str, str | None] = {
    "embeddings.word_embeddings.weight": "wte.weight",
    "embeddings.position_embeddings.weight": "wpe.weight",
    "embeddings.token_type_embeddings.weight": "wtt.weight",
    "embeddings.LayerNorm.weight": "ln_emb.weight",
    "embeddings.LayerNorm.bias": "ln_emb.bias",
    "embeddings.position_ids": None,  # buffer arange(max_positions): recomputed
    "embeddings.token_type_ids": None,  # buffer of zeros: we always use type 0
    "encoder.layer.{}.attention.self.query.weight": "h.{}.attn.query.weight",
    "encoder.layer.{}.attention.self.query.bias": "h.{}.attn.query.bias",
    "encoder.layer.{}.attention.self.key.weight": "h.{}.attn.key.weight",
    "encoder.layer.{}.attention.self.key.bias": "h.{}.attn.key.bias",
    "encoder.layer.{}.attention.self.value.weight": "h.{}.attn.value.weight",
    "encoder.layer.{}.attention.self.value.bias": "h.{}.attn.value.bias",
    "encoder.layer.{}.attention.output.dense.weight": "h.{}.attn.c_proj.weight",
    "encoder.layer.{}.attention.output.dense.bias": "h.{}.attn.c_proj.bias",
    "encoder.layer.{}.attention.output.LayerNorm.weight": "h.{}.ln_1.weight",
    "encoder.layer.{}.attention.output.LayerNorm.bias": "h.{}.ln_1.bias",
    "encoder.layer.{}.intermediate.dense.weight": "h.{}.mlp.c_fc.weight",
    "encoder.layer.{}.intermediate.dense.bias": "h.{}.mlp.c_fc.bias",
    "encoder.layer.{}.output.dense.weight": "h.{}.mlp.c_proj.weight",
    "encoder.layer.{}.output.dense.bias": "h.{}.mlp.c_proj.bias",
    "encoder.layer.{}.output.LayerNorm.weight": "h.{}.ln_2.weight",
    "encoder.layer.{}.output.LayerNorm.bias": "h.{}.ln_2.bias",
    # Task heads we replace by our class head: BertModel's pooler, BertForPreTraining's MLM/NSP.
    "pooler.dense.weight": None,
    "pooler.dense.bias": None,
}
HF_BLOCK = re.compile(r"(?:bert\.)?encoder\.layer\.(\d+)\.")  # a block's weights (layer i)
DROPPED_PREFIXES = ("cls.predictions.", "cls.seq_relationship.")  # pretraining heads

# config.json field -> ModelConfig field
BERT_CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "max_position_embeddings": "context_length",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "hidden_size": "d_model",
    "intermediate_size": "d_ff",
    "layer_norm_eps": "norm_eps",
    "type_vocab_size": "type_vocab_size",
}
CLS, SEP, PAD = "[CLS]", "[SEP]", "[PAD]"


def is_bert_config(hf_config: dict) -> bool:
    return hf_config.get("model_type") == "bert"


def config_from_hf_bert(hf_config: dict, name: str = "custom") -> ModelConfig:
    """ModelConfig (arch bert) from a Hugging Face BERT `config.json`."""
    if not is_bert_config(hf_config):
        raise GptclfError(f"config.json model_type {hf_config.get('model_type')!r} is not bert")
    if hf_config.get("hidden_act", "gelu") != "gelu":
        raise GptclfError(f"unsupported activation {hf_config['hidden_act']!r} (expected gelu)")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise GptclfError(
            f"unsupported position embeddings {hf_config['position_embedding_type']!r}"
        )
    missing = [k for k in BERT_CONFIG_MAP if k not in hf_config]
    if missing:
        raise GptclfError(f"BERT config.json lacks {', '.join(missing)}")
    fields = {ours: hf_config[theirs] for theirs, ours in BERT_CONFIG_MAP.items()}
    return ModelConfig(
        **fields, name=name, arch="bert", mlp="gelu", causal=False, tie_embeddings=False
    )


def convert_hf_bert(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF BERT state dict (with or without `bert.`) -> our `Encoder` keys. Pure; unknown key raises."""
    state = {}
    for key, tensor in hf_state.items():
        bare = key.removeprefix("bert.")
        if bare.startswith(DROPPED_PREFIXES):
            continue
        template = re.sub(r"\.(\d+)\.", ".{}.", bare, count=1)  # layer index -> {}
        if template not in WEIGHT_MAP:
            raise GptclfError(f"unknown BERT weight {key!r}")
        ours = WEIGHT_MAP[template]
        if ours is None:
            continue
        layer = re.findall(r"\.(\d+)\.", bare)[:1]
        state[ours.format(*layer)] = tensor.contiguous()
    return state


def load_hf_bert(
    directory: Path, name: str | None = None, layers: int | None = None, **overrides
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state_dict in our keys) from a Hugging Face BERT directory; `layers`: only the
    first K blocks (`weights/depth.py`: the others are not read)."""
    config = config_from_hf_bert(read_json(directory / "config.json"), name or directory.name)
    config = dataclasses.replace(config, **overrides)
    depth, config = config.n_layer, first_blocks(config, layers)
    hf_state = read_safetensors(
        directory / "model.safetensors",
        keep=lambda key: not unused_block(key, HF_BLOCK, config.n_layer, depth),
    )
    return config, convert_hf_bert(hf_state)


def load_bert_tokenizer(directory: Path) -> Tokenizer:
    """WordPiece tokenizer from `tokenizer.json`: [CLS] text [SEP], pad [PAD].

    The file's own post-processor adds [CLS]/[SEP] (so `encode` asks for special tokens); its
    padding/truncation settings are switched off: batching pads and truncates.
    """
    path = directory / "tokenizer.json"
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise GptclfError(f"cannot read tokenizer {path}: {exc}") from None
    backend.no_padding()
    backend.no_truncation()
    tokenizer = Tokenizer(backend, eos_token=SEP, pad_token=PAD, add_special_tokens=True)
    ids = tokenizer.encode("a")
    if ids[0] != backend.token_to_id(CLS) or ids[-1] != tokenizer.eos_id:
        raise GptclfError(f"{path} does not add {CLS} ... {SEP} (no BERT post-processor)")
    return tokenizer
