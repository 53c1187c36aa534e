"""Stratified k-fold cross-validation of a training config: `gptclf cv`, `Classifier.cross_validate`.

What is cross-validated: the texts a config trains and chooses its epoch on, its train and
validation splits together (on the bundled SMS data with the book's split, 1,045 + 149 = 1,194
texts); its test split is set aside unread. Every text is held out once; folds keep each class's
share (`stratified_folds`, seeded like the split: `--split-seed`, else `--seed`).

Texts that only train. `--split book_full` trains on the book's 1,045 training texts and the
4,032 messages the book's undersampling leaves out; what it chooses from is still the book's
1,194 train + validation texts. So those 1,194 are cross-validated, on the same folds as every
other config of the bundled data (scores compare fold by fold), and the others join every fold's
training split, never held out, minus any copy of a cross-validated text (it would be a held-out
text in training; copies compared as `data.unseen_indices` does, whitespace and case normalised).

Epoch selection. The recipes keep the epoch with the best validation accuracy. The held-out fold
must not choose it (its score would then flatter the config), so each fold's k-1 training folds
are split again, stratified, into training texts and an inner validation split with the share
the config's own validation split has (149 of 1,194 for the book's). A fold then runs exactly
what `gptclf train` runs, selection included, and the CV score estimates that. With `--select
last` and no `--patience` nothing is chosen: every text of the k-1 folds trains, and the
held-out fold, evaluated after each epoch, is only recorded (the fold's history).

Cost. The base model is loaded once and the texts are encoded once; each fold trains a copy of
the model. Where the blocks below the trained ones are frozen (prefix_cache.py), their states are
computed once for every text (or read from `--cache-dir`) and each fold gathers its own, so k
folds cost k trainings of the top blocks, not k prefix passes. Encoding once means fixed-length
padding (`--padding longest`) pads to the longest text of all folds, where `gptclf train` pads
to its longest training text; dynamic padding (the smollm2 recipe) is the same either way.

Output: the per-fold, mean ± std and pooled (every text's out-of-fold prediction together)
accuracy and F1, and the duplicate-aware accuracy (`unseen_accuracy`: the held-out texts with no
copy among the fold's training texts) in `OUT/cv.json`, written atomically after every fold;
with `--resume`, the folds it holds for the same settings and texts are kept, not rerun. No
checkpoint is written: `gptclf train` trains the classifier to keep. Single-label, one process.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptclf import distributed, resume, train
from gptclf.balance import undersample_indices
from gptclf.data import LabeledTexts, normalized_text, stratified_indices
from gptclf.errors import GptclfError
from gptclf.fileio import read_json, write_json
from gptclf.inference import autocast
from gptclf.metrics import logit_metrics
from gptclf.prefix_cache import PrefixCache, build_caches, cache_start, spill_space
from gptclf.train_config import TrainConfig

log = logging.getLogger(__name__)

CV_FILE = "cv.json"
FORMAT = 1
DEFAULT_FOLDS = 5
SUMMARY_KEYS = ("accuracy", "f1", "macro_f1", "unseen_accuracy")  # mean ± std over folds
FOLD_KEYS = (*SUMMARY_KEYS, "unseen_count", "loss", "balanced_accuracy", "n")


def cross_validate(
    cfg: TrainConfig, folds: int = DEFAULT_FOLDS, parts: train.TrainParts | None = None
) -> dict[str, Any]:
    """Train `cfg` on k-1 folds and score it on the held-out one, k times; returns (and writes
    to `cfg.out`, unless None) the record of `cv.json`. `parts`: classifier, optimizer or batch
    source built elsewhere (`train.TrainParts`; its data, model, ids and cache come from here)."""
    started = time.perf_counter()
    check_config(cfg)
    pool, share, n = cv_pool(cfg)
    split_seed = cfg.split_seed if cfg.split_seed is not None else cfg.seed
    assignment = assign_folds(pool, n, folds, split_seed)
    device = train.resolve_device(cfg.device)
    cfg = train.as_it_runs(cfg, device)
    inner = cfg.select == "best" or cfg.patience is not None
    record = new_record(cfg, folds, pool, assignment, inner)
    done = previous_folds(cfg, record) if cfg.resume else {}
    d = distributed.Dist()
    base = train.load_model(cfg, d)
    base.model.lm_head = None  # every fold's classifier drops it: not copied k times
    enc = train.encode_splits(cfg, base, {"train": pool})  # fixed padding: longest of all
    fold_cfg = dataclasses.replace(cfg, out=None, resume=False, report=False, baseline=False)
    with spill_space(cfg.out) as spill_dir:  # the folds share one spilled cache, if any
        shared = SharedPrefix(enc.ids["train"], spill_dir)
        for k in range(folds):
            if k in done:
                record["per_fold"].append(done[k])
                continue
            index = fold_indices(pool, assignment, k, share if inner else None, split_seed, cfg)
            fold_parts = dataclasses.replace(
                parts or train.TrainParts(),
                splits=lambda _cfg, index=index: [pool.subset(index[s]) for s in train.SPLITS],
                lm=lambda _cfg, _d: dataclasses.replace(base, model=copy.deepcopy(base.model)),
                encode=lambda _cfg, _lm, _data, index=index: fold_encoded(enc, index),
                prefix_cache=functools.partial(shared.attach, index=index),
            )
            log.info("fold %d of %d: %s", k + 1, folds, {s: len(i) for s, i in index.items()})
            record["per_fold"].append(
                fold_result(k, index, *train_fold(fold_cfg, d, device, fold_parts))
            )
            save(cfg, record, shared, started)
        shared.close()
    record["complete"] = True
    return save(cfg, record, shared, started, final=True, pool=pool.subset(range(n)))


def check_config(cfg: TrainConfig) -> None:
    """What cross-validation does not do (one line each)."""
    if cfg.multi_label:
        raise GptclfError("cv: --multi-label data is not supported yet (single-label only)")
    if distributed.env_world_size() > 1:
        raise GptclfError("cv runs in one process: launch it without torchrun")
    if cfg.time_budget is not None:
        log.warning("--time-budget applies to --recipe auto only: ignored")


def cv_pool(cfg: TrainConfig) -> tuple[LabeledTexts, float, int]:
    """The texts cross-validation uses, the validation share, and how many of them are
    cross-validated: the config's train + validation splits (without any undersampling: each
    fold undersamples its own training texts); with `split=book_full`, those of the book's split,
    then the texts that only train (the module doc)."""
    no_balance = dataclasses.replace(cfg, balance="none")
    split = "book" if cfg.split == "book_full" else cfg.split
    train_split, validation, _test = train.config_splits(
        dataclasses.replace(no_balance, split=split)
    )
    pool = LabeledTexts(
        train_split.texts + validation.texts,
        list(train_split.labels) + list(validation.labels),
        list(train_split.label_names),
    )
    n = len(pool)
    if split != cfg.split:
        full_train = train.config_splits(no_balance)[0]  # the book's training texts, then more
        # copies as `unseen_indices` counts them: whitespace runs and case normalised
        seen = {normalized_text(t) for t in pool.texts}
        extra = [
            i
            for i in range(len(train_split), len(full_train))
            if normalized_text(full_train.texts[i]) not in seen
        ]
        more = full_train.subset(extra)
        pool = LabeledTexts(pool.texts + more.texts, pool.labels + more.labels, pool.label_names)
        log.info(
            "cv: %d texts cross-validated, %d more in every fold's training split", n, len(more)
        )
    return pool, len(validation) / n, n


def assign_folds(pool: LabeledTexts, n: int, folds: int, seed: int) -> np.ndarray:
    """Each text's fold (`stratified_folds` over the first n, the cross-validated texts); -1 for
    the texts after them, which only train."""
    check_folds(pool.subset(range(n)), folds)
    only_train = np.full(len(pool) - n, -1, dtype=np.int64)
    return np.concatenate([stratified_folds(pool.labels[:n], folds, seed), only_train])


def check_folds(pool: LabeledTexts, folds: int) -> None:
    """k >= 2, and every class in every fold: k at most the rarest class's count."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise GptclfError(f"--folds must be an integer of at least 2, got {folds!r}")
    counts = np.bincount(pool.labels, minlength=len(pool.label_names))
    rarest = int(np.argmin(counts))
    if folds > counts[rarest]:
        raise GptclfError(
            f"--folds {folds} is more than the rarest class has texts ({pool.label_names[rarest]!r}: "
            f"{counts[rarest]} of the {len(pool)} cross-validated): every fold needs each class; "
            f"use --folds {max(int(counts[rarest]), 2)} or fewer"
        )


def stratified_folds(labels: list[int], folds: int, seed: int) -> np.ndarray:
    """The fold of every text: each class shuffled (with `seed`) and dealt round the folds,
    each class starting where the last left off, so fold sizes differ by at most one."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        assignment[idx] = (start + np.arange(len(idx))) % folds
        start = (start + len(idx)) % folds
    return assignment


def fold_indices(
    pool: LabeledTexts,
    assignment: np.ndarray,
    k: int,
    share: float | None,
    seed: int,
    cfg: TrainConfig,
) -> dict[str, np.ndarray]:
    """Pool indices of fold k's train, validation and test (= held-out) splits. `share`: the
    inner validation split's share of the training folds (None: the held-out fold validates,
    for the record only). Texts of fold -1 (`assign_folds`) are only ever trained on."""
    held_out = np.flatnonzero(assignment == k)
    rest = np.flatnonzero((assignment != k) & (assignment >= 0))
    only_train = np.flatnonzero(assignment < 0)
    if share is None:
        train_idx, val_idx = rest, held_out
    else:
        parts = stratified_indices(pool.subset(rest), (1.0 - share, share, 0.0), seed=seed)
        train_idx, val_idx = rest[parts[0]], rest[parts[1]]
    train_idx = np.concatenate([train_idx, only_train])
    if cfg.balance == "undersample":
        train_idx = train_idx[undersample_indices([pool.labels[i] for i in train_idx], seed)]
    if not len(val_idx) or len(set(pool.labels[i] for i in train_idx)) < 2:
        raise GptclfError(
            f"fold {k + 1}: too few texts for a training and an inner validation split; use "
            "fewer --folds or more data"
        )
    return {"train": train_idx, "validation": val_idx, "test": held_out}


def fold_encoded(enc: train.Encoded, index: dict[str, np.ndarray]) -> train.Encoded:
    """A fold's token ids, gathered from the pool's (encoded once)."""
    ids, lengths = enc.ids["train"], enc.lengths["train"]  # the whole pool
    return train.Encoded(
        ids={name: [ids[i] for i in idx] for name, idx in index.items()},
        length=enc.length,
        max_length=enc.max_length,
        truncated={name: sum(lengths[i] > len(ids[i]) for i in idx) for name, idx in index.items()},
        lengths={name: [lengths[i] for i in idx] for name, idx in index.items()},
    )


class SharedPrefix:
    """The frozen prefix's states of every pool text: computed (or read from --cache-dir) when
    the first fold needs them, then gathered by every fold (`attach`, its prefix_cache part)."""

    def __init__(self, pool_ids: list[list[int]], spill_dir: Path | None = None):
        self.pool_ids, self.spill_dir = pool_ids, spill_dir
        self.cache: PrefixCache | None = None
        self.tried = False  # a cache over budget is not tried again per fold
        self.passes = 0  # prefix passes over the pool (tests: exactly one)

    def attach(self, run: train.Run, index: dict[str, np.ndarray]) -> None:
        cfg = run.cfg
        start = (
            cache_start(run.model, fixed_length=run.enc.length is not None) if cfg.cache else None
        )
        if start is not None and not self.tried:
            self.tried = True
            caches = build_caches(
                run.model,
                {"pool": self.pool_ids},
                start,
                pad_id=run.lm.tokenizer.pad_id,
                length=run.enc.length,
                batch_size=cfg.eval_batch_size,
                autocast=lambda: autocast(run.device, cfg.precision),
                precision=cfg.precision,
                budget_bytes=int(cfg.cache_budget_mb * 1024**2),
                store_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
                spill_dir=self.spill_dir,
            )
            self.cache = caches["pool"] if caches else None
            self.passes += bool(self.cache is not None and self.cache.read_from is None)
        if start is not None and self.cache is not None:
            run.caches = {name: self.cache.subset(idx) for name, idx in index.items()}
            run.caches["train_shard"] = run.caches["train"]  # one process: the whole split
            run.cache_block = start
        run.cache_seconds = time.perf_counter() - run.train_start

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def summary(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        return {
            "from_block": self.cache.start,
            "status": "read" if self.cache.read_from else "computed",
            "storage": "spilled" if self.cache.spilled else "memory",
            "dtype": str(self.cache.dtype).removeprefix("torch."),
            "build_seconds": self.cache.build_seconds,
        }


def train_fold(
    cfg: TrainConfig, d: distributed.Dist, device: torch.device, parts: train.TrainParts
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`train.fit`'s stages for one fold (no --out: nothing saved, nothing to resume): the
    fold's metrics and its logits per split."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    run = train.prepare(cfg, d, device, parts)
    run.generator.manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        stats = train.train_epoch(run, epoch)
        train.keep_if_best(run, epoch, stats, train.validate(run))
        run.tally = train.Tally()
        if train.stop_early(run, epoch):
            break
    metrics = train.finish(run, started)
    return metrics, run.logits


def fold_result(
    k: int,
    index: dict[str, np.ndarray],
    metrics: dict[str, Any],
    logits: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """What cv.json keeps of a fold: the held-out fold's metrics, sizes, the kept epoch and
    time, and every held-out text's pool index and logits (the pooled metrics, --resume)."""
    test = metrics["test"]
    return {
        "fold": k + 1,
        "sizes": {name: len(idx) for name, idx in index.items()},
        **{key: test.get(key) for key in FOLD_KEYS},
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "history": metrics["history"],
        "held_out": index["test"].tolist(),
        "logits": logits["test"].tolist(),
    }


def new_record(
    cfg: TrainConfig, folds: int, pool: LabeledTexts, assignment: np.ndarray, inner: bool
) -> dict[str, Any]:
    """cv.json before any fold: what is cross-validated and how."""
    n = int((assignment >= 0).sum())
    counts = np.bincount(pool.labels[:n], minlength=len(pool.label_names)).tolist()
    return {
        "format": FORMAT,
        "folds": folds,
        "complete": False,
        "selection": (
            "the best epoch on an inner validation split of the training folds"
            if inner
            else "the last epoch (--select last); the held-out fold is only recorded"
        ),
        "texts": n,
        "only_train": len(pool) - n,  # texts in every fold's training split (`cv_pool`)
        "labels": pool.label_names,
        "class_counts": dict(zip(pool.label_names, counts, strict=True)),
        "data_hash": data_hash(pool, assignment),
        "settings": settings(cfg),
        "per_fold": [],
    }


def settings(cfg: TrainConfig) -> dict[str, Any]:
    """The config's fields that change what is computed (as `resume` compares them; and
    not `out`: a cv.json moved to another folder still holds the same folds)."""
    free = {*resume.FREE_SETTINGS, "out"}
    chosen = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
    return json.loads(json.dumps(chosen))  # as cv.json holds them (lists, not tuples)


def data_hash(pool: LabeledTexts, assignment: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((pool.texts, list(pool.labels), assignment.tolist())).encode())
    return h.hexdigest()[:32]


def previous_folds(cfg: TrainConfig, record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """--resume: the folds a cv.json in --out holds for the same settings, folds and texts."""
    path = Path(cfg.out) / CV_FILE if cfg.out is not None else None
    if path is None or not path.is_file():
        log.warning("--resume: no %s in %s; starting fresh", CV_FILE, cfg.out or "(no --out)")
        return {}
    stored = read_json(path)
    same = ("format", "folds", "data_hash", "settings")
    if not isinstance(stored, dict) or any(stored.get(k) != record[k] for k in same):
        raise GptclfError(
            f"--resume: {path} holds a cross-validation with other settings, folds or texts; "
            "remove it to start fresh"
        )
    done = {f["fold"] - 1: f for f in stored.get("per_fold", [])}
    log.info("--resume: keeping folds %s from %s", sorted(k + 1 for k in done), path)
    return done


def save(
    cfg: TrainConfig,
    record: dict[str, Any],
    shared: SharedPrefix,
    started: float,
    final: bool = False,
    pool: LabeledTexts | None = None,
) -> dict[str, Any]:
    """Add the summary (once every fold ran) and the times; write cv.json if there is an --out."""
    record["prefix_cache"] = shared.summary()
    record["seconds"] = time.perf_counter() - started
    if final:
        record.update(summarize(record["per_fold"], pool))
    if cfg.out is not None:
        write_json(Path(cfg.out) / CV_FILE, record)
    return record


def summarize(per_fold: list[dict[str, Any]], pool: LabeledTexts) -> dict[str, Any]:
    """Mean and sample standard deviation over folds; and pooled: every text's out-of-fold
    prediction scored together (unseen: the texts each fold's training data had no copy of)."""
    mean, std = {}, {}
    for key in SUMMARY_KEYS:
        values = [f[key] for f in per_fold if f[key] is not None]
        mean[key] = statistics.fmean(values) if values else None
        std[key] = statistics.stdev(values) if len(values) > 1 else None
    logits = np.zeros((len(pool), len(pool.label_names)))
    for fold in per_fold:
        logits[fold["held_out"]] = fold["logits"]
    pooled = logit_metrics(logits, pool.labels, pool.label_names)
    unseen = sum(f["unseen_count"] for f in per_fold)
    right = sum(
        round(f["unseen_accuracy"] * f["unseen_count"]) for f in per_fold if f["unseen_count"]
    )
    pooled.update(unseen_accuracy=right / unseen if unseen else None, unseen_count=unseen)
    return {"mean": mean, "std": std, "pooled": pooled}


def format_table(record: dict[str, Any]) -> list[str]:
    """The short table `gptclf cv` prints: a line per fold, mean ± std, pooled."""

    def pct(value: float | None, std: float | None = None) -> str:
        if value is None:
            return "—"
        return f"{100 * value:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")

    head = f"{'fold':>6} {'train':>6} {'valid':>6} {'held':>5} {'accuracy %':>15} {'F1 %':>15} "
    lines = [head + f"{'unseen acc % (n)':>22} {'epoch':>5} {'train s':>8}"]
    for f in record["per_fold"]:
        s = f["sizes"]
        unseen = f"{pct(f['unseen_accuracy'])} ({f['unseen_count']})"
        lines.append(
            f"{f['fold']:>6} {s['train']:>6} {s['validation']:>6} {s['test']:>5} "
            f"{pct(f['accuracy']):>15} {pct(f['f1']):>15} {unseen:>22} "
            f"{f['best_epoch']:>5} {f['train_seconds']:>8.1f}"
        )
    mean, std, pooled = record["mean"], record["std"], record["pooled"]
    lines.append(
        f"{'mean':>6} {'':>6} {'':>6} {'':>5} {pct(mean['accuracy'], std['accuracy']):>15} "
        f"{pct(mean['f1'], std['f1']):>15} "
        f"{pct(mean['unseen_accuracy'], std['unseen_accuracy']):>22}"
    )
    unseen = f"{pct(pooled['unseen_accuracy'])} ({pooled['unseen_count']})"
    lines.append(
        f"{'pooled':>6} {'':>6} {'':>6} {pooled['n']:>5} {pct(pooled['accuracy']):>15} "
        f"{pct(pooled['f1']):>15} {unseen:>22}"
    )
    return lines
