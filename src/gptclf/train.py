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
from gptclf.inference import evaluate
from gptclf.lm import load_lm

log = logging.getLogger(__name__)


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
    train, val, test = load_splits(cfg.data, cfg.split, seed=cfg.seed)
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
    encoded = {
        name: batching.encode(lm.tokenizer, split.texts, max_length)
        for name, split in (("train", train), ("validation", val), ("test", test))
    }
    length = batching.pad_length(cfg.padding, encoded["train"], context)
    if length is not None:
        max_length = length  # the book truncates validation/test to the training length

    model = SequenceClassifier(lm.model, len(train.label_names), cfg.pool)
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

    def run_eval(name: str) -> dict[str, Any]:
        split = {"train": train, "validation": val, "test": test}[name]
        return evaluate(
            model,
            [s[:max_length] for s in encoded[name]],
            split.labels,
            batch_size=cfg.eval_batch_size,
            pad_id=pad_id,
            length=length,
        )

    generator = torch.Generator().manual_seed(cfg.seed)
    history, best_acc, best_state = [], -1.0, None
    examples_seen, train_start = 0, time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_loss, n_batches = 0.0, 0
        n_train_batches = len(train) // cfg.batch_size or 1
        bar = tqdm(
            batching.batches(
                encoded["train"],
                train.labels,
                cfg.batch_size,
                pad_id,
                length,
                shuffle=True,
                generator=generator,
                drop_last=True,
            ),
            total=n_train_batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        epoch_start = time.perf_counter()
        for step, batch in enumerate(bar, start=1):
            logits = model(batch.input_ids, batch.attention_mask)
            loss = F.cross_entropy(logits, batch.labels)
            (loss / cfg.grad_accum).backward()
            if step % cfg.grad_accum == 0 or step == n_train_batches:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            examples_seen += len(batch.labels)
            epoch_loss, n_batches = epoch_loss + loss.item(), n_batches + 1
            rate = step * cfg.batch_size / (time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{rate:.1f}", refresh=False)
        val_metrics = run_eval("validation")
        history.append(
            {
                "epoch": epoch,
                "examples_seen": examples_seen,
                "train_loss": epoch_loss / max(n_batches, 1),
                "validation_loss": val_metrics["loss"],
                "validation_accuracy": val_metrics["accuracy"],
            }
        )
        log.info(
            "epoch %d: train loss %.4f, validation loss %.4f, validation accuracy %.2f%%",
            epoch,
            history[-1]["train_loss"],
            val_metrics["loss"],
            100 * val_metrics["accuracy"],
        )
        if val_metrics["accuracy"] > best_acc:
            best_acc = val_metrics["accuracy"]
            best_state = {
                k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad
            }
            if out is not None:
                save_classifier(out, model, lm.tokenizer, info)
    train_seconds = time.perf_counter() - train_start

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    metrics: dict[str, Any] = {name: run_eval(name) for name in ("train", "validation", "test")}
    metrics.update(
        best_epoch=max(history, key=lambda h: h["validation_accuracy"])["epoch"],
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        trainable_params=trainable,
        total_params=total,
        labels=train.label_names,
        history=history,
        config=info.to_dict(),
    )
    if out is not None:
        write_json(out / "metrics.json", metrics)
    return metrics
