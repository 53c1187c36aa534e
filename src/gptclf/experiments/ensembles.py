"""Ensemble rows: the average of other rows' per-text probabilities, from their cached results.

An ensemble row trains nothing. Seed s of a row with members (a, b) averages the validation and
test probabilities that rows a and b recorded at seed s (`pool_seeds`: one record averaging every
seed the members share, e.g. five seeds of one row). Its records are built whenever the results
are loaded, so they always follow their members' results and cost nothing to evaluate; a member
result made before results kept probabilities leaves that seed out (the runner reruns it).
"""

from __future__ import annotations

import logging
from typing import Any

from gptclf.experiments.configs import Experiment
from gptclf.experiments.records import split_key, splits_of, train_seconds, unseen_test_texts
from gptclf.metrics import (
    logit_metrics,
    mean_probability_logits,
    misclassified,
    unseen_accuracy,
)

log = logging.getLogger(__name__)
SPLITS = ("validation", "test")


def member_groups(
    exp: Experiment, found: dict[str, list[dict[str, Any]]]
) -> list[tuple[int, list[dict[str, Any]]]]:
    """(seed, member results) per record of `exp`: the seeds every member has with
    probabilities; with `pool_seeds`, one group of all of them under the first seed (two
    seeds at least)."""
    by_seed = [
        {r["seed"]: r for r in found.get(name, []) if r.get("probabilities")}
        for name in exp.members
    ]
    seeds = sorted(set.intersection(*(set(s) for s in by_seed))) if by_seed else []
    if exp.pool_seeds:
        if len(seeds) < 2:  # one seed "averaged" would be that run itself
            return []
        return [(seeds[0], [member[s] for member in by_seed for s in seeds])]
    return [(s, [member[s] for member in by_seed]) for s in seeds]


def ensemble_records(
    exp: Experiment, found: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The records of ensemble row `exp` built from the members' cached results in `found`."""
    records = []
    for seed, members in member_groups(exp, found):
        problem = mismatch(members)
        if problem:
            log.warning("%s seed %d: %s; left out", exp.name, seed, problem)
            continue
        records.append(combine(exp, seed, members))
    return records


def mismatch(members: list[dict[str, Any]]) -> str | None:
    """Why these results cannot be averaged (other labels or held-out texts), or None."""
    if len({tuple(m["labels"]) for m in members}) > 1:
        return "its members have different labels"
    held_out = {tuple(tuple(s.texts) for s in splits_of(_key(m))[1:]) for m in members}
    if len(held_out) > 1:
        return "its members were validated or tested on different texts"
    return None


def _key(record: dict[str, Any]) -> str:
    return split_key(record["config"]["train_config"])


def combine(exp: Experiment, seed: int, members: list[dict[str, Any]]) -> dict[str, Any]:
    """One ensemble record: the members' mean probabilities scored like any run."""
    first = members[0]
    train, validation, test = splits_of(_key(first))
    truth = {"validation": validation.labels, "test": test.labels}
    metrics: dict[str, Any] = {}
    for split in SPLITS:
        log_probs = mean_probability_logits([m["probabilities"][split] for m in members])
        metrics[split] = logit_metrics(log_probs, truth[split], first["labels"])
        if split == "test":
            metrics[split]["misclassified"] = misclassified(log_probs, truth[split])
    # the ensemble's training data is every member's: a text is unseen if no member saw a copy
    unseen = sorted(set.intersection(*(set(unseen_test_texts(_key(m))) for m in members)))
    metrics["test"].update(unseen_accuracy(metrics["test"]["misclassified"], unseen))
    metrics["train"] = {"n": len(train)}
    machines = {m["hardware"]["summary"] for m in members}
    return {
        "format": first["format"],
        "name": exp.name,
        "seed": seed,
        "split_seed": first.get("split_seed"),
        "question": exp.question,
        "label": exp.label,
        "overrides": {},
        "members": [f"{m['name']} seed {m['seed']}" for m in members],
        "test_accuracy": metrics["test"]["accuracy"],
        "test_f1": metrics["test"]["f1"],
        "validation_accuracy": metrics["validation"]["accuracy"],
        "train_accuracy": None,
        "best_epoch": None,
        # training an ensemble = training every member (each from scratch, see train_seconds)
        "train_seconds": sum(train_seconds(m) for m in members),
        "total_seconds": sum(m["total_seconds"] for m in members),
        "trainable_params": sum(m["trainable_params"] for m in members),
        "total_params": sum(m["total_params"] for m in members),
        "hardware": first["hardware"] if len(machines) == 1 else _mixed(machines),
        "versions": first["versions"],
        "metrics": {**metrics, "history": []},
        "config": {"ensemble": [m["name"] for m in members], **first["config"]},
        "labels": first["labels"],
    }


def _mixed(machines: set[str]) -> dict[str, Any]:
    """Members trained on several machines: their train times do not compare with one run's."""
    return {"summary": "members on " + " + ".join(sorted(machines))}
