"""A trained classifier as one self-describing directory.

    DIR/config.json          format version, model config, base-model source, labels, pooling,
                             padding, max length, the training config, LoRA adapters (if any),
                             whether the class head has a bias (`head_bias`; absent: it has),
                             multi-label: `multi_label` and `thresholds` (one per label)
    DIR/tokenizer.json       the tokenizer (+ tokenizer_meta.json: eos/pad tokens)
    DIR/model.safetensors    all classifier weights (backbone.* + head.*)
    DIR/metrics.json         written by training

Every file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptclf.classifier import SequenceClassifier
from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.fileio import atomic_write, write_json
from gptclf.lm import build_backbone
from gptclf.lora import apply_lora
from gptclf.tokenizer import Tokenizer
from gptclf.weights.strict import assign_state_dict

FORMAT = "gptclf-classifier"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ClassifierInfo:
    """Everything but the weights: what `config.json` holds."""

    model_config: ModelConfig
    labels: list[str]
    pool: str
    padding: str
    max_length: int  # tokens kept per text; with padding=longest also the padded length
    base: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # `apply_lora` keyword arguments; None = no adapters
    multi_label: bool = False  # sigmoid outputs: every label whose probability reaches its
    thresholds: list[float] | None = None  # threshold (one per label) is predicted
    head_bias: bool = True  # --no-head-bias: the class head has none (absent: older checkpoints)

    def to_dict(self) -> dict[str, Any]:
        multi = {"multi_label": True, "thresholds": self.thresholds} if self.multi_label else {}
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_config": self.model_config.to_dict(),
            "labels": self.labels,
            "pool": self.pool,
            "padding": self.padding,
            "max_length": self.max_length,
            "base": self.base,
            "train_config": self.train_config,
            "lora": self.lora,
            "head_bias": self.head_bias,
            **multi,  # only when set: single-label config.json files stay as they were
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInfo:
        if data.get("format") != FORMAT:
            raise GptclfError("config.json is not a gptclf classifier checkpoint")
        if data.get("version") != VERSION:
            raise GptclfError(f"checkpoint format version {data.get('version')} is not supported")
        return cls(
            model_config=ModelConfig.from_dict(data["model_config"]),
            labels=list(data["labels"]),
            pool=data["pool"],
            padding=data["padding"],
            max_length=int(data["max_length"]),
            base=data.get("base", {}),
            train_config=data.get("train_config", {}),
            lora=data.get("lora"),
            multi_label=bool(data.get("multi_label", False)),
            thresholds=data.get("thresholds"),
            head_bias=bool(data.get("head_bias", True)),  # every head had one before the option
        )


def save_classifier(
    directory: Path,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    info: ClassifierInfo,
) -> None:
    """Write a classifier from its full state dict (`model.state_dict()`, or gathered from FSDP)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state_dict.items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp)))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tokenizer.save(Path(tmp))
        for name in os.listdir(tmp):
            os.replace(Path(tmp) / name, directory / name)
    write_json(directory / "config.json", info.to_dict())


def read_info(directory: Path) -> ClassifierInfo:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise GptclfError(f"checkpoint directory {directory} does not exist")
    try:
        return ClassifierInfo.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise GptclfError(f"{directory} is not a checkpoint: no config.json") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GptclfError(f"unreadable checkpoint config {path}: {exc!r}") from None


def load_classifier(directory: Path) -> tuple[SequenceClassifier, Tokenizer, ClassifierInfo]:
    directory = Path(directory)
    info = read_info(directory)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except FileNotFoundError:
        raise GptclfError(f"{directory} has no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptclfError(f"corrupt weights {directory / WEIGHTS_FILE}: {exc}") from None
    with torch.device("meta"):
        backbone = build_backbone(info.model_config)
        model = SequenceClassifier(backbone, len(info.labels), info.pool, info.head_bias)
        if info.lora:  # rebuild the adapters so their saved weights have somewhere to go
            apply_lora(model, **info.lora)
    assign_state_dict(model, state, str(directory / WEIGHTS_FILE))
    model.backbone.init_buffers()
    model.eval()
    return model, Tokenizer.load(directory), info
