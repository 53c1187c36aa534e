"""A tiny classifier checkpoint (Llama-style, 512-token vocabulary, 3 labels) written in a
fraction of a second: for the checkpoint-file tests and the kill-mid-write child."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import pre_tokenizers

from gptclf.checkpoint import ClassifierInfo, save_classifier
from gptclf.classifier import SequenceClassifier
from gptclf.config import ModelConfig
from gptclf.lm import build_backbone
from gptclf.tokenizer import Tokenizer, byte_level_bpe

LABELS = ["ham", "spam", "other"]


def tiny_tokenizer() -> Tokenizer:
    """Byte-level BPE: the 256 byte symbols and an eos (= pad), no merges."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return Tokenizer(byte_level_bpe({t: i for i, t in enumerate(alphabet)}, [], ["<eos>"]), "<eos>")


def tiny_classifier(
    seed: int = 0, labels: list[str] | None = None, **info: Any
) -> tuple[SequenceClassifier, ClassifierInfo]:
    """A random Llama-tiny classifier (pool last_real, no head bias: exportable to HF); `labels`
    (default `LABELS`) and other `ClassifierInfo` fields may be given."""
    labels = labels or LABELS
    torch.manual_seed(seed)
    config = ModelConfig.from_name("llama-tiny")
    model = SequenceClassifier(build_backbone(config), len(labels), "last_real")
    model.head.bias.data.zero_()
    fields = {
        "model_config": config,
        "labels": labels,
        "pool": "last_real",
        "padding": "dynamic",
        "max_length": 32,
        "base": {"name": "llama-tiny", "weights": "random"},
        "train_config": {"precision": "fp32", "truncation": "head"},
    }
    return model, ClassifierInfo(**{**fields, **info})


def write_tiny_checkpoint(
    directory: Path, seed: int = 0, labels: list[str] | None = None, **info: Any
) -> dict[str, torch.Tensor]:
    """Save a tiny classifier into `directory`; returns its state dict."""
    model, info = tiny_classifier(seed, labels, **info)
    state = model.state_dict()
    save_classifier(directory, state, tiny_tokenizer(), info)
    return state
