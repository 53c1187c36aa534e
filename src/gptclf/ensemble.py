"""`gptclf ensemble RUN RUN ... --out DIR`: classifiers trained on the same labels, used as one.

Each text's probabilities are the mean of the members' probabilities (single-label: each
member's softmax; multi-label: each label's sigmoid, chosen at the mean of the members'
thresholds for it). Each member reads the text as it was trained to: its own tokenizer, prompt,
truncation and length, so members may be different model families (SmolLM2 + MiniLM).

    DIR/ensemble.json        format version, the averaging rule, the labels (the first member's
                             order), multi-label or not, a random `save_id`; per member its
                             folder, its labels (in its own order: columns are matched by name),
                             the `save_id` of its config.json and the run it was copied from
    DIR/members/<i>/         a copy of member i's checkpoint files (config.json, tokenizer,
                             model.safetensors, metrics.json): DIR moves as one folder

DIR appears whole or not at all (`fileio.staged_directory`). Every member is checked by the one
loader, `checkpoint.load_classifier`, when the ensemble is made and whenever it is loaded; a
member whose config.json is not the one ensemble.json recorded (a member folder replaced by
hand) is refused. A member that is itself an ensemble is refused, not flattened: flattening would
change the weights (each inner member would count as much as a whole outer member).

`Classifier.load(DIR)` returns an `Ensemble`: predict, predict_file, evaluate and the server use
it as one classifier. Without `--data`, `gptclf evaluate DIR` scores the splits the members were
trained on, if they were all trained on the same ones (not so for the book split with different
seeds: its split seed is the training seed unless `--split-seed` fixes it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from gptclf.api import Classifier
from gptclf.checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    ClassifierInfo,
    check_labels,
    check_type,
    load_classifier,
    read_config,
)
from gptclf.data import LabeledTexts
from gptclf.errors import GptclfError
from gptclf.fileio import read_json_object, staged_directory, write_json
from gptclf.tokenizer import META_FILE, TOKENIZER_FILE

log = logging.getLogger(__name__)

ENSEMBLE_FILE = "ensemble.json"
FORMAT, VERSION = "gptclf-ensemble", 1
RULE = "mean_probability"  # the only one: the mean of the members' probabilities
MEMBERS_DIR = "members"
# A member's checkpoint files (checkpoint.py); metrics.json is copied when the run has one.
MEMBER_FILES = (CONFIG_FILE, TOKENIZER_FILE, META_FILE, WEIGHTS_FILE, METRICS_FILE)
FIELDS = {
    "format": str,
    "version": int,
    "rule": str,
    "labels": list[str],
    "multi_label": bool,
    "members": list[dict],
    "save_id": str,
}
MEMBER_FIELDS = {"path": str, "labels": list[str], "save_id": str | None, "source": str}
# Averaged probabilities as logits for the metrics (softmax(log p) = p, sigmoid(logit p) = p):
# clamped so that a probability of 0 or 1 gives a finite loss.
TINY = 1e-12


def is_ensemble(directory: Path) -> bool:
    return (Path(directory) / ENSEMBLE_FILE).is_file()


# --- making one --------------------------------------------------------------------------------


def create_ensemble(
    runs: list[str | Path], out: str | Path, *, overwrite: bool = False
) -> dict[str, Any]:
    """Write the ensemble of the classifier directories `runs` into `out`; returns what
    ensemble.json holds. Every problem is one GptclfError, raised before `out` is touched."""
    runs, out = [Path(r) for r in runs], Path(out)
    if len(runs) < 2:
        raise GptclfError(
            f"an ensemble needs at least 2 runs, got {len(runs)}: gptclf ensemble RUN RUN ... "
            "--out DIR"
        )
    check_out(out, overwrite)
    checked = [checked_run(run) for run in runs]
    check_distinct(runs, [save_id for _, save_id in checked])
    infos = [info for info, _ in checked]
    check_compatible([str(run) for run in runs], infos)
    warn_columns(runs, infos)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "rule": RULE,
        "labels": infos[0].labels,
        "multi_label": infos[0].multi_label,
        "members": [
            {
                "path": f"{MEMBERS_DIR}/{i}",
                "labels": info.labels,
                "save_id": save_id,
                "source": str(run.resolve()),
            }
            for i, (run, (info, save_id)) in enumerate(zip(runs, checked, strict=True))
        ],
        "save_id": secrets.token_hex(16),
    }
    with staged_directory(out.resolve(), "ensemble") as tmp:  # resolved: `--out .` too
        for run, member in zip(runs, manifest["members"], strict=True):
            copy_member(run, tmp / member["path"])
        write_json(tmp / ENSEMBLE_FILE, manifest)
    log.info("ensemble of %d classifiers written to %s", len(runs), out)
    return manifest


def check_out(out: Path, overwrite: bool) -> None:
    """`out` new or empty, or an earlier ensemble to replace with `overwrite`; never anything
    else (a run, a folder of runs), which --overwrite would otherwise delete."""
    if out.exists() and not out.is_dir():
        raise GptclfError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not is_ensemble(out):
            raise GptclfError(
                f"--out {out} exists and is not empty (and is not an ensemble, the only thing "
                "--overwrite replaces): choose another --out"
            )
        if not overwrite:
            raise GptclfError(
                f"--out {out} holds an ensemble: add --overwrite to replace it, or choose "
                "another --out"
            )
    parent = out.resolve().parent  # where the staged directory is made, then renamed
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise GptclfError(f"--out {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GptclfError(f"--out {out}: no permission to write in {parent}")


def checked_run(run: Path) -> tuple[ClassifierInfo, str | None]:
    """A member's info and save id, after the full check of `load_classifier` (so a damaged run
    is refused now, in its own words, not when the ensemble is used)."""
    if is_ensemble(run):
        inner = ", ".join(str(d) for d in member_dirs(run))
        raise GptclfError(
            f"{run} is itself an ensemble: list its members instead ({inner}), so that each "
            "counts once"
        )
    load_classifier(run)
    return read_config(run)


def check_distinct(runs: list[Path], save_ids: list[str | None]) -> None:
    seen: dict[str, Path] = {}
    for run, save_id in zip(runs, save_ids, strict=True):
        key = save_id or str(run.resolve())  # a copy of a run has its save id
        if key in seen:
            raise GptclfError(
                f"{seen[key]} and {run} are the same checkpoint: an ensemble's members differ"
            )
        seen[key] = run


def check_compatible(names: list[str], infos: list[ClassifierInfo]) -> None:
    """Every member single-label, or every one multi-label, all with the first's label names
    (in any order: columns are matched by name)."""
    first, kind = names[0], "multi-label" if infos[0].multi_label else "single-label"
    for name, info in zip(names[1:], infos[1:], strict=True):
        if info.multi_label != infos[0].multi_label:
            other = "multi-label" if info.multi_label else "single-label"
            raise GptclfError(
                f"{first} is {kind} and {name} is {other}: an ensemble's members are one kind"
            )
        if set(info.labels) != set(infos[0].labels):
            raise GptclfError(
                f"{first} and {name} have different labels ({first}: {infos[0].labels}; "
                f"{name}: {info.labels}): an ensemble's members are trained on the same labels"
            )


def warn_columns(runs: list[Path], infos: list[ClassifierInfo]) -> None:
    columns = [info.train_config.get("text_columns") for info in infos]
    if any(c != columns[0] for c in columns):
        said = "; ".join(f"{run}: {c}" for run, c in zip(runs, columns, strict=True))
        log.warning(
            "the members were trained on different text columns (%s); files are read with the "
            "first's (--text-column chooses others)",
            said,
        )


def copy_member(run: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name in MEMBER_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, folder / name)


# --- reading one -------------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    """ensemble.json, checked: format, version, rule, types, labels, member folders inside."""
    path = Path(directory) / ENSEMBLE_FILE
    data = read_json_object(path)
    if data.get("format") != FORMAT:
        raise GptclfError(f"{path}: not a gptclf ensemble (format {data.get('format')!r})")
    if data.get("version") != VERSION:
        raise GptclfError(
            f"{path}: ensemble format version {data.get('version')!r} is not supported (this "
            f"gptclf reads version {VERSION})"
        )
    check_keys(data, FIELDS, str(path))
    if data["rule"] != RULE:
        raise GptclfError(f"{path}: rule {data['rule']!r} is unknown (this gptclf reads {RULE})")
    check_labels(data, str(path))
    if len(data["members"]) < 2:
        raise GptclfError(f"{path}: {len(data['members'])} members; an ensemble has at least 2")
    for i, member in enumerate(data["members"]):
        where = f"{path}: members[{i}]"
        check_keys(member, MEMBER_FIELDS, where)
        folder = PurePosixPath(member["path"])
        if folder.is_absolute() or ".." in folder.parts or not folder.parts:
            raise GptclfError(
                f"{where}.path must be a folder inside the ensemble, got {member['path']!r}"
            )
        if sorted(member["labels"]) != sorted(data["labels"]):
            raise GptclfError(f"{where}: labels {member['labels']} are not {data['labels']}")
    return data


def check_keys(data: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    """Every key of `fields` present with a value of its type, and no other key."""
    if unknown := sorted(set(data) - set(fields)):
        raise GptclfError(f"{where} has unknown keys {unknown}")
    for key, hint in fields.items():
        if key not in data:
            raise GptclfError(f"{where}: no {key!r}")
        check_type(data[key], hint, f"{where}.{key}")


def member_dirs(directory: Path) -> list[Path]:
    """The member folders ensemble.json lists, in order."""
    return [Path(directory) / m["path"] for m in read_manifest(directory)["members"]]


def load_ensemble(directory: Path, precision: str | None = None) -> Ensemble:
    """The ensemble in `directory`: ensemble.json checked, then every member by the checkpoint
    loader (`precision` applies to each), and each against what ensemble.json recorded."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    members = []
    for member in manifest["members"]:
        folder = directory / member["path"]
        info, save_id = read_config(folder)
        if save_id != member["save_id"] or info.labels != member["labels"]:
            raise GptclfError(
                f"{folder / CONFIG_FILE} is not the member {directory / ENSEMBLE_FILE} recorded "
                "(a member folder replaced or edited): make the ensemble again"
            )
        if info.multi_label != manifest["multi_label"]:
            raise GptclfError(
                f"{folder / CONFIG_FILE}: multi_label is {info.multi_label}, but "
                f"{directory / ENSEMBLE_FILE} says {manifest['multi_label']}"
            )
        members.append(Classifier(*load_classifier(folder), directory=folder, precision=precision))
    return Ensemble(members, manifest["labels"], directory)


# --- using one ---------------------------------------------------------------------------------


class Ensemble(Classifier):
    """Classifiers trained on the same labels as one `Classifier`: each text's probabilities are
    the mean of the members' (see the module doc). `labels`, the table columns, the label
    separator and the training data of `evaluate` without data are the first member's;
    multi-label thresholds are the mean of the members'."""

    def __init__(self, members: list[Classifier], labels: list[str], directory: Path | None = None):
        # Not Classifier.__init__: an ensemble has no model or tokenizer of its own.
        if len(members) < 2:
            raise GptclfError(f"an ensemble has at least 2 members, got {len(members)}")
        check_compatible([str(m.directory) for m in members], [m.info for m in members])
        if sorted(labels) != sorted(members[0].labels):
            raise GptclfError(f"labels {labels} are not the members' {members[0].labels}")
        self.members = members
        # member i's probability columns in the order of `labels`
        self.columns = [[m.labels.index(name) for name in labels] for m in members]
        thresholds = None
        if members[0].multi_label:
            aligned = [[m.thresholds[c] for c in cols] for m, cols in self.aligned()]
            thresholds = np.mean(aligned, axis=0).tolist()
        self.info = dataclasses.replace(members[0].info, labels=list(labels), thresholds=thresholds)
        self.directory = directory
        self.model = self.tokenizer = None
        precisions = {m.precision for m in members}
        self.precision = precisions.pop() if len(precisions) == 1 else "mixed"

    def aligned(self) -> list[tuple[Classifier, list[int]]]:
        return list(zip(self.members, self.columns, strict=True))

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """(N, labels) float64: the mean of the members' probabilities, columns matched by name."""
        total = None
        for member, columns in self.aligned():
            probs = member.predict_proba(texts, batch_size).double()[:, columns]
            total = probs if total is None else total + probs
        return total / len(self.members)

    def _logits(self, texts: list[str], batch_size: int) -> torch.Tensor:
        # What evaluate scores: logits whose softmax (multi-label: sigmoid) is the mean.
        probs = self.predict_proba(texts, batch_size)
        if self.multi_label:
            probs = probs.clamp(TINY, 1 - TINY)
            return probs.log() - (-probs).log1p()
        return probs.clamp_min(TINY).log()

    def training_splits(
        self, *, encoding: str | None = None, delimiter: str | None = None
    ) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
        """The splits every member was trained on. Members trained on different splits (other
        data, or the book split of another seed) would score texts some of them trained on:
        an error pointing to --data."""
        options = {"encoding": encoding, "delimiter": delimiter}
        splits = [member.training_splits(**options) for member in self.members]
        for member, theirs in zip(self.members[1:], splits[1:], strict=True):
            if any(a.texts != b.texts for a, b in zip(splits[0], theirs, strict=True)):
                raise GptclfError(
                    f"{self.members[0].directory} and {member.directory} were trained on "
                    "different splits (other data, or another --seed or --split-seed): "
                    "evaluate the ensemble with --data FILE, texts none of its members trained on"
                )
        return splits[0]

    def model_card(self) -> dict[str, Any]:
        """/info's model: each member's card, and their common values (differing ones joined
        by " / ") where the page shows one classifier's."""
        cards = [m.model_card() for m in self.members]

        def joined(key: str) -> Any:
            values = [card[key] for card in cards]
            same = all(v == values[0] for v in values)
            return values[0] if same else " / ".join(str(v) for v in values)

        names = [card["base"].get("name") or card["train_model"] or "?" for card in cards]
        return {
            "base": {"name": f"ensemble of {len(cards)}: {' + '.join(map(str, names))}"},
            "train_model": joined("train_model"),
            "pool": joined("pool"),
            "max_length": joined("max_length"),
            "truncation": joined("truncation"),
            "trainable": joined("trainable"),
            "ensemble": {"rule": RULE, "members": cards},
        }
