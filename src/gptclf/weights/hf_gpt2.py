"""GPT-2 in the Hugging Face layout: `config.json` + `model.safetensors` + `vocab.json`/`merges.txt`.

Our module names equal GPT-2's, so the conversion is: strip the optional `transformer.` prefix, drop
the causal-mask buffers old checkpoints carry, and transpose the four Conv1D weights (HF stores
them as (in, out); see transformers' `pytorch_utils.Conv1D`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptclf.config import PRESETS, ModelConfig
from gptclf.errors import GptclfError
from gptclf.fileio import atomic_write_many, json_bytes, read_json, read_safetensors
from gptclf.weights.depth import first_blocks, unused_block

# GPT-2's Conv1D layers store weight as (in_features, out_features): the transpose of nn.Linear.
CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# A block's weights: `h.{i}.`, with the `transformer.` prefix some checkpoints have.
HF_BLOCK = re.compile(r"(?:transformer\.)?h\.(\d+)\.")
# Buffers (not parameters) that some GPT-2 checkpoints include: the causal mask, recomputed here.
DROPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# config.json field -> ModelConfig field (https://huggingface.co/openai-community/gpt2/blob/main/config.json)
GPT2_CONFIG_MAP = {
    "vocab_size": "vocab_size",
    "n_positions": "context_length",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "n_embd": "d_model",
    "n_inner": "d_ff",
    "layer_norm_epsilon": "norm_eps",
    "tie_word_embeddings": "tie_embeddings",
}


def config_from_hf_gpt2(hf_config: dict, name: str = "custom") -> ModelConfig:
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise GptclfError(f"config.json model_type {hf_config['model_type']!r} is not gpt2")
    if hf_config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise GptclfError(f"unsupported activation {hf_config['activation_function']!r}")
    fields = {
        ours: hf_config[theirs] for theirs, ours in GPT2_CONFIG_MAP.items() if theirs in hf_config
    }
    fields = {k: v for k, v in fields.items() if v is not None}  # n_inner: null = 4 * d
    gpt2 = {k: v for k, v in PRESETS["gpt2-small"].items() if k not in fields}
    return ModelConfig(**{**gpt2, **fields, "name": name})


def convert_hf_gpt2(
    hf_state: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """HF GPT-2 state dict -> our GPT state dict. Pure function; unknown keys are reported by the
    strict load in `GPT.from_state_dict`."""
    state = {}
    for key, tensor in hf_state.items():
        key = key.removeprefix("transformer.")
        if key.endswith(DROPPED_SUFFIXES):
            continue
        if key == "lm_head.weight" and config.tie_embeddings:
            continue  # tied to wte.weight
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor.contiguous()
    if config.tie_embeddings and "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]
    return state


def gpt2_to_hf(
    config: ModelConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json fields, state dict) in the Hugging Face GPT-2 layout: `convert_hf_gpt2` inverted.
    Pure; `state` holds our backbone keys (no `lm_head.weight` needed when tied)."""
    gpt2 = dict(arch="decoder", norm="layernorm", mlp="gelu_tanh", positions="learned", bias=True)
    if any(getattr(config, k) != v for k, v in gpt2.items()) or config.n_kv_head != config.n_head:
        raise GptclfError(f"config {config.name} is not GPT-2-shaped")
    hf_config = {theirs: getattr(config, ours) for theirs, ours in GPT2_CONFIG_MAP.items()}
    hf_config.update(model_type="gpt2", activation_function="gelu_new")
    hf_state = {
        key: (tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor).contiguous()
        for key, tensor in state.items()
        if not (key == "lm_head.weight" and config.tie_embeddings)  # tied: wte.weight
    }
    return hf_config, hf_state


def save_hf_gpt2(directory: Path, config: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """Write our GPT-2-style weights as config.json + model.safetensors in the Hugging Face layout
    (what `load_hf_gpt2` reads back). Tokenizer files are the caller's."""
    hf_config, hf_state = gpt2_to_hf(config, state)
    atomic_write_many(
        {
            directory / "config.json": lambda tmp: tmp.write_bytes(json_bytes(hf_config)),
            directory / "model.safetensors": lambda tmp: save_file(
                hf_state, str(tmp), metadata={"format": "pt"}
            ),
        }
    )


def load_hf_gpt2(
    directory: Path, name: str | None = None, layers: int | None = None, **overrides
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state_dict in our keys) from a Hugging Face GPT-2 directory; `layers`: only the
    first K blocks (`weights/depth.py`: the others are not read)."""
    config = config_from_hf_gpt2(read_json(directory / "config.json"), name or directory.name)
    config = dataclasses.replace(config, **overrides)
    depth, config = config.n_layer, first_blocks(config, layers)
    hf_state = read_safetensors(
        directory / "model.safetensors",
        keep=lambda key: not unused_block(key, HF_BLOCK, config.n_layer, depth),
    )
    return config, convert_hf_gpt2(hf_state, config)
