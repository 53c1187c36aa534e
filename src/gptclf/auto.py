"""`--recipe auto`: try a few candidate settings on the user's data, keep the best by validation.

Every candidate is a `train.fit` run of the same config with a few fields changed (which blocks
train, the learning rate), with early stopping (`--patience`, default 2) and one shared
frozen-prefix cache folder, so candidates whose frozen part is the same (the same first trainable
block) compute it once. The winner has the best validation accuracy (ties: the lower validation
loss; test is never looked at); its checkpoint files are moved into `--out` and its metrics.json
gains an `auto` record of every candidate (settings, validation accuracy and loss, time, status)
and why the winner won. `--time-budget` bounds the search: the first candidate always runs, and
a later one is skipped when its estimated time (from what the ones before it took) does not fit
in what is left. Too little validation data to tell candidates apart: the fixed recipe, with a
warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gptclf.errors import GptclfError
from gptclf.fileio import write_json
from gptclf.train_config import TrainConfig, parse_duration

log = logging.getLogger(__name__)

# (name, overrides) for the SmolLM2 classifier, cheapest first. The first is the fixed recipe
# (smollm2), so the search never does worse on validation than it; the lrs share one
# frozen-prefix pass (cached from block 28 of 30), last_4 and LoRA in the last 4 another (26).
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("last2-lr2e-4", {"trainable": "last_two_blocks", "lr": 2e-4}),
    ("last2-lr5e-4", {"trainable": "last_two_blocks", "lr": 5e-4}),
    ("last2-lr1e-4", {"trainable": "last_two_blocks", "lr": 1e-4}),
    ("last4-lr2e-4", {"trainable": "last_4", "lr": 2e-4}),
    ("lora4-lr1e-3", {"trainable": "lora", "lora_blocks": 4, "lr": 1e-3}),
]
PATIENCE = 2  # epochs without a better validation accuracy before a candidate stops
MIN_BUDGET_SECONDS = 60.0  # loading the model, one frozen-prefix pass and one epoch, at least
MIN_VALIDATION_PER_CLASS = 5  # fewer validation texts than classes x 5: too noisy to choose
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_meta.json")


def fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:.0f}s"


def check_budget(cfg: TrainConfig, min_seconds: float = MIN_BUDGET_SECONDS) -> float | None:
    """The budget in seconds (None: unbounded); one too short for one candidate is an error."""
    if cfg.time_budget is None:
        return None
    budget = parse_duration(cfg.time_budget)
    if budget < min_seconds:
        raise GptclfError(
            f"--time-budget {cfg.time_budget} is too short for even one candidate of --recipe "
            f"auto: at least {fmt_seconds(min_seconds)} (model load, one frozen-prefix pass and "
            "an epoch)"
        )
    return budget


def too_small(cfg: TrainConfig) -> str | None:
    """Why the validation split cannot tell candidates apart, or None."""
    from gptclf.data import splits_from_config

    _, validation, _ = splits_from_config(dataclasses.asdict(cfg))
    classes = len(validation.label_names)
    need = classes * MIN_VALIDATION_PER_CLASS
    if len(validation) < need:
        return (
            f"{len(validation)} validation texts for {classes} classes (fewer than "
            f"{MIN_VALIDATION_PER_CLASS} per class)"
        )
    return None


def trained_blocks(overrides: dict[str, Any], default: str) -> int:
    """How many top blocks a candidate trains (its time per epoch grows with it)."""
    spec = overrides.get("trainable", default)
    if spec == "lora":
        return int(overrides.get("lora_blocks") or 30)
    found = re.fullmatch(r"last_(\d+)", spec)
    named = {"head": 0, "last_block": 1, "last_two_blocks": 2, "all": 30}
    return int(found.group(1)) if found else named.get(spec, 30)


def estimate(record: dict[str, Any], done: list[dict[str, Any]], cfg: TrainConfig) -> float:
    """A candidate's seconds, from the ones run: their time per epoch and trained block, the
    model load and, unless a candidate with the same trained depth ran, a frozen-prefix pass."""
    blocks = trained_blocks(record["settings"], cfg.trainable)
    per_block_epoch = max(
        r["epoch_seconds"] / max(trained_blocks(r["settings"], cfg.trainable), 1) for r in done
    )
    # the same first trainable block: the same frozen prefix, read from the shared cache
    shared = any(trained_blocks(r["settings"], cfg.trainable) == blocks for r in done)
    fixed = max(r["total_seconds"] - r["train_seconds"] for r in done)  # load + evaluation
    cache = 0.0 if shared else max(r["cache_build_seconds"] or 0.0 for r in done)
    return fixed + cache + per_block_epoch * max(blocks, 1) * cfg.epochs


def run_candidate(
    cfg: TrainConfig, name: str, overrides: dict[str, Any], work: Path, cache_dir: str
) -> dict[str, Any]:
    """Train one candidate into `work/name`; its record for metrics.json and the log."""
    from gptclf.train import fit

    candidate = dataclasses.replace(
        cfg,
        **overrides,
        out=str(work / name),
        cache_dir=cache_dir,
        patience=cfg.patience or PATIENCE,
        baseline=False,
        time_budget=None,
    )
    started = time.perf_counter()
    metrics = fit(candidate)
    epochs = len(metrics["history"])
    train_only = metrics["train_seconds"] - (metrics["cache_seconds"] or 0.0)
    record = {
        "name": name,
        "settings": overrides,
        "status": "run",
        "validation_accuracy": metrics["validation"]["accuracy"],
        "validation_loss": metrics["validation"]["loss"],
        "test_accuracy": metrics["test"]["accuracy"],  # recorded, never used to choose
        "best_epoch": metrics["best_epoch"],
        "epochs_run": epochs,
        "prefix_cache": metrics["prefix_cache"],
        "cache_build_seconds": metrics["cache_build_seconds"],
        "train_seconds": metrics["train_seconds"],
        "epoch_seconds": train_only / max(epochs, 1),
        "total_seconds": time.perf_counter() - started,
    }
    log.info(
        "auto: %s (%s): validation accuracy %.2f%%, loss %.4f, %d epochs, %.0f s (prefix %s)",
        name,
        ", ".join(f"{k} {v}" for k, v in overrides.items()),
        100 * record["validation_accuracy"],
        record["validation_loss"],
        epochs,
        record["total_seconds"],
        record["prefix_cache"] or "not cached",
    )
    return record


def rank_key(record: dict[str, Any]) -> tuple[float, float]:
    return (record["validation_accuracy"], -record["validation_loss"])


def why(winner: dict[str, Any], ran: list[dict[str, Any]]) -> str:
    """One sentence: the winner against the runner-up, on validation."""
    rest = sorted((r for r in ran if r is not winner), key=rank_key, reverse=True)
    head = (
        f"{winner['name']} has the best validation accuracy of {len(ran)} candidates run "
        f"({100 * winner['validation_accuracy']:.2f}%"
    )
    if not rest:
        return head + "; the only one that fit in the time budget)"
    second = rest[0]
    if second["validation_accuracy"] == winner["validation_accuracy"]:
        return head + (
            f", tied with {second['name']}; its validation loss is lower: "
            f"{winner['validation_loss']:.4f} vs {second['validation_loss']:.4f})"
        )
    return head + (
        f" vs {100 * second['validation_accuracy']:.2f}% for the runner-up {second['name']})"
    )


def search(
    cfg: TrainConfig,
    candidates: list[tuple[str, dict[str, Any]]],
    budget: float | None,
    work: Path,
    cache_dir: str,
) -> list[dict[str, Any]]:
    """Run the candidates in order within the budget; after each, only the best one's
    checkpoint is kept in `work`. Returns every candidate's record."""
    started, records, best = time.perf_counter(), [], None
    for name, overrides in candidates:
        ran = [r for r in records if r["status"] == "run"]
        left = None if budget is None else budget - (time.perf_counter() - started)
        if ran and left is not None:
            guess = estimate({"settings": overrides}, ran, cfg)
            if guess > left:
                log.info(
                    "auto: %s skipped: about %.0f s, %.0f s of the budget left", name, guess, left
                )
                records.append(
                    {"name": name, "settings": overrides, "status": "skipped for budget",
                     "estimated_seconds": guess}
                )  # fmt: skip
                continue
        record = run_candidate(cfg, name, overrides, work, cache_dir)
        records.append(record)
        if best is None or rank_key(record) > rank_key(best):
            if best is not None:
                shutil.rmtree(work / best["name"], ignore_errors=True)
            best = record
        else:
            shutil.rmtree(work / name, ignore_errors=True)
    return records


def fit_auto(
    cfg: TrainConfig,
    candidates: list[tuple[str, dict[str, Any]]] | None = None,
    min_seconds: float = MIN_BUDGET_SECONDS,
) -> dict[str, Any]:
    """`--recipe auto`: the search, the winner's checkpoint in `cfg.out`, its metrics (with an
    `auto` record) returned and written. `cfg` is the base of every candidate."""
    from gptclf.train import fit

    if cfg.resume:
        raise GptclfError("--resume does not support --recipe auto (a search, not one run)")
    budget = check_budget(cfg, min_seconds)
    reason = too_small(cfg)
    if reason is not None:
        log.warning("auto: %s: training the fixed recipe instead of comparing candidates", reason)
        metrics = fit(cfg)
        metrics["auto"] = {"fallback": reason}
        if cfg.out is not None:
            write_json(Path(cfg.out) / "metrics.json", metrics)
        return metrics
    candidates = CANDIDATES if candidates is None else candidates
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".auto-", dir=out))
    try:
        cache_dir = cfg.cache_dir or str(work / "prefix-cache")
        records = search(cfg, candidates, budget, work, cache_dir)
        return finish_auto(cfg, records, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finish_auto(cfg: TrainConfig, records: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """Move the winner's files into `cfg.out`, add the baseline and the `auto` record."""
    from gptclf.fileio import read_json

    ran = [r for r in records if r["status"] == "run"]
    winner = max(ran, key=rank_key)
    reason = why(winner, ran)
    log.info("auto: winner %s: %s", winner["name"], reason)
    source = work / winner["name"]
    metrics = read_json(source / "metrics.json")
    if cfg.baseline:
        add_baseline(cfg, metrics)
    metrics["auto"] = {"candidates": records, "winner": winner["name"], "why": reason}
    where = {"out": cfg.out, "cache_dir": cfg.cache_dir}  # not the deleted candidate folders
    metrics["config"]["train_config"].update(where)
    if cfg.out is not None:
        out = Path(cfg.out)
        settings = read_json(source / "config.json")
        settings.get("train_config", {}).update(where)
        write_json(source / "config.json", settings)
        # Same file system: each file arrives whole; model.safetensors last, as a save renames
        # them (a kill in between leaves a mix that loading names, by the save ids).
        for path in sorted(source.iterdir(), key=lambda p: p.name == "model.safetensors"):
            if path.is_file() and path.name != "metrics.json":
                os.replace(path, out / path.name)
        write_json(out / "metrics.json", metrics)
    return metrics


def add_baseline(cfg: TrainConfig, metrics: dict[str, Any]) -> None:
    """The TF-IDF baseline once for the search (the same splits for every candidate)."""
    from gptclf.baseline import add_baseline as add_to_metrics
    from gptclf.data import splits_from_config

    splits = splits_from_config(dataclasses.asdict(cfg))
    data = dict(zip(("train", "validation", "test"), splits, strict=True))
    add_to_metrics(metrics, data, metrics.get("class_weights"), cfg.seed)
