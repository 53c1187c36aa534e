"""Finetuning: `TrainConfig` (defaults = the book's chapter 6) and `fit()`, the training loop.

fit: data -> splits -> base LM -> token ids -> classifier (head swapped, layers frozen) -> AdamW loop
with full validation each epoch -> best checkpoint by validation accuracy -> metrics.json.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from gptclf import batching, distributed, report
from gptclf.balance import class_weights, parse_class_weights
from gptclf.checkpoint import ClassifierInfo, save_classifier, write_json
from gptclf.classifier import SequenceClassifier, set_trainable
from gptclf.data import BALANCE_MODES, SPLIT_MODES, splits_from_config
from gptclf.distributed import Dist
from gptclf.errors import GptclfError
from gptclf.inference import PRECISIONS, autocast, batch_logits, predict_logits, resolve_precision
from gptclf.lm import load_lm
from gptclf.lora import apply_lora
from gptclf.metrics import logit_metrics, misclassified
from gptclf.prefix_cache import PrefixCache, build_caches, cache_start
from gptclf.tokenizer import split_prompt

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class TrainConfig:
    model: str = "gpt2-small"
    weights: str = "pretrained"  # or "random"
    data: str = "sms-spam"  # sms-spam | sms-spam-uci | a table file | a split directory
    text_columns: list[str] | None = None  # None = "Text"; several are joined by a newline
    label_column: str | None = None  # None = "Label"
    validation: str | None = None  # a validation file instead of a split of `data`
    test: str | None = None  # a test file instead of a split of `data`
    split: str = "auto"  # auto (book on sms-spam, else stratified) | book | stratified
    balance: str = "none"  # or "undersample" (the training split only)
    class_weights: str = "none"  # auto | none | w1,w2,... (weights of the cross-entropy)
    trainable: str = "last_block"
    lora_rank: int = 8  # --trainable lora: adapter rank, alpha, targets, scaling (see lora.py)
    lora_alpha: float = 16.0
    lora_targets: str = "all"  # attention | mlp | all (the book's bonus wraps every linear)
    lora_scaling: str = "alpha_over_rank"  # or "alpha" (the book's bonus code)
    lora_blocks: int | None = None  # adapters in the last N blocks only (None = every block)
    pool: str = "last"
    padding: str = "longest"
    causal: bool = True
    dropout: float = 0.0
    max_length: int | None = None  # tokens kept per text; None = the model's context
    truncation: str = "head"  # which tokens a longer text keeps: head | tail | head+tail
    prompt: str | None = None  # a template with one "{text}": each text is classified inside it
    epochs: int = 5
    select: str = "best"  # the epoch kept: best (validation accuracy) | last (as the book reports)
    batch_size: int = 8
    bucket: bool = True  # dynamic padding: batches of similar lengths (random batches if False)
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    seed: int = 123
    split_seed: int | None = None  # seed of the data split (and undersampling); None = seed
    eval_batch_size: int = 32
    precision: str = "fp32"  # bf16: autocast, fp32 master weights; auto: bf16 where native
    device: str = "auto"  # auto = cuda if available, else cpu
    cache: bool = True  # frozen-prefix caching where it is exact (see prefix_cache.py)
    cache_dir: str | None = None  # keep prefix caches on disk, reused by runs with equal prefixes
    compile: bool = False  # torch.compile the training forward (dynamic shapes; Inductor)
    fsdp: bool = False  # under torchrun: shard parameters/gradients/optimizer state (FSDP)
    out: str | None = None
    report: bool = True  # plots and report.md in `out` (report.py)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise GptclfError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise GptclfError("--lr must be positive")
        if self.lora_blocks is not None and self.lora_blocks < 1:
            raise GptclfError("--lora-blocks must be at least 1")
        if self.max_length is not None and self.max_length < 1:
            raise GptclfError("--max-length must be at least 1")
        if self.compile and not has_cpp_compiler():
            raise GptclfError(
                "--compile needs a C++ compiler for Inductor (g++ or clang++, or set CXX)"
            )
        if self.select not in ("best", "last"):
            raise GptclfError(f"--select must be best or last, got {self.select!r}")
        if self.precision not in PRECISIONS:
            raise GptclfError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        check_data_options(self)


def has_cpp_compiler() -> bool:
    """Inductor compiles C++ for the CPU (and its CUDA wrappers): without one, torch.compile
    fails on the first step with a long traceback."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c)


def check_data_options(cfg: TrainConfig) -> None:
    """Fail on a bad data flag before any model is loaded."""
    for flag, value, known in (
        ("split", cfg.split, SPLIT_MODES),
        ("balance", cfg.balance, BALANCE_MODES),
        ("truncation", cfg.truncation, batching.TRUNCATIONS),
    ):
        if value not in known:
            raise GptclfError(f"--{flag} must be one of {', '.join(known)}, got {value!r}")
    parse_class_weights(cfg.class_weights)
    if cfg.prompt is not None:
        split_prompt(cfg.prompt)  # exactly one "{text}"
    if isinstance(cfg.text_columns, str):  # a single column given as a string
        cfg.text_columns = [cfg.text_columns]


# Named sets of defaults; explicit flags override them. "book" = the TrainConfig defaults
# (the book's chapter 6). "smollm2" = the main job, chosen by benchmarks/tune_smollm2.py.
RECIPES: dict[str, dict[str, Any]] = {
    "book": {},
    "smollm2": dict(
        model="smollm2-135m",
        pool="last_real",
        padding="dynamic",
        precision="auto",  # bf16 where the CPU/GPU runs it natively, else fp32 (inference.py)
        trainable="last_two_blocks",
        lr=2e-4,
        bucket=False,  # random batches: 97.89 +- 0.19% vs 96.89 +- 1.17% bucketed (RESULTS.md)
    ),
}


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
    # fused: one kernel for all parameters (CPU and CUDA), ~8x faster than the per-tensor loop
    # on CPU; FSDP's sharded (DTensor) parameters take the default implementation.
    fused = not any(isinstance(p, DTensor) for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train and evaluate a classifier; writes the checkpoint and metrics.json to cfg.out if set.

    Under torchrun each process calls this with the same config (see distributed.py).
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    d, device = distributed.setup(resolve_device(cfg.device), cfg.fsdp)
    if cfg.precision == "auto":  # what ran is what the checkpoint and metrics record
        cfg = dataclasses.replace(cfg, precision=resolve_precision("auto", device))
        log.info("precision auto: %s on %s", cfg.precision, device)
    try:
        return _fit(cfg, d, device, started)
    finally:
        distributed.teardown(d)


def _fit(cfg: TrainConfig, d: Dist, device: torch.device, started: float) -> dict[str, Any]:
    data = dict(zip(SPLITS, splits_from_config(dataclasses.asdict(cfg)), strict=True))
    with distributed.main_first(d):  # one download, then the others read the files
        lm = load_lm(
            cfg.model,
            cfg.weights,
            seed=cfg.seed,
            progress=cfg.progress and d.is_main,
            causal=cfg.causal,
            dropout=cfg.dropout,
        )
    context = lm.config.context_length
    max_length = min(cfg.max_length or context, context)

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
    train = data["train"]
    global_batch = distributed.check_global_batch(d, len(train), cfg.batch_size)
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
    loss_weights = class_weights(cfg.class_weights, train)
    weight = cpu_weight = None
    if loss_weights is not None:
        cpu_weight = torch.tensor(loss_weights, dtype=torch.float32)
        weight = cpu_weight.to(device)

    model = SequenceClassifier(lm.model, len(train.label_names), cfg.pool).to(device)
    lora = None
    if cfg.trainable == "lora":
        lora = {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha,
            "targets": cfg.lora_targets,
            "scaling": cfg.lora_scaling,
        }
        if cfg.lora_blocks is not None:  # recorded only when set: older checkpoints stay equal
            lora["last_blocks"] = cfg.lora_blocks
        apply_lora(model, **lora)  # before the optimizer: the adapters are new parameters
    trainable, total = set_trainable(model, cfg.trainable)
    info = ClassifierInfo(
        lm.config,
        train.label_names,
        cfg.pool,
        cfg.padding,
        max_length,
        base=lm.source,
        train_config=dataclasses.asdict(cfg),
        lora=lora,
    )
    out = Path(cfg.out) if cfg.out else None
    pad_id = lm.tokenizer.pad_id
    # Each rank evaluates a shard of every split (the same examples every epoch).
    shards = {name: distributed.shard(len(ids[name]), d) for name in SPLITS}
    eval_ids = {name: [ids[name][i] for i in shards[name]] for name in SPLITS}

    train_start = time.perf_counter()
    start = cache_start(model, fixed_length=length is not None) if cfg.cache else None
    caches: dict[str, PrefixCache] = {}
    if start is not None:  # before wrapping: FSDP would shard the frozen blocks
        caches = (
            build_caches(
                model,
                {"train": eval_ids["train"], **{n: eval_ids[n] for n in SPLITS[1:]}},
                start,
                pad_id=pad_id,
                length=length,
                batch_size=cfg.eval_batch_size,
                autocast=lambda: autocast(device, cfg.precision),
                precision=cfg.precision,
                store_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
            )
            or {}
        )
        if "train" in caches:  # training batches reshuffle every epoch: every rank needs all
            caches["train_shard"] = caches["train"]  # for the final evaluation of this shard
            caches["train"] = distributed.gather_cache(caches["train"], len(ids["train"]), d)
    cache_seconds = time.perf_counter() - train_start
    wrapped = distributed.wrap(model, d, device)
    if cfg.compile:  # training steps only: evaluation is a handful of no-grad batches
        # dynamic=True: dynamic padding changes the length every batch; one graph serves all.
        wrapped = torch.compile(wrapped, dynamic=True)
    optimizer = make_optimizer(model, cfg)  # after wrapping: FSDP replaces the parameters

    def predict(name: str) -> torch.Tensor:
        local = predict_logits(
            model,
            eval_ids[name],
            batch_size=cfg.eval_batch_size,
            pad_id=pad_id,
            length=length,
            cache=caches.get(name if name != "train" else "train_shard"),
            precision=cfg.precision,
        )
        return distributed.gather_shards(local, len(ids[name]), d)

    def save() -> None:
        state = distributed.full_state_dict(model, d)  # a collective under FSDP
        if out is not None and d.is_main:
            save_classifier(out, state, lm.tokenizer, info)

    generator = torch.Generator().manual_seed(cfg.seed)
    n_batches = max(len(train) // global_batch, 1)
    history, best_key, best_state, examples_seen = [], None, None, 0
    steps: list[tuple[int, float, float]] = []  # (examples seen, loss, accuracy) per batch
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        epoch_loss, epoch_correct, epoch_start = 0.0, 0, time.perf_counter()
        epoch_seen_before = examples_seen
        train_batches = batching.batches(
            ids["train"],
            train.labels,
            global_batch,
            pad_id,
            length,
            shuffle=True,
            generator=generator,
            drop_last=True,
            bucket=length is None and cfg.bucket,
        )
        bar = tqdm(
            train_batches,
            total=n_batches,
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not (cfg.progress and d.is_main),
            leave=False,
        )
        for step, global_step_batch in enumerate(bar, start=1):
            batch = distributed.rank_slice(global_step_batch, d).to(device)
            with autocast(device, cfg.precision):
                logits = batch_logits(wrapped, batch, caches.get("train"))
            total_weight = float(len(global_step_batch.labels))
            if weight is not None:  # on the CPU labels: no device sync per step
                total_weight = float(cpu_weight[global_step_batch.labels].sum())
            # Sum over this rank's rows / the global batch's weight, times the ranks (DDP/FSDP
            # average gradients over ranks): exactly the single-process loss of the global batch.
            loss_sum = F.cross_entropy(logits.float(), batch.labels, weight=weight, reduction="sum")
            loss = loss_sum * (d.world_size / total_weight)
            (loss / cfg.grad_accum).backward()
            if step % cfg.grad_accum == 0 or step == n_batches:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            correct = (logits.argmax(-1) == batch.labels).sum().item()
            batch_loss, correct = distributed.all_sum([loss.item(), correct], d, device)
            batch_loss /= d.world_size
            n_global = len(global_step_batch.labels)
            examples_seen += n_global
            epoch_loss += batch_loss
            epoch_correct += int(correct)
            steps.append((examples_seen, batch_loss, correct / n_global))
            rate = step * n_global / (time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{batch_loss:.3f}", ex_s=f"{rate:.1f}", refresh=False)
        val_logits = predict("validation")
        val = logit_metrics(val_logits.numpy(), data["validation"].labels, train.label_names)
        history.append(
            {
                "epoch": epoch,
                "examples_seen": examples_seen,
                "train_loss": epoch_loss / n_batches,
                "train_accuracy": epoch_correct / (examples_seen - epoch_seen_before),
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
        # Best by validation accuracy; ties (frequent on a small validation set) go to the lower
        # validation loss. Every rank holds the same gathered logits, so all decide alike.
        key = (val["accuracy"], -val["loss"])
        if best_key is None or key > best_key or cfg.select == "last":
            best_key, best_epoch = key, epoch
            distributed.reshard(model, d)
            best_state = {
                k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad
            }
            save()
    train_seconds = time.perf_counter() - train_start

    distributed.reshard(model, d)
    model.load_state_dict(best_state, strict=False)
    logits = {name: predict(name) for name in SPLITS}
    metrics: dict[str, Any] = {
        name: logit_metrics(logits[name].numpy(), data[name].labels, train.label_names)
        for name in SPLITS
    }
    # Which test texts were wrong (indices into the test split): to see what every run misses.
    metrics["test"]["misclassified"] = misclassified(logits["test"].numpy(), data["test"].labels)
    metrics.update(
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        cache_seconds=cache_seconds,
        total_seconds=time.perf_counter() - started,
        cached_from_block=start if caches else None,
        # "read": the states came from --cache-dir, so train_seconds leaves out computing them;
        # cache_build_seconds is what computing them took in the run that did.
        prefix_cache=(None if not caches else "read" if caches["train"].read_from else "computed"),
        cache_build_seconds=caches["train"].build_seconds if caches else None,
        trainable_params=trainable,
        total_params=total,
        world_size=d.world_size,
        labels=train.label_names,
        truncated=truncated,
        class_weights=loss_weights,
        history=history,
        train_curve=report.curve(steps),
        config=info.to_dict(),
    )
    if out is not None and d.is_main:
        write_json(out / "metrics.json", metrics)
        if cfg.report:
            test_probs = logits["test"].softmax(-1).numpy()
            report.write_report(out, metrics, data["test"].labels, test_probs)
    return metrics
