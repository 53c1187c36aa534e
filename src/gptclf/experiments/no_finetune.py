"""Rows of the table that finetune nothing: does the pretrained model classify without training?

`zero_shot`: the LM with its own head reads each text inside a question (`SPAM_PROMPT`), and the
class logits are the log-probabilities of one answer word per class ("ham" → " No", "spam" →
" Yes") as the next token after the last real token. With `calibrate`, one number is fitted on
the validation split: the threshold on log P(spam word) − log P(ham word) (uncalibrated: 0).
Its loss is the cross-entropy of those log-probs renormalised over the answer words.

`linear_probe`: one forward pass of the frozen backbone over every text, pooled as `cfg.pool`
says (the vector the classifier's head would read, `SequenceClassifier.pooled_from`; optionally
at an intermediate block), then logistic regression on the standardized features with C chosen by
validation accuracy (`baseline.select_logreg`, as the TF-IDF row).

Both return the metric keys `gptclf.train.fit` returns, as `experiments/baseline.py` does, so the
runner and the report treat them like any other row.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptclf.balance import class_weights
from gptclf.baseline import C_GRID, select_logreg
from gptclf.batching import Batch, sorted_batches
from gptclf.classifier import SequenceClassifier, pool_index
from gptclf.data import LabeledTexts, unseen_indices
from gptclf.distributed import Dist
from gptclf.errors import GptclfError
from gptclf.experiments.configs import SPAM_PROMPT
from gptclf.inference import Precision, autocast, resolve_precision
from gptclf.lm import LanguageModel
from gptclf.metrics import logit_metrics, misclassified, unseen_accuracy
from gptclf.train import SPLITS, config_splits, encode_splits, load_model, resolve_device
from gptclf.train_config import TrainConfig

log = logging.getLogger(__name__)

# The answer word each SMS label is scored by (the prompt asks "Is this text message spam?").
SMS_LABEL_WORDS = {"ham": " No", "spam": " Yes"}
# Standardized dense features want stronger regularisation than TF-IDF's sparse ones, so the grid
# reaches two decades lower (the best on validation is kept; ties: the smaller C).
PROBE_C_GRID = (0.001, 0.01, *C_GRID)


@dataclass
class Setup:
    """What both rows start from: the splits, the pretrained LM (eval mode, on its device) and
    the precision that runs (`auto` resolved)."""

    cfg: TrainConfig
    data: dict[str, LabeledTexts]
    lm: LanguageModel
    device: torch.device
    precision: Precision


def prepare(cfg: TrainConfig) -> Setup:
    if cfg.multi_label:
        raise GptclfError("the zero-shot and linear-probe rows are single-label only")
    data = dict(zip(SPLITS, config_splits(cfg), strict=True))
    device = resolve_device(cfg.device)
    lm = load_model(cfg, Dist())  # with cfg's causal switch and dropout, as `fit` loads it
    lm.model.to(device).eval()
    return Setup(cfg, data, lm, device, resolve_precision(cfg.precision, device))


@torch.inference_mode()
def per_text(
    setup: Setup, fn: Callable[[Batch], torch.Tensor], ids: list[list[int]], length: int | None
) -> torch.Tensor:
    """`fn(batch)` (B, k) for every text: one pass in batches sorted by length (padded to
    `length`, or per batch), under cfg's precision; back in input order, fp32 on the CPU."""
    cfg = setup.cfg
    out = None
    for batch in sorted_batches(ids, cfg.eval_batch_size, setup.lm.tokenizer.pad_id, length):
        with autocast(setup.device, setup.precision):
            values = fn(batch.to(setup.device)).float().cpu()
        if out is None:
            out = torch.empty(len(ids), values.shape[1])
        out[batch.indices] = values
    return out


def fit_like_metrics(
    setup: Setup, logits: dict[str, np.ndarray], started: float, **fields: Any
) -> dict[str, Any]:
    """`train.fit`'s metric keys from each split's (N, C) logits, as `baseline.tfidf_logreg`
    returns them; `fields` give the row's own (times, parameter counts, history, config)."""
    data, train = setup.data, setup.data["train"]
    metrics: dict[str, Any] = {
        name: logit_metrics(logits[name], data[name].labels, train.label_names) for name in SPLITS
    }
    metrics["test"]["misclassified"] = misclassified(logits["test"], data["test"].labels)
    unseen = unseen_indices(train.texts, data["test"].texts)
    metrics["test"].update(unseen_accuracy(metrics["test"]["misclassified"], unseen))
    metrics.update(
        best_epoch=None,  # nothing trains in epochs
        cache_seconds=0.0,
        cached_from_block=None,
        prefix_cache=None,
        cache_build_seconds=None,
        prefix_cache_storage=None,
        prefix_cache_dtype=None,
        world_size=1,
        labels=train.label_names,
        train_curve={"examples_seen": [], "loss": [], "accuracy": []},
        **fields,
    )
    metrics["total_seconds"] = time.perf_counter() - started
    return metrics


# --- zero-shot ----------------------------------------------------------------------------------


def answer_tokens(
    lm: LanguageModel, label_names: list[str], label_words: dict[str, str]
) -> dict[str, list[int]]:
    """Each label's answer word as token ids. A label is scored by its word's FIRST token: the
    next-token distribution after the prompt says nothing about the later ones without another
    pass per word, and " No"/" Yes" are one token in the GPT-2 and SmolLM2 vocabularies. A word
    of several tokens is logged; two labels whose words begin with the same token are an error."""
    missing = [name for name in label_names if name not in label_words]
    if missing:
        raise GptclfError(
            f"zero-shot: no answer word for label {', '.join(map(repr, missing))}; "
            f"label_words must name every label ({', '.join(map(repr, label_names))})"
        )
    tokens = {name: lm.tokenizer.encode(label_words[name]) for name in label_names}
    for name, ids in tokens.items():
        if not ids:
            raise GptclfError(f"zero-shot: the answer word of {name!r} encodes to no tokens")
        if len(ids) > 1:
            log.warning(
                "zero-shot: the answer word %r of %r is %d tokens; it is scored by its first, %r",
                label_words[name], name, len(ids), lm.tokenizer.decode(ids[:1]),
            )  # fmt: skip
    first = [ids[0] for ids in tokens.values()]
    if len(set(first)) < len(first):
        raise GptclfError(
            "zero-shot: two answer words begin with the same token, so they cannot be told "
            f"apart ({', '.join(f'{n!r}: {label_words[n]!r}' for n in label_names)}); "
            "choose words whose first tokens differ"
        )
    return tokens


def answer_log_probs(model: torch.nn.Module, batch: Batch, token_ids: torch.Tensor) -> torch.Tensor:
    """(B, C): log P(answer token | prompt) of each label's token, as the next token after each
    row's last real token. Only that position leaves the last block (`run_blocks(index=)`), and
    only it goes through the final norm and the LM head."""
    ids, mask = batch.input_ids, batch.attention_mask
    index = pool_index(mask, "last_real", *ids.shape, ids.device)
    hidden = model.run_blocks(model.embed(ids, mask), mask, index=index)[:, 0]
    logits = model.lm_head(model.ln_f(hidden)).float()  # softmax over the vocabulary in fp32
    return logits.log_softmax(dim=-1)[:, token_ids]


@dataclass
class Answers:
    """Zero-shot class logits per split and how they were made."""

    logits: dict[str, np.ndarray]  # (N, C): log-probs of the labels' answer tokens
    prompt: str
    label_words: dict[str, str]
    tokens: dict[str, list[int]]  # each label's word as tokens; the first is scored
    truncated: dict[str, int]
    seconds: float  # the forward pass over every split


def zero_shot_answers(
    setup: Setup, prompt: str | None = None, label_words: dict[str, str] | None = None
) -> Answers:
    """One forward pass of the LM over every text of the three splits inside `prompt`
    (default: cfg.prompt, else `SPAM_PROMPT`), encoded by `batching` so truncation cuts the text
    and never the prompt. Padded per batch: with the mask and the last real position, pads
    change only the work, never the result."""
    cfg, lm = setup.cfg, setup.lm
    if getattr(lm.model, "lm_head", None) is None:
        raise GptclfError(
            f"zero-shot needs a language model with its LM head; {cfg.model} has none"
        )
    prompt = prompt or cfg.prompt or SPAM_PROMPT
    words = dict(SMS_LABEL_WORDS if label_words is None else label_words)
    tokens = answer_tokens(lm, setup.data["train"].label_names, words)
    scored = torch.tensor([ids[0] for ids in tokens.values()], device=setup.device)
    # cfg's truncation and --max-length, every text kept up to that (no cut to the longest
    # training text: nothing trains on lengths here)
    enc = encode_splits(dataclasses.replace(cfg, prompt=prompt, padding="dynamic"), lm, setup.data)
    began = time.perf_counter()
    logits = {
        name: per_text(
            setup, lambda b: answer_log_probs(lm.model, b, scored), enc.ids[name], None
        ).numpy()
        for name in SPLITS
    }
    return Answers(logits, prompt, words, tokens, enc.truncated, time.perf_counter() - began)


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t (class 1 iff score > t) with the best accuracy on these texts, ties to
    the t nearest 0 (the uncalibrated decision), and that accuracy. Candidates: 0, the midpoints
    between consecutive distinct scores, and one below and one above every score (every text
    one class); counted from the sorted scores, so the cost is a sort."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) == 1
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], positive[order]
    # cut i: the first i sorted texts are class 0, the rest class 1
    correct = np.concatenate([[0], np.cumsum(~y)]) + y.sum() - np.concatenate([[0], np.cumsum(y)])
    distinct = np.flatnonzero(s[:-1] < s[1:]) + 1  # the cuts between two different scores
    cuts = np.concatenate([[0], distinct, [len(s)]])
    thresholds = np.concatenate([[s[0] - 1.0], (s[distinct - 1] + s[distinct]) / 2, [s[-1] + 1.0]])
    candidates = [(int(correct[c]), float(t)) for c, t in zip(cuts, thresholds, strict=True)]
    candidates.append((int(np.sum((scores > 0) == positive)), 0.0))
    right, threshold = max(candidates, key=lambda c: (c[0], -abs(c[1])))
    return threshold, right / len(s)


def zero_shot(
    cfg: TrainConfig,
    prompt: str | None = None,
    label_words: dict[str, str] | None = None,
    calibrate: bool = False,
) -> dict[str, Any]:
    """The pretrained LM as a classifier without training (see the module's docstring).

    prompt: a template with one "{text}" (default: cfg.prompt, else `SPAM_PROMPT`).
    label_words: label name → answer word (default `SMS_LABEL_WORDS`), scored by its first token.
    calibrate: two labels only; the decision threshold on the log-prob difference is chosen on
    the validation split (`choose_threshold`) and subtracted from the second class's logit."""
    started = time.perf_counter()
    setup = prepare(cfg)
    names = setup.data["train"].label_names
    if calibrate and len(names) != 2:
        raise GptclfError(f"zero-shot calibration needs two labels, the data has {len(names)}")
    answers = zero_shot_answers(setup, prompt, label_words)
    logits, threshold, history = answers.logits, None, []
    calibrating = time.perf_counter()
    if calibrate:
        # in float64: the threshold lies between two float32 scores, and stays there
        logits = {name: v.astype(np.float64) for name, v in logits.items()}
        val = logits["validation"]
        score = val[:, 1] - val[:, 0]  # log P(second word) - log P(first word)
        threshold, accuracy = choose_threshold(score, setup.data["validation"].labels)
        logits = {name: v - [0.0, threshold] for name, v in logits.items()}
        history = [{"threshold": threshold, "validation_accuracy": accuracy}]
    calibrate_seconds = time.perf_counter() - calibrating
    return fit_like_metrics(
        setup, logits, started,
        train_seconds=answers.seconds + calibrate_seconds,  # no training: the pass (+ the fit)
        trainable_params=1 if calibrate else 0,
        total_params=sum(p.numel() for p in setup.lm.model.parameters()) + int(calibrate),
        truncated=answers.truncated,
        class_weights=None,
        history=history,
        config={
            "baseline": "zero-shot-calibrated" if calibrate else "zero-shot",
            "training": "none: train_seconds is one forward pass over the three splits"
            + (" and the threshold's fit on validation" if calibrate else ""),
            "prompt": answers.prompt,
            "label_words": answers.label_words,
            "label_tokens": answers.tokens,
            "scored": "the first token of each answer word, as the next token after the "
            "last real token (log-probabilities over the whole vocabulary)",
            "threshold": threshold,
            "pass_seconds": answers.seconds,
            "padding": "dynamic",
            "precision": setup.precision,
            "device": str(setup.device),
            "base": setup.lm.source,
            "train_config": dataclasses.asdict(cfg),
        },
    )  # fmt: skip


# --- linear probe -------------------------------------------------------------------------------


def block_stop(layer: int | None, n_layer: int) -> int | None:
    """`run_blocks`' stop for reading block `layer`'s output (negative: from the end; None: the
    last block)."""
    if layer is None:
        return None
    if not -n_layer <= layer < n_layer:
        raise GptclfError(
            f"layer {layer}: the model has {n_layer} blocks (0..{n_layer - 1}, or -{n_layer}..-1)"
        )
    return layer % n_layer + 1


def probe_features(
    setup: Setup,
    model: SequenceClassifier,
    ids: dict[str, list[list[int]]],
    length: int | None,
    stop: int | None = None,
) -> dict[str, np.ndarray]:
    """(N, d) per split: the vector `model`'s head would read (its pooling, after the final
    norm), from blocks[:stop]'s output; batched and padded as evaluation pads them."""

    def pooled(batch: Batch) -> torch.Tensor:
        mask = batch.attention_mask
        x = model.backbone.embed(batch.input_ids, model.backbone_mask(mask))
        return model.pooled_from(x, mask, 0, stop)

    return {name: per_text(setup, pooled, ids[name], length).numpy() for name in ids}


def linear_probe(
    cfg: TrainConfig, layer: int | None = None, c_grid: tuple[float, ...] = PROBE_C_GRID
) -> dict[str, Any]:
    """Logistic regression on the frozen pretrained backbone's pooled features (see the module's
    docstring). The texts are encoded, truncated and padded as `fit` does for cfg (its prompt,
    pooling, padding); `layer`: the block whose output is read, then the final norm (negative:
    from the end; None: the last). Class weights from cfg, C by validation accuracy."""
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    setup = prepare(cfg)
    data, lm = setup.data, setup.lm
    enc = encode_splits(cfg, lm, data)
    # the classifier `fit` would build, for its pooling only: its class head is never used
    model = SequenceClassifier(lm.model, len(data["train"].label_names), cfg.pool).to(setup.device)
    stop = block_stop(layer, len(model.backbone.h))
    began = time.perf_counter()
    features = probe_features(setup, model, enc.ids, enc.length, stop)
    feature_seconds = time.perf_counter() - began
    began = time.perf_counter()
    scaler = StandardScaler().fit(features["train"])
    scaled = {name: scaler.transform(f) for name, f in features.items()}
    weights = class_weights(cfg.class_weights, data["train"])  # as the neural rows weight
    best, history = select_logreg(scaled, data, weights, cfg.seed, c_grid, dual=False)
    fit_seconds = time.perf_counter() - began
    n_params = int(best.coef_.size + best.intercept_.size)
    return fit_like_metrics(
        setup, {name: best.predict_log_proba(scaled[name]) for name in SPLITS}, started,
        train_seconds=feature_seconds + fit_seconds,  # the row's cost: features + regression
        trainable_params=n_params,
        total_params=sum(p.numel() for p in model.backbone.parameters()) + n_params,
        truncated=enc.truncated,
        class_weights=weights,
        history=history,
        config={
            "baseline": "linear-probe",
            "layer": (stop or len(model.backbone.h)) - 1,  # the block read, 0-based
            "blocks": len(model.backbone.h),
            "pool": cfg.pool,
            "features": int(features["train"].shape[1]),
            "standardized": True,
            "C": float(best.C),
            "c_grid": list(c_grid),
            "feature_seconds": feature_seconds,
            "fit_seconds": fit_seconds,
            "precision": setup.precision,
            "device": str(setup.device),
            "base": lm.source,
            "train_config": dataclasses.asdict(cfg),
        },
    )  # fmt: skip
