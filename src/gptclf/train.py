"""Finetuning: `TrainConfig` (defaults = the book's chapter 6) and `fit()`, the training loop.

fit: data -> splits -> base LM -> token ids -> classifier (head swapped, layers frozen) -> AdamW loop
with full validation each epoch -> best checkpoint by validation accuracy -> metrics.json.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptclf import batching
from gptclf.checkpoint import ClassifierInfo, save_classifier, write_json
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.data import load_splits
from gptclf.errors import GptclfError
from gptclf.inference import autocast, batch_logits, evaluate
from gptclf.lm import load_lm
from gptclf.prefix_cache import build_caches, cache_start

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class TrainConfig:
    model: str = "gpt2-small"
    weights: str = "pretrained"  # or "random"
    data: str = "sms-spam"
    split: str = "book"  # book | stratified (ignored when data is a split directory)
    trainable: str = "last_block"
    pool: str = "last"
    padding: str = "longest"
    causal: bool = True
    dropout: float = 0.0
    max_length: int | None = None  # tokens kept per text; None = the model's context
    epochs: int = 5
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 123
    eval_batch_size: int = 32
    precision: str = "fp32"  # or "bf16": autocast, fp32 master weights
    device: str = "auto"  # auto = cuda if available, else cpu
    cache: bool = True  # frozen-prefix caching where it is exact (see prefix_cache.py)
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise GptclfError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise GptclfError("--lr must be positive")
        if self.max_length is not None and self.max_length < 1:
            raise GptclfError("--max-length must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise GptclfError(f"--precision must be fp32 or bf16, got {self.precision!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptclfError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptclfError("--device cuda but no CUDA device is available")
    return device


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; matrices decay, norms and biases don't (as in nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train and evaluate a classifier; writes the checkpoint and metrics.json to cfg.out if set."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data = dict(zip(SPLITS, load_splits(cfg.data, cfg.split, seed=cfg.seed), strict=True))
    lm = load_lm(
        cfg.model,
        cfg.weights,
        seed=cfg.seed,
        progress=cfg.progress,
        causal=cfg.causal,
        dropout=cfg.dropout,
    )
    context = lm.config.context_length
    max_length = min(cfg.max_length or context, context)
    ids = {
        name: batching.encode(lm.tokenizer, split.texts, max_length) for name, split in data.items()
    }
    length = batching.pad_length(cfg.padding, ids["train"], context)
    if length is not None:  # the book truncates validation/test to the training length
        max_length = length
        ids = {name: [seq[:length] for seq in seqs] for name, seqs in ids.items()}
    train = data["train"]

    model = SequenceClassifier(lm.model, len(train.label_names), cfg.pool).to(device)
    trainable, total = set_trainable(model, cfg.trainable)
    optimizer = make_optimizer(model, cfg)
    info = ClassifierInfo(
        lm.config,
        train.label_names,
        cfg.pool,
        cfg.padding,
        max_length,
        base=lm.source,
        train_config=dataclasses.asdict(cfg),
    )
    out = Path(cfg.out) if cfg.out else None
    pad_id = lm.tokenizer.pad_id

    train_start = time.perf_counter()
    start = cache_start(model, fixed_length=length is not None) if cfg.cache else None
    caches = {}
    if start is not None:
        caches = (
            build_caches(
                model,
                ids,
                start,
                pad_id=pad_id,
                length=length,
                batch_size=cfg.eval_batch_size,
                autocast=lambda: autocast(device, cfg.precision),
            )
            or {}
        )
    cache_seconds = time.perf_counter() - train_start

    def run_eval(name: str) -> dict[str, Any]:
        return evaluate(
            model,
            ids[name],
            data[name].labels,
            batch_size=cfg.eval_batch_size,
            pad_id=pad_id,
            length=length,
            cache=caches.get(name),
            precision=cfg.precision,
        )

    generator = torch.Generator().manual_seed(cfg.seed)
    n_batches = max(len(train) // cfg.batch_size, 1)
    history, best_acc, best_state, examples_seen = [], -1.0, None, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_loss, epoch_start = 0.0, time.perf_counter()
        train_batches = batching.batches(
            ids["train"],
            train.labels,
            cfg.batch_size,
            pad_id,
            length,
            shuffle=True,
            generator=generator,
            drop_last=True,
            bucket=length is None,
        )
        bar = tqdm(
            train_batches,
            total=n_batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for step, batch in enumerate(bar, start=1):
            batch = batch.to(device)
            with autocast(device, cfg.precision):
                logits = batch_logits(model, batch, caches.get("train"))
            loss = F.cross_entropy(logits.float(), batch.labels)
            (loss / cfg.grad_accum).backward()
            if step % cfg.grad_accum == 0 or step == n_batches:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            examples_seen += len(batch.labels)
            epoch_loss += loss.item()
            rate = step * cfg.batch_size / (time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{rate:.1f}", refresh=False)
        val = run_eval("validation")
        history.append(
            {
                "epoch": epoch,
                "examples_seen": examples_seen,
                "train_loss": epoch_loss / n_batches,
                "validation_loss": val["loss"],
                "validation_accuracy": val["accuracy"],
            }
        )
        log.info(
            "epoch %d: train loss %.4f, validation loss %.4f, validation accuracy %.2f%%",
            epoch,
            history[-1]["train_loss"],
            val["loss"],
            100 * val["accuracy"],
        )
        if val["accuracy"] > best_acc:
            best_acc = val["accuracy"]
            best_state = {
                k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad
            }
            if out is not None:
                save_classifier(out, model, lm.tokenizer, info)
    train_seconds = time.perf_counter() - train_start

    model.load_state_dict(best_state, strict=False)
    metrics: dict[str, Any] = {name: run_eval(name) for name in SPLITS}
    metrics.update(
        best_epoch=max(history, key=lambda h: h["validation_accuracy"])["epoch"],
        train_seconds=train_seconds,
        cache_seconds=cache_seconds,
        total_seconds=time.perf_counter() - started,
        cached_from_block=start if caches else None,
        trainable_params=trainable,
        total_params=total,
        labels=train.label_names,
        history=history,
        config=info.to_dict(),
    )
    if out is not None:
        write_json(out / "metrics.json", metrics)
    return metrics
