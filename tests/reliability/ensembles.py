"""Inputs for ensembles.toml: a second member beside the tiny classifier `run` (a random
Llama-tiny on the same labels, or on other ones, or multi-label), an ensemble of the two, and
damages to that ensemble; `check(tmp, output)` asserts what the command left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures_checkpoint import write_tiny_checkpoint

REVIEW_LABELS = ["positive", "negative", "neutral"]  # the tiny classifier's, in another order
TRAIN = {"text_columns": ["headline", "review_body"], "label_column": "sentiment"}


def second_member(tmp: Path, run: Path) -> None:
    write_tiny_checkpoint(tmp / "other", labels=REVIEW_LABELS, train_config=TRAIN)


def other_labels(tmp: Path, run: Path) -> None:
    write_tiny_checkpoint(tmp / "other", labels=["ham", "spam", "other"], train_config=TRAIN)


def multi_label_member(tmp: Path, run: Path) -> None:
    write_tiny_checkpoint(
        tmp / "other", labels=REVIEW_LABELS, multi_label=True, thresholds=[0.5] * 3
    )


def an_ensemble(tmp: Path, run: Path) -> None:
    """tmp/ens: the tiny classifier and a Llama-tiny (tmp/other)."""
    from gptclf.ensemble import create_ensemble

    second_member(tmp, run)
    create_ensemble([run, tmp / "other"], tmp / "ens")


def member_replaced(tmp: Path, run: Path) -> None:
    """tmp/ens/members/1 replaced by hand with another save of a classifier."""
    an_ensemble(tmp, run)
    shutil.rmtree(tmp / "ens" / "members" / "1")
    write_tiny_checkpoint(tmp / "ens" / "members" / "1", seed=5, labels=REVIEW_LABELS)


def path_outside(tmp: Path, run: Path) -> None:
    """ensemble.json edited so that a member lies outside the ensemble's folder."""
    an_ensemble(tmp, run)
    path = tmp / "ens" / "ensemble.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["members"][1]["path"] = "../other"
    path.write_text(json.dumps(manifest), encoding="utf-8")


def manifest_truncated(tmp: Path, run: Path) -> None:
    an_ensemble(tmp, run)
    path = tmp / "ens" / "ensemble.json"
    path.write_bytes(path.read_bytes()[:40])


def member_weights_missing(tmp: Path, run: Path) -> None:
    an_ensemble(tmp, run)
    (tmp / "ens" / "members" / "0" / "model.safetensors").unlink()


def replaced_whole(tmp: Path, output: str) -> None:
    """--overwrite: the new ensemble, with its members, and no staging folder left over."""
    manifest = json.loads((tmp / "ens" / "ensemble.json").read_text(encoding="utf-8"))
    assert [m["path"] for m in manifest["members"]] == ["members/0", "members/1"]
    assert json.loads(output)["out"] == str(tmp / "ens")
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".ens.")]


def nothing_written(tmp: Path, output: str) -> None:
    assert not (tmp / "ens").exists()
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".ens.")]
