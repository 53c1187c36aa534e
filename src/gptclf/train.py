"""Finetuning in stages: `prepare` → per epoch `train_epoch` (of `train_step`s) and `validate`
→ `finish`. `fit(cfg)` runs them; the options are `TrainConfig` (train_config.py).

prepare: splits -> base LM -> token ids -> classifier (head swapped, layers frozen, LoRA) ->
frozen-prefix cache -> DDP/FSDP wrap -> AdamW. Each epoch ends with a full validation pass that
keeps the best checkpoint by validation accuracy; finish restores it, evaluates every split and
writes metrics.json and the report. Objects built elsewhere (the classifier, the optimizer, the
batch source) come in through `TrainParts`, so benchmarks and tests never patch this module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from gptclf import batching, distributed, resume, run_report
from gptclf.balance import class_weights
from gptclf.baseline import add_baseline
from gptclf.batching import Batch
from gptclf.checkpoint import ClassifierInfo, save_classifier
from gptclf.classifier import SequenceClassifier, drop_head_bias, set_trainable
from gptclf.data import LabeledTexts, splits_from_config, unseen_indices
from gptclf.distributed import Dist
from gptclf.errors import GptclfError
from gptclf.fileio import write_json
from gptclf.inference import autocast, batch_logits, predict_logits, resolve_precision
from gptclf.lm import LanguageModel, load_lm
from gptclf.lora import apply_lora
from gptclf.metrics import (
    logit_metrics,
    misclassified,
    multilabel_logit_metrics,
    multilabel_misclassified,
    sigmoid,
    tune_thresholds,
    unseen_accuracy,
)
from gptclf.prefix_cache import (
    PrefixCache,
    build_caches,
    cache_start,
    close_caches,
    gather_cache,
    spill_space,
)
from gptclf.quantize import int8_prefix_runs, quantize_prefix
from gptclf.train_config import RECIPES, TrainConfig

__all__ = ["RECIPES", "TrainConfig", "TrainParts", "fit", "make_optimizer"]

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def as_it_runs(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """`cfg` with what this device will really run: `--precision auto` resolved, and
    `--int8-prefix` off where it cannot run (warned). What ran is what the checkpoint, metrics
    and cv record."""
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision=resolve_precision("auto", device))
        log.info("precision auto: %s on %s", cfg.precision, device)
    if cfg.int8_prefix and not int8_prefix_runs(device):
        cfg = dataclasses.replace(cfg, int8_prefix=False)
    return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)  # the name's form is checked by TrainConfig
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptclfError("--device cuda but no CUDA device is available")
    return device


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; matrices decay, norms and biases don't (as in nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for all parameters (CPU and CUDA), ~8x faster than the per-tensor loop
    # on CPU; FSDP's sharded (DTensor) parameters take the default implementation.
    fused = not any(isinstance(p, DTensor) for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


@dataclass
class TrainParts:
    """What `fit` builds, replaceable: `classifier(backbone, num_classes, pool)`,
    `optimizer(model, cfg)` and `batches(...)` (the signature of `batching.batches`).

    Cross-validation (cv.py) builds the rest once for every fold and passes each fold its share:
    `splits(cfg)` (train, validation, test), `lm(cfg, d)` (a copy of the model loaded once),
    `encode(cfg, lm, data)` (its token ids) and `prefix_cache(run)` (its states); None: `prepare`
    builds them from `cfg` (`config_splits`, `load_model`, `encode_splits`, `add_prefix_cache`)."""

    classifier: Callable[[nn.Module, int, str], SequenceClassifier] = SequenceClassifier
    optimizer: Callable[[nn.Module, TrainConfig], torch.optim.Optimizer] = make_optimizer
    batches: Callable[..., Iterator[Batch]] = batching.batches
    splits: Callable[[TrainConfig], Sequence[LabeledTexts]] | None = None
    lm: Callable[[TrainConfig, Dist], LanguageModel] | None = None
    encode: Callable[[TrainConfig, LanguageModel, dict[str, LabeledTexts]], Encoded] | None = None
    prefix_cache: Callable[[Run], None] | None = None


@dataclass
class Encoded:
    """Token ids per split, as training and evaluation pad them."""

    ids: dict[str, list[list[int]]]
    length: int | None  # fixed padded length, or None: per batch (dynamic)
    max_length: int  # tokens kept per text
    truncated: dict[str, int]  # texts cut per split
    lengths: dict[str, list[int]] = field(default_factory=dict)  # tokens per text before cutting


@dataclass
class Tally:
    """The current epoch so far (saved with the training state, so a resumed epoch adds up)."""

    loss: float = 0.0
    correct: int = 0
    seen_before: int = 0  # examples seen when the epoch began
    steps_done: int = 0  # steps of this epoch already trained (a resumed run skips them)


@dataclass
class Run:
    """Everything `prepare` builds and the stages share; training state at the end."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    parts: TrainParts
    data: dict[str, LabeledTexts]
    lm: LanguageModel
    enc: Encoded
    model: SequenceClassifier
    info: ClassifierInfo
    trainable: tuple[int, int]  # (trainable, total) parameters
    loss_weights: torch.Tensor | None  # per class (multi-label: positives per label), or None
    eval_ids: dict[str, list[list[int]]]  # this rank's shard of every split
    global_batch: int
    train_start: float
    loss_weights_on_device: torch.Tensor | None = None
    class_weights: list[float] | None = None  # as metrics.json records them
    wrapped: nn.Module | None = None  # what training steps call (DDP, FSDP, compiled)
    optimizer: torch.optim.Optimizer | None = None
    caches: dict[str, PrefixCache] = field(default_factory=dict)
    spill_dir: Path | None = None  # where a cache over the memory budget may be written
    cache_block: int | None = None
    cache_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[tuple[int, float, float]] = field(default_factory=list)  # per batch
    examples_seen: int = 0
    best_key: tuple[float, float] | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=torch.Generator)  # the batch order
    epoch_rng: torch.Tensor | None = None  # `generator`'s state when the epoch began
    tally: Tally = field(default_factory=Tally)
    logits: dict[str, torch.Tensor] = field(default_factory=dict)  # per split, set by `finish`
    metrics: dict[str, Any] = field(default_factory=dict)  # what `finish` returns
    last_save: float = field(default_factory=time.perf_counter)
    stop_signal: int = 0  # set by SIGINT/SIGTERM: stop at the next step boundary

    @property
    def n_batches(self) -> int:
        return max(len(self.data["train"]) // self.global_batch, 1)


def fit(cfg: TrainConfig, parts: TrainParts | None = None) -> dict[str, Any]:
    """Train and evaluate a classifier; writes the checkpoint and metrics.json to cfg.out if set.

    Under torchrun each process calls this with the same config (see distributed.py).
    """
    return fit_run(cfg, parts).metrics


def fit_run(cfg: TrainConfig, parts: TrainParts | None = None) -> Run:
    """`fit`, returning the finished `Run`: its `metrics`, and the `logits` of every split
    (the experiment runner keeps the per-text probabilities)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    d, device = distributed.setup(resolve_device(cfg.device), cfg.fsdp)
    cfg = as_it_runs(cfg, device)
    try:
        with spill_space(cfg.out) as spill_dir:
            run = prepare(cfg, d, device, parts or TrainParts(), spill_dir)
            run.generator.manual_seed(cfg.seed)
            first = resume.restore(run) if cfg.resume else resume.start_fresh(run)
            with resume.interruptible(run):
                for epoch in range(first, cfg.epochs + 1):
                    stats = train_epoch(run, epoch)
                    keep_if_best(run, epoch, stats, validate(run))
                    run.tally = Tally()
                    resume.save(run, epoch + 1, 0)
                    if run.stop_signal:
                        raise resume.stop(run, epoch + 1, 0)
                    if stop_early(run, epoch):
                        break
            run.metrics = finish(run, started)
            close_caches(run.caches)  # a spilled cache's file, before its directory goes
        resume.finished(run)
        return run
    finally:
        distributed.teardown(d)


def stop_early(run: Run, epoch: int) -> bool:
    """`--patience N`: true after N epochs in a row not kept as the best (validation accuracy,
    ties: lower validation loss)."""
    patience = run.cfg.patience
    if patience is None or epoch >= run.cfg.epochs or epoch - run.best_epoch < patience:
        return False
    log.info(
        "early stop after epoch %d: no better validation result for %d epochs (best: epoch %d)",
        epoch,
        patience,
        run.best_epoch,
    )
    return True


def prepare(
    cfg: TrainConfig,
    d: Dist,
    device: torch.device,
    parts: TrainParts,
    spill_dir: Path | None = None,
) -> Run:
    """Splits, token ids, the classifier with its trainable part, caches (spilled to `spill_dir`
    if over the memory budget), wrapping, optimizer."""
    data = dict(zip(SPLITS, (parts.splits or config_splits)(cfg), strict=True))
    lm = (parts.lm or load_model)(cfg, d)
    enc = (parts.encode or encode_splits)(cfg, lm, data)
    global_batch = distributed.check_global_batch(d, len(data["train"]), cfg.batch_size)
    warn_batch_beyond_data(cfg, global_batch, len(data["train"]))
    log_world(cfg, d, global_batch)
    loss_weights = class_weights(cfg.class_weights, data["train"])
    label_names = data["train"].label_names
    model = parts.classifier(lm.model, len(label_names), cfg.pool).to(device)
    if not cfg.head_bias:
        drop_head_bias(model)
    lora = add_adapters(model, cfg)
    trainable = set_trainable(model, cfg.trainable)
    if cfg.int8_prefix:  # before the prefix cache: it stores what the int8 blocks compute
        quantize_prefix(model)
    info = ClassifierInfo(
        lm.config,
        label_names,
        cfg.pool,
        cfg.padding,
        enc.max_length,
        base=lm.source,
        train_config=dataclasses.asdict(cfg),
        lora=lora,
        multi_label=cfg.multi_label,
        thresholds=[0.5] * len(label_names) if cfg.multi_label else None,
        head_bias=cfg.head_bias,
    )
    # Each rank evaluates a shard of every split (the same examples every epoch).
    eval_ids = {
        name: [enc.ids[name][i] for i in distributed.shard(len(enc.ids[name]), d)]
        for name in SPLITS
    }
    weights = None if loss_weights is None else torch.tensor(loss_weights, dtype=torch.float32)
    run = Run(
        cfg, d, device, parts, data, lm, enc, model, info, trainable, weights, eval_ids,
        global_batch, train_start=time.perf_counter(),
        loss_weights_on_device=None if weights is None else weights.to(device),
        class_weights=loss_weights, spill_dir=spill_dir,
    )  # fmt: skip
    (parts.prefix_cache or add_prefix_cache)(run)  # before wrapping: FSDP shards frozen blocks
    run.wrapped = distributed.wrap(model, d, device)
    if cfg.compile:  # training steps only: evaluation is a handful of no-grad batches
        # dynamic=True: dynamic padding changes the length every batch; one graph serves all.
        run.wrapped = torch.compile(run.wrapped, dynamic=True)
    run.optimizer = parts.optimizer(model, cfg)  # after wrapping: FSDP replaces the parameters
    return run


def config_splits(cfg: TrainConfig) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """The train, validation and test splits `cfg` describes."""
    return splits_from_config(dataclasses.asdict(cfg))


def load_model(cfg: TrainConfig, d: Dist) -> LanguageModel:
    """The base language model `cfg` names (under torchrun: one download, then every rank)."""
    with distributed.main_first(d):  # one download, then the others read the files
        return load_lm(
            cfg.model,
            cfg.weights,
            seed=cfg.seed,
            progress=cfg.progress and d.is_main,
            layers=cfg.layers,
            causal=cfg.causal,
            dropout=cfg.dropout,
        )


def encode_splits(cfg: TrainConfig, lm: LanguageModel, data: dict[str, LabeledTexts]) -> Encoded:
    """Token ids of every split, truncated as `cfg` says, and the padded length."""
    context = lm.config.context_length
    if cfg.max_length is not None and cfg.max_length > context:  # asked for: not cut silently
        raise GptclfError(
            f"--max-length {cfg.max_length} is beyond the context of {cfg.model} "
            f"({context} tokens): use at most {context}"
        )
    max_length = cfg.max_length or context

    def encode(max_length: int) -> dict[str, tuple[list[list[int]], list[int]]]:
        return {
            name: batching.encode_with_lengths(
                lm.tokenizer, split.texts, max_length, cfg.truncation, cfg.prompt
            )
            for name, split in data.items()
        }

    encoded = encode(max_length)
    ids = {name: seqs for name, (seqs, _) in encoded.items()}
    # max_context pads to the context the texts were truncated to (--max-length, if shorter),
    # as the saved classifier does at inference.
    length = batching.pad_length(cfg.padding, ids["train"], max_length)
    if length is not None and length < max_length:
        # The book truncates validation/test to the training length: encoded again, so that a
        # prompt stays whole and only the texts are cut.
        max_length = length
        ids = {name: seqs for name, (seqs, _) in encode(length).items()}
    truncated = {
        name: sum(n > len(seq) for n, seq in zip(encoded[name][1], ids[name], strict=True))
        for name in ids
    }
    log.info("texts truncated to %d tokens (%s): %s", max_length, cfg.truncation, truncated)
    lengths = {name: n for name, (_, n) in encoded.items()}
    return Encoded(ids, length, max_length, truncated, lengths)


def warn_batch_beyond_data(cfg: TrainConfig, global_batch: int, n_train: int) -> None:
    """A batch larger than the training split is the whole split (as in Keras or transformers,
    whose last batch is smaller): it trains, but with one optimizer step per epoch."""
    if global_batch > n_train:
        log.warning(
            "--batch-size %d is more than the %d training texts: each epoch is one step on all "
            "of them",
            cfg.batch_size,
            n_train,
        )
    elif global_batch * cfg.grad_accum > n_train:
        log.warning(
            "--batch-size %d x --grad-accum %d is more than the %d training texts: each epoch is "
            "one optimizer step",
            cfg.batch_size,
            cfg.grad_accum,
            n_train,
        )


def log_world(cfg: TrainConfig, d: Dist, global_batch: int) -> None:
    if d.enabled:
        log.info(
            "%s on %d ranks: global batch %d (%d per rank x %d ranks x %d accumulation steps)",
            "FSDP" if d.fsdp else "DDP",
            d.world_size,
            global_batch * cfg.grad_accum,
            cfg.batch_size,
            d.world_size,
            cfg.grad_accum,
        )


def add_adapters(model: SequenceClassifier, cfg: TrainConfig) -> dict[str, Any] | None:
    """LoRA adapters for `--trainable lora` (before the optimizer: they are new parameters);
    returns what the checkpoint records to rebuild them, or None."""
    if cfg.trainable != "lora":
        return None
    width = model.backbone.config.d_model  # every adapted linear has at least this many in/outs
    if cfg.lora_rank > width:
        raise GptclfError(
            f"--lora-rank {cfg.lora_rank} is more than the model's width ({width}): an adapter's "
            f"update has rank at most {width}"
        )
    lora: dict[str, Any] = {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "targets": cfg.lora_targets,
        "scaling": cfg.lora_scaling,
    }
    if cfg.lora_blocks is not None:  # recorded only when set: older checkpoints stay equal
        lora["last_blocks"] = cfg.lora_blocks
    apply_lora(model, **lora)
    return lora


def add_prefix_cache(run: Run) -> None:
    """Compute (or read) the frozen prefix's states once, where that is exact (prefix_cache.py)."""
    cfg, length = run.cfg, run.enc.length
    start = cache_start(run.model, fixed_length=length is not None) if cfg.cache else None
    if start is not None:
        caches = build_caches(
            run.model,
            dict(run.eval_ids),
            start,
            pad_id=run.lm.tokenizer.pad_id,
            length=length,
            batch_size=cfg.eval_batch_size,
            autocast=lambda: autocast(run.device, cfg.precision),
            precision=cfg.precision,
            budget_bytes=int(cfg.cache_budget_mb * 1024**2),
            store_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
            spill_dir=None if run.d.enabled else run.spill_dir,
        )
        if caches is None and run.d.enabled:
            log.info("under torchrun a prefix cache over --cache-budget-mb is not spilled to disk")
        if caches:  # training batches reshuffle every epoch: every rank needs all of them
            caches["train_shard"] = caches["train"]  # for the final evaluation of this shard
            caches["train"] = gather_cache(caches["train"], len(run.enc.ids["train"]), run.d)
            run.caches, run.cache_block = caches, start
    run.cache_seconds = time.perf_counter() - run.train_start


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over shuffled global batches (the rest of it, resumed: the same order, the steps
    done skipped); returns the epoch's mean loss and accuracy."""
    cfg, d, tally = run.cfg, run.d, run.tally
    run.model.train()
    if tally.steps_done == 0:
        run.epoch_rng = run.generator.get_state()
        tally.seen_before = run.examples_seen
    epoch_start = time.perf_counter()
    train_batches = run.parts.batches(
        run.enc.ids["train"],
        run.data["train"].labels,
        run.global_batch,
        run.lm.tokenizer.pad_id,
        run.enc.length,
        shuffle=True,
        generator=run.generator,
        drop_last=True,
        bucket=run.enc.length is None and cfg.bucket,
    )
    bar = tqdm(
        train_batches,
        total=run.n_batches,
        desc=f"epoch {epoch}/{cfg.epochs}",
        disable=not (cfg.progress and d.is_main),
        leave=False,
    )
    for step, global_step_batch in enumerate(bar, start=1):
        if step <= tally.steps_done:
            continue  # trained before the run was resumed
        step_end = step % cfg.grad_accum == 0 or step == run.n_batches
        save = step_end and resume.due(run, step)
        result = train_step(run, global_step_batch, step_end, [save, step_end and run.stop_signal])
        batch_loss, correct, save, stop = result
        n_global = len(global_step_batch.labels)
        run.examples_seen += n_global
        tally.loss += batch_loss
        tally.correct += correct
        tally.steps_done = step
        run.steps.append((run.examples_seen, batch_loss, correct / n_global))
        if save or stop:
            resume.save(run, epoch, step)
        if stop:
            raise resume.stop(run, epoch, step)
        rate = step * n_global / (time.perf_counter() - epoch_start)
        bar.set_postfix(loss=f"{batch_loss:.3f}", ex_s=f"{rate:.1f}", refresh=False)
    return {
        "train_loss": tally.loss / run.n_batches,
        "train_accuracy": tally.correct / (run.examples_seen - tally.seen_before),
    }


def train_step(
    run: Run, global_batch: Batch, optimizer_step: bool, flags: list[Any] = ()
) -> tuple[Any, ...]:
    """Forward this rank's slice of a global batch, backward its share of the global batch's
    weighted loss (1/grad_accum of it), and step the optimizer if `optimizer_step`.
    Returns the global batch's loss, its count of correct predictions and each of `flags` as
    true where any rank set it (all in one all-reduce)."""
    cfg, d, device = run.cfg, run.d, run.device
    batch = distributed.rank_slice(global_batch, d).to(device)
    with autocast(device, cfg.precision):
        logits = batch_logits(run.wrapped, batch, run.caches.get("train"))
    loss_sum, total_weight = summed_loss(run, logits, batch, global_batch)
    # Sum over this rank's rows / the global batch's weight, times the ranks (DDP/FSDP average
    # gradients over ranks): exactly the single-process loss of the global batch.
    loss = loss_sum * (d.world_size / total_weight)
    (loss / cfg.grad_accum).backward()
    if optimizer_step:
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    correct = count_correct(run, logits, batch.labels)
    batch_loss, correct, *raised = distributed.all_sum(
        [loss.item(), correct, *map(float, flags)], d, device
    )
    return batch_loss / d.world_size, int(correct), *(r > 0 for r in raised)


def summed_loss(
    run: Run, logits: torch.Tensor, batch: Batch, global_batch: Batch
) -> tuple[torch.Tensor, float]:
    """This rank's summed loss and the global batch's total weight (what the sum is divided by).

    Cross-entropy, weighted per class; multi-label: binary cross-entropy of every label of every
    text (positives weighted per label), over texts x labels: the mean per label decision."""
    if run.cfg.multi_label:
        loss_sum = F.binary_cross_entropy_with_logits(
            logits.float(),
            batch.labels.float(),
            pos_weight=run.loss_weights_on_device,
            reduction="sum",
        )
        return loss_sum, float(global_batch.labels.numel())
    weight, total_weight = None, float(len(global_batch.labels))
    if run.loss_weights is not None:  # summed on the CPU labels: no device sync per step
        total_weight = float(run.loss_weights[global_batch.labels].sum())
        weight = run.loss_weights_on_device
    loss_sum = F.cross_entropy(logits.float(), batch.labels, weight=weight, reduction="sum")
    return loss_sum, total_weight


def count_correct(run: Run, logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Texts predicted right: the top class, or (multi-label) every label at 0.5."""
    if run.cfg.multi_label:  # sigmoid(x) >= 0.5 where x >= 0
        return int(((logits >= 0) == labels.bool()).all(dim=-1).sum().item())
    return (logits.argmax(-1) == labels).sum().item()


def predict_split(run: Run, name: str) -> torch.Tensor:
    """Logits (N, C) of a whole split: this rank's shard, gathered from every rank."""
    local = predict_logits(
        run.model,
        run.eval_ids[name],
        batch_size=run.cfg.eval_batch_size,
        pad_id=run.lm.tokenizer.pad_id,
        length=run.enc.length,
        cache=run.caches.get(name if name != "train" else "train_shard"),
        precision=run.cfg.precision,
    )
    return distributed.gather_shards(local, len(run.enc.ids[name]), run.d)


def validate(run: Run) -> dict[str, Any]:
    """Validation metrics after an epoch (every rank holds the same gathered logits)."""
    return split_metrics(run, predict_split(run, "validation"), "validation")


def split_metrics(run: Run, logits: torch.Tensor, name: str) -> dict[str, Any]:
    """A split's metrics from its gathered logits (multi-label: at the current thresholds)."""
    split = run.data[name]
    if run.cfg.multi_label:
        return multilabel_logit_metrics(
            logits.numpy(), split.targets, run.info.labels, run.info.thresholds
        )
    return logit_metrics(logits.numpy(), split.labels, run.info.labels)


def keep_if_best(run: Run, epoch: int, stats: dict[str, float], val: dict[str, Any]) -> None:
    """Record the epoch; keep (and save) its weights if it is the best so far (or `--select last`).

    Best by validation accuracy (multi-label: micro-F1 at 0.5); ties (frequent on a small
    validation set) go to the lower validation loss. Every rank decides alike: they hold the
    same gathered logits."""
    multi = run.cfg.multi_label
    run.history.append(
        {
            "epoch": epoch,
            "examples_seen": run.examples_seen,
            **stats,
            "validation_loss": val["loss"],
            "validation_accuracy": val["accuracy"],
            **({"validation_micro_f1": val["micro_f1"]} if multi else {}),
        }
    )
    log.info(
        "epoch %d: train loss %.4f, validation loss %.4f, validation %s %.2f%%",
        epoch,
        stats["train_loss"],
        val["loss"],
        "micro-F1" if multi else "accuracy",
        100 * val["micro_f1" if multi else "accuracy"],
    )
    key = (val["micro_f1" if multi else "accuracy"], -val["loss"])
    if run.best_key is None or key > run.best_key or run.cfg.select == "last":
        run.best_key, run.best_epoch = key, epoch
        distributed.reshard(run.model, run.d)
        run.best_state = {
            k: v.detach().clone() for k, v in run.model.named_parameters() if v.requires_grad
        }
        save_checkpoint(run)


def save_checkpoint(run: Run) -> None:
    state = distributed.full_state_dict(run.model, run.d)  # a collective under FSDP
    if run.cfg.out is not None and run.d.is_main:
        save_classifier(Path(run.cfg.out), state, run.lm.tokenizer, run.info)


def finish(run: Run, started: float) -> dict[str, Any]:
    """Restore the kept epoch, evaluate every split, write metrics.json and the report."""
    train_seconds = time.perf_counter() - run.train_start
    distributed.reshard(run.model, run.d)
    run.model.load_state_dict(run.best_state, strict=False)
    logits = run.logits = {name: predict_split(run, name) for name in SPLITS}
    labels = run.info.labels
    if run.cfg.tune_thresholds:
        choose_thresholds(run, logits["validation"])
    metrics: dict[str, Any] = {name: split_metrics(run, logits[name], name) for name in SPLITS}
    # Which test texts were wrong (indices into the test split): to see what every run misses.
    metrics["test"]["misclassified"] = (
        multilabel_misclassified(
            logits["test"].numpy(), run.data["test"].targets, run.info.thresholds
        )
        if run.cfg.multi_label
        else misclassified(logits["test"].numpy(), run.data["test"].labels)
    )
    # Duplicate-aware: accuracy on the test texts without a copy in the training split.
    unseen = unseen_indices(run.data["train"].texts, run.data["test"].texts)
    metrics["test"].update(unseen_accuracy(metrics["test"]["misclassified"], unseen))
    if run.cfg.multi_label:
        metrics.update(
            multi_label=True, thresholds=dict(zip(labels, run.info.thresholds, strict=True))
        )
    caches = run.caches
    metrics.update(
        best_epoch=run.best_epoch,
        train_seconds=train_seconds,
        cache_seconds=run.cache_seconds,
        total_seconds=time.perf_counter() - started,
        cached_from_block=run.cache_block if caches else None,
        # "read": the states came from --cache-dir, so train_seconds leaves out computing them;
        # cache_build_seconds is what computing them took in the run that did.
        prefix_cache=(None if not caches else "read" if caches["train"].read_from else "computed"),
        # "memory", or "spilled": over --cache-budget-mb, read from a file batch by batch
        prefix_cache_storage=(
            None if not caches else "spilled" if caches["train"].spilled else "memory"
        ),
        prefix_cache_dtype=str(caches["train"].dtype).removeprefix("torch.") if caches else None,
        cache_build_seconds=caches["train"].build_seconds if caches else None,
        trainable_params=run.trainable[0],
        total_params=run.trainable[1],
        world_size=run.d.world_size,
        labels=labels,
        truncated=run.enc.truncated,
        class_weights=run.class_weights,
        history=run.history,
        train_curve=run_report.curve(run.steps),
        config=run.info.to_dict(),
    )
    if run.cfg.baseline and run.d.is_main and not run.cfg.multi_label:  # single-label
        add_baseline(metrics, run.data, run.class_weights, run.cfg.seed)
    if run.cfg.out is not None and run.d.is_main:
        out = Path(run.cfg.out)
        write_json(out / "metrics.json", metrics)
        if run.cfg.report:
            write_report(run, out, metrics, logits["test"])
    return metrics


def choose_thresholds(run: Run, validation_logits: torch.Tensor) -> None:
    """--tune-thresholds: each label's threshold by its validation F1, into the checkpoint."""
    probs = sigmoid(validation_logits.numpy())
    run.info.thresholds = tune_thresholds(run.data["validation"].targets, probs)
    log.info(
        "thresholds tuned on validation: %s",
        ", ".join(
            f"{n} {t:.3f}" for n, t in zip(run.info.labels, run.info.thresholds, strict=True)
        ),
    )
    distributed.reshard(run.model, run.d)
    save_checkpoint(run)  # the kept weights again, with the thresholds in config.json


def write_report(run: Run, out: Path, metrics: dict[str, Any], test_logits: torch.Tensor) -> None:
    test = run.data["test"]
    if run.cfg.multi_label:
        run_report.write_report(out, metrics, test.targets, test_logits.sigmoid().numpy())
    else:
        run_report.write_report(out, metrics, test.labels, test_logits.softmax(-1).numpy())
