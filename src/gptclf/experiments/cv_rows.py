"""Rows scored by cross-validation, `gptclf experiments run --cv`: how the report chooses rows
without reading the test split.

    results/{name}/cv-seed{seed}.json    one row's `gptclf cv` record for one seed

The folds are the same for every row and seed (`cv.stratified_folds` seeded with the table's
split seed, over the book split's 1,194 train + validation texts), so rows compare fold by fold
and an ensemble row's score is the average of its members' out-of-fold probabilities, computed
when the results are loaded (nothing trains). A result counts only if it is complete and was made
with the row's current settings, the same number of folds and (records since 2026-12-04, which
hold `data_hash`) the same texts, labels and folds; otherwise it is rerun.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np

from gptclf.experiments.configs import EXPERIMENTS, Experiment, select, validate
from gptclf.experiments.runner import (
    FORMAT,
    Outcome,
    _normalized,
    _settings_of,
    default_cache_dir,
    default_results_dir,
    hardware,
    read_record,
    skip_reason,
    versions,
)
from gptclf.fileio import write_json
from gptclf.metrics import (
    logit_metrics,
    mean_probability_logits,
    rounded_probabilities,
    softmax,
)

log = logging.getLogger(__name__)
DEFAULT_FOLDS = 5
REQUIRED = ("format", "name", "seed", "folds", "overrides", "pooled", "mean", "probabilities")


def cv_path(results_dir: Path, name: str, seed: int) -> Path:
    return Path(results_dir) / name / f"cv-seed{seed}.json"


def run_cv_one(exp: Experiment, seed: int, folds: int, cache_dir: Path | None) -> dict[str, Any]:
    """Cross-validate one row with one seed: the record kept in `cv_path`."""
    from gptclf import cv
    from gptclf.experiments.baseline import tfidf_cross_validate

    cfg = exp.train_config(seed, cache_dir=str(cache_dir) if cache_dir else None)
    if exp.method == "tfidf":
        done = tfidf_cross_validate(cfg, folds)
    else:
        done = cv.cross_validate(cfg, folds)
    out_of_fold = np.zeros((done["texts"], len(done["labels"])))
    for fold in done["per_fold"]:
        out_of_fold[fold["held_out"]] = softmax(np.asarray(fold["logits"]))
    per_fold = [
        {k: v for k, v in f.items() if k not in ("held_out", "logits")} for f in done["per_fold"]
    ]
    return {
        "format": FORMAT,
        "name": exp.name,
        "seed": seed,
        "split_seed": cfg.split_seed,
        "overrides": _normalized(exp.overrides),
        "folds": folds,
        "texts": done["texts"],
        "data_hash": done["data_hash"],  # the texts, labels and folds (`cv.data_hash`)
        "labels": done["labels"],
        "mean": done["mean"],
        "std": done["std"],
        "pooled": done["pooled"],
        "per_fold": per_fold,
        "seconds": done["seconds"],
        "hardware": hardware(),
        "versions": versions(exp.method),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"train_config": _normalized(dataclasses.asdict(cfg))},
        # every cross-validated text's out-of-fold probabilities, in the pool's order
        "probabilities": rounded_probabilities(out_of_fold),
        "pool_labels": _pool_labels(cfg),
    }


def _pool_labels(cfg) -> list[int]:
    from gptclf import cv

    pool, _share, n = cv.cv_pool(cfg)
    return [int(y) for y in pool.labels[:n]]


def load_cv_result(
    path: Path, exp: Experiment, seed: int, folds: int = DEFAULT_FOLDS
) -> dict[str, Any] | None:
    """The cached CV record if complete and made with exp's settings and `folds`, else None."""
    record = read_record(path, REQUIRED, "cross-validation result")
    if record is None:
        return None
    same = (record["format"], record["name"], record["seed"], record["folds"])
    if same != (FORMAT, exp.name, seed, folds):
        return None
    if _settings_of(record, exp) != _normalized(exp.overrides):
        log.warning("%s: made with other settings than %s has now; rerun it", path, exp.name)
        return None
    # Records from before 2026-12-04 do not hold it: they are taken as made.
    if "data_hash" in record and record["data_hash"] != current_data_hash(exp, seed, folds):
        log.warning(
            "%s: made on other texts, labels or folds than %s has now; rerun it", path, exp.name
        )
        return None
    return record


def current_data_hash(exp: Experiment, seed: int, folds: int) -> str:
    """`cv.data_hash` of what the row would cross-validate now (reads its data: milliseconds)."""
    from gptclf import cv

    cfg = exp.train_config(seed)
    pool, _share, n = cv.cv_pool(cfg)
    split_seed = cfg.split_seed if cfg.split_seed is not None else cfg.seed  # as cross_validate
    return cv.data_hash(pool, cv.assign_folds(pool, n, folds, split_seed))


def run_cv(
    names: list[str] | str,
    seeds: list[int],
    folds: int = DEFAULT_FOLDS,
    results_dir: str | Path | None = None,
    experiments: dict[str, Experiment] | None = None,
    cache_dir: str | Path | None = None,
) -> list[Outcome]:
    """Cross-validate every (row, seed) not cached yet (an ensemble row: its members)."""
    experiments = EXPERIMENTS if experiments is None else experiments
    chosen = select(names, experiments)
    for exp in chosen:
        validate(exp, experiments)
    members = {m for e in chosen if e.method == "ensemble" for m in e.members}
    trained = select(
        [e.name for e in chosen if e.method != "ensemble"] + sorted(members), experiments
    )
    results = Path(results_dir) if results_dir is not None else default_results_dir()
    if cache_dir is None and results_dir is None:
        cache_dir = default_cache_dir()
    outcomes = []
    for exp in trained:
        reason = skip_reason(exp)
        if exp.method not in ("fit", "tfidf"):
            reason = "it trains nothing to cross-validate (its own validation choice is its score)"
        for seed in seeds:
            path = cv_path(results, exp.name, seed)
            cached = load_cv_result(path, exp, seed, folds)
            if cached is not None:
                outcomes.append(
                    Outcome(exp.name, seed, "cached", path, None, cached["pooled"]["accuracy"])
                )
            elif reason is not None:
                outcomes.append(Outcome(exp.name, seed, "skipped", path, reason))
            else:
                outcomes.append(_cv_and_save(exp, seed, folds, path, cache_dir))
    return outcomes


def _cv_and_save(exp: Experiment, seed: int, folds: int, path: Path, cache_dir) -> Outcome:
    log.info("cross-validating %s seed %d (%d folds)", exp.name, seed, folds)
    try:
        record = run_cv_one(exp, seed, folds, Path(cache_dir) if cache_dir else None)
    except Exception as exc:  # one broken row must not stop the others
        log.exception("%s seed %d: cross-validation failed", exp.name, seed)
        return Outcome(exp.name, seed, "failed", path, f"{type(exc).__name__}: {exc}")
    write_json(path, record)
    accuracy = record["pooled"]["accuracy"]
    log.info("%s seed %d: pooled out-of-fold accuracy %.4f", exp.name, seed, accuracy)
    return Outcome(exp.name, seed, "done", path, None, accuracy)


def load_cv_results(
    results_dir: str | Path | None = None,
    experiments: dict[str, Experiment] | None = None,
    folds: int = DEFAULT_FOLDS,
) -> dict[str, list[dict[str, Any]]]:
    """Every valid CV record per row (by seed); ensemble rows built from their members'."""
    experiments = EXPERIMENTS if experiments is None else experiments
    results = Path(results_dir) if results_dir is not None else default_results_dir()
    found: dict[str, list[dict[str, Any]]] = {}
    for name, exp in experiments.items():
        if exp.method == "ensemble":
            continue
        for path in sorted((results / name).glob("cv-seed*.json")):
            seed = path.stem.removeprefix("cv-seed")
            record = load_cv_result(path, exp, int(seed), folds) if seed.isdigit() else None
            if record is not None:
                found.setdefault(name, []).append(record)
    for exp in experiments.values():
        if exp.method == "ensemble":
            built = ensemble_cv_records(exp, found)
            if built:
                found[exp.name] = built
    return found


def ensemble_cv_records(
    exp: Experiment, found: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """An ensemble row's CV records: its members' out-of-fold probabilities averaged, seed by
    seed (`pool_seeds`: every shared seed in one), where they cross-validated the same texts."""
    from gptclf.experiments.ensembles import member_groups

    out = []
    for seed, members in member_groups(exp, found):
        if len({(tuple(m["pool_labels"]), tuple(m["labels"])) for m in members}) > 1:
            log.warning("%s seed %d: members cross-validated other texts; left out", exp.name, seed)
            continue
        log_probs = mean_probability_logits([m["probabilities"] for m in members])
        pooled = logit_metrics(log_probs, members[0]["pool_labels"])
        out.append(
            {
                "name": exp.name,
                "seed": seed,
                "folds": members[0]["folds"],
                "pooled": pooled,
                "mean": None,  # per-fold scores are not kept for averages
                "members": [f"{m['name']} seed {m['seed']}" for m in members],
                "seconds": sum(m["seconds"] for m in members),
            }
        )
    return out
