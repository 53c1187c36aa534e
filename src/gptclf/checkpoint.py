"""A trained classifier as one self-describing directory.

    DIR/config.json          format version, model config, base-model source, labels, pooling,
                             padding, max length, the training config, LoRA adapters (if any),
                             whether the class head has a bias (`head_bias`; absent: it has),
                             multi-label: `multi_label` and `thresholds` (one per label);
                             `save_id`: the save it was written by
    DIR/tokenizer.json       the tokenizer (+ tokenizer_meta.json: eos/pad tokens)
    DIR/model.safetensors    all classifier weights (backbone.* + head.*); metadata: `save_id`
    DIR/metrics.json         written by training

Saving writes every file to a temporary name first and renames them only then, model.safetensors
last (`fileio.atomic_write_many`): a kill while writing leaves the previous checkpoint whole. Only
a kill between two renames could leave files of two saves together; config.json and
model.safetensors carry the same random `save_id`, so loading then says so instead of mixing them.

Loading (`load_classifier`: the one path of `Classifier.load`, evaluate, predict, serve and
export) checks each file and the files against each other: config.json's fields and types, labels
vs the head's rows, the model config vs every tensor's name, shape and dtype, the tokenizer's ids
vs the embedding. A problem is one GptclfError naming the file. Nothing is ever unpickled.
A checkpoint trained with `--int8-prefix` gets the same frozen blocks in int8 again (quantize.py).
"""

from __future__ import annotations

import inspect
import math
import secrets
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from gptclf.choices import PADDING_MODES, POOL_MODES, PRECISIONS, TRUNCATIONS
from gptclf.classifier import SequenceClassifier
from gptclf.config import ModelConfig
from gptclf.errors import GptclfError
from gptclf.fileio import (
    atomic_write_many,
    json_bytes,
    read_json_object,
    read_safetensors_with_metadata,
)
from gptclf.lm import build_backbone
from gptclf.lora import apply_lora
from gptclf.quantize import requantize_prefix
from gptclf.tokenizer import TOKENIZER_FILE, Tokenizer, split_prompt
from gptclf.train_config import TrainConfig
from gptclf.weights.strict import assign_state_dict

FORMAT = "gptclf-classifier"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
# Files a run directory may hold that other tools load with pickle (which can run any code).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


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
    def from_dict(cls, data: dict[str, Any], source: str = CONFIG_FILE) -> ClassifierInfo:
        """The info in a config.json's content; anything missing, mistyped or out of range is one
        GptclfError starting with `source`."""
        check_config(data, source)
        return cls(
            model_config=model_config_from(data["model_config"], f"{source}: model_config"),
            labels=list(data["labels"]),
            pool=data["pool"],
            padding=data["padding"],
            max_length=data["max_length"],
            base=data.get("base") or {},
            train_config=data.get("train_config") or {},
            lora=data.get("lora"),
            multi_label=data.get("multi_label", False),
            thresholds=data.get("thresholds"),
            head_bias=bool(data.get("head_bias", True)),  # every head had one before the option
        )


# --- config.json: types and values -------------------------------------------------------------

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def describe(hint: Any) -> str:
    """A type hint in words, as JSON sees it ("a list of strings", "an integer or null")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    if hint is dict or origin is dict:
        return "a JSON object"
    return _NAMES.get(hint, str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type `hint` names (bool is no int; floats are finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_type(value: Any, hint: Any, where: str) -> None:
    if not matches(value, hint):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise GptclfError(f"{where} must be {describe(hint)}, got {shown}")


def check_choice(value: Any, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise GptclfError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")


def check_fields(data: dict[str, Any], hints: dict[str, Any], where: str) -> None:
    """Every key of `data` known to `hints`, with a value of its type."""
    if unknown := sorted(set(data) - set(hints)):
        raise GptclfError(f"{where} has unknown keys {unknown}")
    for key, value in data.items():
        check_type(value, hints[key], f"{where}.{key}")


def model_config_from(data: Any, where: str) -> ModelConfig:
    """A ModelConfig from config.json's `model_config`: types, sizes >= 1, then its own checks."""
    check_type(data, dict, where)
    hints = typing.get_type_hints(ModelConfig)
    check_fields(data, hints, where)
    for key, value in data.items():
        least = 0 if key == "type_vocab_size" else 1  # every other count or size is >= 1
        if hints[key] in (int, int | None) and value is not None and value < least:
            raise GptclfError(f"{where}.{key} must be at least {least}, got {value}")
    try:
        return ModelConfig.from_dict(data)
    except GptclfError as exc:
        raise GptclfError(f"{where}: {exc}") from None


def check_config(data: dict[str, Any], source: str) -> None:
    """config.json's top level: format, the fields and their types, labels, thresholds, LoRA."""
    if data.get("format") != FORMAT:
        raise GptclfError(
            f"{source}: not a gptclf classifier checkpoint (format {data.get('format')!r})"
        )
    if data.get("version") != VERSION:
        raise GptclfError(
            f"{source}: checkpoint format version {data.get('version')!r} is not supported "
            f"(this gptclf reads version {VERSION})"
        )
    hints = typing.get_type_hints(ClassifierInfo)
    for key in ("model_config", "labels", "pool", "padding", "max_length"):
        if key not in data:
            raise GptclfError(f"{source}: no {key!r}")
    for key in hints.keys() - {"model_config"}:
        if key in data:
            check_type(data[key], hints[key], f"{source}: {key}")
    check_choice(data["pool"], POOL_MODES, f"{source}: pool")
    check_choice(data["padding"], PADDING_MODES, f"{source}: padding")
    check_labels(data, source)
    check_max_length(data, source)
    if data.get("lora") is not None:
        check_lora(data["lora"], f"{source}: lora")
    check_train_config(data.get("train_config") or {}, f"{source}: train_config")


def check_max_length(data: dict[str, Any], source: str) -> None:
    max_length = data["max_length"]
    if max_length < 1:
        raise GptclfError(f"{source}: max_length must be at least 1, got {max_length}")
    model = data["model_config"]
    context = model.get("context_length") if isinstance(model, dict) else None
    if type(context) is int and max_length > context:  # training never saves one longer
        raise GptclfError(
            f"{source}: max_length {max_length} exceeds the model's context_length {context}"
        )


def check_lora(lora: dict[str, Any], where: str) -> None:
    """`apply_lora`'s keyword arguments: known names, their types, the required ones."""
    parameters = list(inspect.signature(apply_lora).parameters.values())[1:]  # all but model
    hints = typing.get_type_hints(apply_lora)
    check_fields(lora, {p.name: hints[p.name] for p in parameters}, where)
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    if missing := [name for name in required if name not in lora]:
        raise GptclfError(f"{where} has no {missing[0]!r}")
    if lora["rank"] < 1:
        raise GptclfError(f"{where}.rank must be at least 1, got {lora['rank']}")


def check_labels(data: dict[str, Any], source: str) -> None:
    labels = data["labels"]
    if len(labels) < 2:
        raise GptclfError(f"{source}: {len(labels)} labels; a classifier has at least 2")
    if len(set(labels)) < len(labels):
        twice = next(name for name in labels if labels.count(name) > 1)
        raise GptclfError(f"{source}: label {twice!r} is listed twice")
    thresholds = data.get("thresholds")
    if not data.get("multi_label") or thresholds is None:
        return
    if len(thresholds) != len(labels):
        raise GptclfError(f"{source}: {len(thresholds)} thresholds for {len(labels)} labels")
    if outside := [t for t in thresholds if not 0.0 <= t <= 1.0]:
        raise GptclfError(f"{source}: threshold {outside[0]} is not between 0 and 1")


def check_train_config(train: dict[str, Any], where: str) -> None:
    """The training settings that loading and inference read (the rest is a record)."""
    hints = typing.get_type_hints(TrainConfig)
    read = ("model", "trainable", "text_columns", "label_column", "label_sep", "truncation")
    for key in (*read, "precision", "prompt", "int8_prefix"):
        if key in train:
            check_type(train[key], hints[key], f"{where}.{key}")
    if "precision" in train:
        check_choice(train["precision"], PRECISIONS, f"{where}.precision")
    if "truncation" in train:
        check_choice(train["truncation"], TRUNCATIONS, f"{where}.truncation")
    if train.get("prompt") is not None:
        try:
            split_prompt(train["prompt"])
        except GptclfError as exc:
            raise GptclfError(f"{where}.prompt: {exc}") from None


# --- saving ------------------------------------------------------------------------------------


def save_classifier(
    directory: Path,
    state_dict: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    info: ClassifierInfo,
) -> None:
    """Write a classifier from its full state dict (`model.state_dict()`, or gathered from FSDP):
    every file to a temporary name, then all renamed, model.safetensors last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state_dict.items()}
    save_id = secrets.token_hex(16)  # ties config.json to these weights (see the module doc)
    config = json_bytes({**info.to_dict(), "save_id": save_id})
    atomic_write_many(
        {
            **tokenizer.file_writers(directory),
            directory / CONFIG_FILE: lambda tmp: tmp.write_bytes(config),
            directory / WEIGHTS_FILE: lambda tmp: save_file(
                state, str(tmp), metadata={"save_id": save_id}
            ),
        }
    )


# --- loading -----------------------------------------------------------------------------------


def read_config(directory: Path) -> tuple[ClassifierInfo, str | None]:
    """config.json's info and its `save_id` (None: written before save ids)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GptclfError(f"checkpoint directory {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise GptclfError(f"{directory} is not a checkpoint: no {CONFIG_FILE}")
    data = read_json_object(path)
    save_id = data.get("save_id")
    check_type(save_id, str | None, f"{path}: save_id")
    return ClassifierInfo.from_dict(data, str(path)), save_id


def read_info(directory: Path) -> ClassifierInfo:
    """config.json's info, checked (not yet against the other files)."""
    return read_config(directory)[0]


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """model.safetensors' tensors and `save_id`; never a pickle, even when it is all there is."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        message = f"{directory}: no {WEIGHTS_FILE}"
        if pickles := sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES):
            message += f" ({pickles[0]} is a pickle, which gptclf never loads: it can run code)"
        raise GptclfError(message)
    state, metadata = read_safetensors_with_metadata(path)
    return state, metadata.get("save_id")


def check_tensors(
    path: Path, state: dict[str, torch.Tensor], model: SequenceClassifier, info: ClassifierInfo
) -> dict[str, torch.Tensor]:
    """`state` against the model config.json describes: the head's rows, the blocks, every name,
    shape and dtype. Returns `state`, other float types cast to the model's."""
    head = state.get("head.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != len(info.labels):
        raise GptclfError(
            f"{path.parent / CONFIG_FILE}: {len(info.labels)} labels, but the head in "
            f"{WEIGHTS_FILE} has {head.shape[0]} rows"
        )
    blocks = {k.split(".")[2] for k in state if k.startswith("backbone.h.")}
    if len(blocks) != info.model_config.n_layer:
        raise GptclfError(
            f"{path}: {len(blocks)} blocks, but {CONFIG_FILE} says "
            f"n_layer {info.model_config.n_layer}"
        )
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    for which, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = " ..." if len(keys) > 3 else ""
            names = ", ".join(sorted(keys)[:3])
            raise GptclfError(f"{path}: {which} tensors {names}{more} (vs {CONFIG_FILE})")
    for key in sorted(expected):
        tensor, want = state[key], expected[key]
        if tensor.shape != want.shape:
            raise GptclfError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, "
                f"{CONFIG_FILE} implies {tuple(want.shape)}"
            )
        if tensor.dtype != want.dtype:
            if not (tensor.is_floating_point() and want.is_floating_point()):
                name = str(tensor.dtype).removeprefix("torch.")
                raise GptclfError(
                    f"{path}: {key} is {name}, not {str(want.dtype).removeprefix('torch.')}"
                )
            state[key] = tensor.to(want.dtype)  # e.g. bf16 weights: the model computes in fp32
    return state


def check_vocabulary(directory: Path, tokenizer: Tokenizer, info: ClassifierInfo) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    highest = max(tokenizer.backend.get_vocab(with_added_tokens=True).values())
    rows = info.model_config.vocab_size  # = the embedding's rows, checked with the tensors
    if highest >= rows:
        raise GptclfError(
            f"{directory / TOKENIZER_FILE}: token id {highest} is beyond the {rows} rows of "
            f"the embedding in {WEIGHTS_FILE}"
        )


def build_model(info: ClassifierInfo, config_path: Path) -> SequenceClassifier:
    """The classifier config.json describes, on the meta device (no memory, no init)."""
    try:
        with torch.device("meta"):
            model = SequenceClassifier(
                build_backbone(info.model_config), len(info.labels), info.pool, info.head_bias
            )
            if info.lora:  # rebuild the adapters so their saved weights have somewhere to go
                apply_lora(model, **info.lora)
    except GptclfError as exc:
        raise GptclfError(f"{config_path}: {exc}") from None
    return model


def load_classifier(directory: Path) -> tuple[SequenceClassifier, Tokenizer, ClassifierInfo]:
    """The classifier saved in `directory`, every file checked (see the module doc)."""
    directory = Path(directory)
    info, save_id = read_config(directory)
    state, weights_save_id = read_weights(directory)
    if save_id != weights_save_id:  # both None: saved before save ids existed
        raise GptclfError(
            f"{directory / CONFIG_FILE} and {WEIGHTS_FILE} come from different saves (a save "
            "interrupted between its renames, or files copied from two runs): copy or train "
            "the whole directory again"
        )
    model = build_model(info, directory / CONFIG_FILE)
    state = check_tensors(directory / WEIGHTS_FILE, state, model, info)
    assign_state_dict(model, state, str(directory / WEIGHTS_FILE))
    model.backbone.init_buffers()
    model.eval()
    if info.train_config.get("int8_prefix"):  # as it trained: see quantize.py
        requantize_prefix(model, info.train_config.get("trainable", "all"), directory)
    tokenizer = Tokenizer.load(directory)
    check_vocabulary(directory, tokenizer, info)
    if (directory / METRICS_FILE).exists():  # optional; read by the server's /info
        read_json_object(directory / METRICS_FILE)
    return model, tokenizer, info
