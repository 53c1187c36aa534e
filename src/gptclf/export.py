"""`gptclf export RUN --format onnx|hf --out DIR`: a trained classifier for other runtimes.

onnx: DIR/model.onnx, inputs `input_ids` and `attention_mask` (int64, batch x sequence, both
      dynamic), output `logits` (batch x classes), the pooling inside the graph
      (`onnx_graph.py`); with `int8`, also DIR/model_int8.onnx (onnxruntime's dynamic
      quantization); DIR/tokenizer.json, set to pad (and truncate, where that is exact) as
      gptclf does; DIR/config.json: labels, pad id, max length, prompt template, ...
hf:   a directory `transformers` loads with no custom code: config.json, model.safetensors,
      tokenizer.json + tokenizer_config.json (`weights/hf_export.py`: the maps, and what
      cannot be exported exactly and is therefore refused).

DIR appears whole or not at all: everything is written into a temporary sibling directory,
which is renamed to DIR at the end (`--force` swaps out a non-empty DIR only then).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer

from gptclf.checkpoint import ClassifierInfo, load_classifier, read_info
from gptclf.classifier import SequenceClassifier
from gptclf.errors import GptclfError
from gptclf.fileio import staged_directory, write_json
from gptclf.lora import merge_lora
from gptclf.tokenizer import TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)

FORMATS = ("onnx", "hf")
ONNX_FORMAT, ONNX_VERSION = "gptclf-onnx", 1
MODEL_FILE, INT8_FILE = "model.onnx", "model_int8.onnx"


def export(
    run: str | Path,
    out: str | Path,
    format: str = "onnx",
    *,
    int8: bool = False,
    force: bool = False,
) -> Path:
    """Export the classifier in `run` to the directory `out`; returns `out`.

    Errors (not a checkpoint, `out` not empty without `force`, unknown format, a model the
    format cannot express exactly) are `GptclfError`s raised before `out` is touched.
    """
    if format not in FORMATS:
        raise GptclfError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if int8 and format != "onnx":
        raise GptclfError("--int8 quantizes ONNX models only (--format onnx)")
    run, out = Path(run), Path(out)
    refuse_ensemble(run)
    info = read_info(run)  # a non-checkpoint fails here, before anything is loaded
    if info.train_config.get("int8_prefix"):
        raise GptclfError(
            f"{run} was trained with --int8-prefix: its classifier reads features of int8 "
            f"blocks, which an {format} export (fp32) would not compute; train without "
            "--int8-prefix to export"
        )
    check_out(run, out, force)
    model, tokenizer, info = load_classifier(run)
    merge_lora(model)  # adapters folded into plain linears: both formats know only those
    model.float().eval()
    with staged_directory(out, "export") as tmp:
        if format == "onnx":
            write_onnx(tmp, model, tokenizer, info, int8)
        else:
            write_hf(tmp, model, tokenizer, info)
    log.info("exported %s (%s) to %s", run, format, out)
    return out


def refuse_ensemble(run: Path) -> None:
    """An ensemble is several models: each exported format holds one."""
    from gptclf.ensemble import is_ensemble, member_dirs

    if is_ensemble(run):
        members = ", ".join(str(d) for d in member_dirs(run))
        raise GptclfError(
            f"{run} is an ensemble, and an export holds one classifier: export its members one "
            f"by one ({members})"
        )


def check_out(run: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GptclfError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise GptclfError(f"--out {out} exists and is not empty (--force replaces it)")
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise GptclfError(f"--out {out} would replace the checkpoint {run} itself")


def label_maps(info: ClassifierInfo) -> dict[str, Any]:
    maps: dict[str, Any] = {
        "id2label": {str(i): name for i, name in enumerate(info.labels)},
        "label2id": {name: i for i, name in enumerate(info.labels)},
    }
    if info.multi_label:  # the same logits; each label is a sigmoid against its threshold
        thresholds = info.thresholds or [0.5] * len(info.labels)
        maps.update(multi_label=True, activation="sigmoid", thresholds=thresholds)
    return maps


def pad_to_length(info: ClassifierInfo) -> int | None:
    """The length `Classifier.predict` pads every batch to (None: each batch's own).

    It matters for `last` pooling only, where pads are ordinary tokens to the model."""
    return None if info.padding == "dynamic" else info.max_length


def exact_truncation(tokenizer: Tokenizer, info: ClassifierInfo) -> str | None:
    """The `tokenizers` truncation direction that cuts texts as gptclf does, if one does.

    gptclf cuts the ids after encoding (special tokens included) and never cuts a prompt;
    `tokenizers` keeps special tokens and would cut a prompt's end."""
    truncation = info.train_config.get("truncation", "head")
    if info.train_config.get("prompt") or tokenizer.add_special_tokens:
        return None
    return {"head": "right", "tail": "left"}.get(truncation)


def onnx_tokenizer(tokenizer: Tokenizer, info: ClassifierInfo) -> HFTokenizer:
    """A copy of the tokenizer that pads on the right with our pad id (to the fixed length
    `predict` uses, if any) and truncates like gptclf where `exact_truncation` allows."""
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    backend.enable_padding(
        direction="right",
        pad_id=tokenizer.pad_id,
        pad_token=tokenizer.pad_token,
        length=pad_to_length(info),
    )
    direction = exact_truncation(tokenizer, info)
    if direction is not None:
        backend.enable_truncation(info.max_length, direction=direction)
    return backend


def write_onnx(
    directory: Path,
    model: SequenceClassifier,
    tokenizer: Tokenizer,
    info: ClassifierInfo,
    int8: bool,
) -> None:
    from gptclf import onnx_graph

    onnx_graph.export_onnx(model, directory / MODEL_FILE)
    onnx_graph.check_onnx(model, directory / MODEL_FILE, tokenizer.pad_id)
    if int8:
        onnx_graph.quantize_int8(directory / MODEL_FILE, directory / INT8_FILE)
    onnx_tokenizer(tokenizer, info).save(str(directory / TOKENIZER_FILE))
    write_json(directory / "config.json", onnx_config(tokenizer, info, int8), ensure_ascii=False)


def onnx_config(tokenizer: Tokenizer, info: ClassifierInfo, int8: bool) -> dict[str, Any]:
    truncation = info.train_config.get("truncation", "head")
    return {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "model": MODEL_FILE,
        "model_int8": INT8_FILE if int8 else None,
        "tokenizer": TOKENIZER_FILE,
        "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]},
        "outputs": {"logits": ["batch", len(info.labels)]},
        **label_maps(info),
        "pad_token_id": tokenizer.pad_id,
        "eos_token_id": tokenizer.eos_id,
        "padding_side": "right",
        "pad_to_length": pad_to_length(info),
        "max_length": info.max_length,
        "truncation": truncation,
        "truncation_in_tokenizer": exact_truncation(tokenizer, info) is not None,
        "add_special_tokens": tokenizer.add_special_tokens,
        "prompt": info.train_config.get("prompt"),
        "pool": info.pool,
        "model_config": info.model_config.name,
        "base": info.base,
    }


def write_hf(
    directory: Path, model: SequenceClassifier, tokenizer: Tokenizer, info: ClassifierInfo
) -> None:
    from gptclf.weights.hf_export import classifier_to_hf

    architecture, (hf_config, state) = classifier_to_hf(model, info.multi_label)
    log.info("as %s", architecture)
    prompt = info.train_config.get("prompt")
    if prompt:
        log.warning("put each text in the prompt template before the pipeline: %r", prompt)
    if info.train_config.get("truncation") == "head+tail":
        log.warning("head+tail truncation has no transformers equivalent (texts > max_length)")
    hf_config.update(
        **label_maps(info),
        problem_type="multi_label_classification"
        if info.multi_label
        else "single_label_classification",
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        dtype="float32",
        gptclf={"pool": info.pool, "max_length": info.max_length, "prompt": prompt},
    )
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config, ensure_ascii=False)
    tokenizer.backend.save(str(directory / TOKENIZER_FILE))  # no padding/truncation set in it
    write_json(
        directory / "tokenizer_config.json",
        hf_tokenizer_config(tokenizer, info),
        ensure_ascii=False,
    )


def hf_tokenizer_config(tokenizer: Tokenizer, info: ClassifierInfo) -> dict[str, Any]:
    """`tokenizer.json` as is (`PreTrainedTokenizerFast`): the same ids as ours by
    construction; pads on the right with our pad token, as the exported model expects."""
    truncation = info.train_config.get("truncation", "head")
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": tokenizer.pad_token,
        "eos_token": tokenizer.eos_token,
        "model_max_length": info.max_length,
        "padding_side": "right",
        "truncation_side": "left" if truncation == "tail" else "right",
        "clean_up_tokenization_spaces": False,
    }
