"""`load_lm`: a pretrained (or randomly initialised) language model and its tokenizer, by name or path.

Public API — keep the signature and the returned object's attributes stable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gptclf.config import ModelConfig
from gptclf.encoder import Encoder
from gptclf.errors import GptclfError
from gptclf.fileio import read_json
from gptclf.model import GPT
from gptclf.tokenizer import TOKENIZER_FILE, Tokenizer
from gptclf.weights import registry
from gptclf.weights.bert import is_bert_config, load_bert_tokenizer, load_hf_bert
from gptclf.weights.depth import first_blocks
from gptclf.weights.gguf import load_gguf
from gptclf.weights.hf_gpt2 import load_hf_gpt2

log = logging.getLogger(__name__)

Weights = Literal["pretrained", "random"]


@dataclass
class LanguageModel:
    model: GPT | Encoder  # GPT: forward -> vocab logits (B, T, V); Encoder: hidden states
    tokenizer: Tokenizer
    config: ModelConfig
    # How to get the same base model again (stored in classifier checkpoints).
    source: dict[str, Any] = field(default_factory=dict)


def build_backbone(
    config: ModelConfig, state_dict: dict[str, torch.Tensor] | None = None
) -> GPT | Encoder:
    """The backbone class `config.arch` names: randomly initialised, or built strictly from weights."""
    cls = Encoder if config.arch == "bert" else GPT
    return cls(config) if state_dict is None else cls.from_state_dict(config, state_dict)


def load_lm(
    name_or_path: str | Path,
    weights: Weights = "pretrained",
    *,
    seed: int = 123,
    progress: bool = True,
    layers: int | None = None,
    **config_overrides: Any,
) -> LanguageModel:
    """Load a language model.

    name_or_path: a known name (`gptclf models`), a local directory in the Hugging Face GPT-2
    or BERT layout, or a llama.cpp `.gguf` file (Llama or GPT-2 architecture). weights: "pretrained", or "random" for the name's architecture with GPT-2 init (seeded)
    and the real tokenizer. layers: keep only the first K blocks (None: all); the loaders skip
    the others' weights (`weights/depth.py`), a random init builds K blocks. config_overrides:
    e.g. `causal=False`, `dropout=0.1`.
    """
    if weights not in ("pretrained", "random"):
        raise GptclfError(f"weights must be 'pretrained' or 'random', got {weights!r}")
    path = Path(name_or_path)
    overrides = {**config_overrides, "layers": layers}  # what every loader takes
    if path.is_file() and path.suffix == ".gguf":
        if weights == "random":
            raise GptclfError("--weights random takes a model name, not a file")
        return _load_gguf(path, _source({"path": str(path.resolve())}, layers), overrides)
    if path.is_dir():
        if weights == "random":
            raise GptclfError("--weights random takes a model name, not a directory")
        return _load_hf_dir(path, _source({"path": str(path.resolve())}, layers), overrides)
    if path.suffix in (".safetensors", ".json", ".gguf") or "/" in str(name_or_path):
        raise GptclfError(f"model path {name_or_path} does not exist")

    known = registry.known_model(str(name_or_path))
    first_blocks(ModelConfig.from_name(known.preset), layers)  # before a download or a read
    if weights == "random":
        config = first_blocks(ModelConfig.from_name(known.preset, **config_overrides), layers)
        torch.manual_seed(seed)
        model = build_backbone(config)
        source = _source({"name": known.name, "weights": "random", "seed": seed}, layers)
        log.info("initialised %s with random weights (seed %d)", known.name, seed)
        return LanguageModel(model, registry.tokenizer_for(known, progress), config, source)
    source = _source({"name": known.name, "weights": "pretrained"}, layers)
    if known.gguf is not None:
        return _load_gguf(registry.locate_gguf(known), source, overrides)
    if known.archive is not None:
        return _load_hf_dir(registry.locate_archive_model(known), source, overrides)
    directory = registry.fetch_hf_model(known, progress=progress)
    return _load_hf_dir(directory, source, overrides)


def _source(source: dict[str, Any], layers: int | None) -> dict[str, Any]:
    """How to get the same base model again: with --layers, its first K blocks."""
    return source if layers is None else {**source, "layers": layers}


def _load_gguf(path: Path, source: dict, overrides: dict) -> LanguageModel:
    config, state, tokenizer = load_gguf(path, **overrides)
    return LanguageModel(GPT.from_state_dict(config, state), tokenizer, config, source)


def _load_hf_bert_dir(directory: Path, source: dict, overrides: dict) -> LanguageModel:
    config, state = load_hf_bert(directory, **overrides)
    model, tokenizer = Encoder.from_state_dict(config, state), load_bert_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise GptclfError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    log.info("loaded BERT %s (%d layers, d=%d)", directory, config.n_layer, config.d_model)
    return LanguageModel(model, tokenizer, config, source)


def _load_hf_dir(directory: Path, source: dict, overrides: dict) -> LanguageModel:
    if is_bert_config(read_json(directory / "config.json")):
        return _load_hf_bert_dir(directory, source, overrides)
    config, state = load_hf_gpt2(directory, **overrides)
    model = GPT.from_state_dict(config, state)
    if (directory / TOKENIZER_FILE).is_file() and (directory / "tokenizer_meta.json").is_file():
        tokenizer = Tokenizer.load(directory)
    else:
        tokenizer = Tokenizer.from_bpe_files(directory / "vocab.json", directory / "merges.txt")
    if tokenizer.vocab_size > config.vocab_size:
        raise GptclfError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    log.info("loaded %s (%d layers, d=%d)", directory, config.n_layer, config.d_model)
    return LanguageModel(model, tokenizer, config, source)
