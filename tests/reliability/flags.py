"""Input builders and checks for flags.toml."""

from __future__ import annotations

import json
from pathlib import Path

PLOTS = ("loss.png", "accuracy.png", "confusion_matrix.png", "roc.png", "pr.png")


def a_file(tmp: Path, run: Path) -> None:
    (tmp / "afile").write_text("not a directory\n")


def empty_dir(tmp: Path, run: Path) -> None:
    (tmp / "empty").mkdir()


def interrupted_run(tmp: Path, run: Path) -> None:
    """What `kill -9` leaves before the first epoch ends: only the training state."""
    (tmp / "killed").mkdir()
    (tmp / "killed" / "train_state.safetensors").write_bytes(b"a saved state")


def nothing_written(tmp: Path, output: str) -> None:
    assert not (tmp / "run").exists()


def one_step_per_epoch(tmp: Path, output: str) -> None:
    """The batch is the whole training split: two epochs of one step each, on all 63 texts."""
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    assert len(metrics["train_curve"]["examples_seen"]) == 2, metrics["train_curve"]
    assert metrics["train_curve"]["examples_seen"][-1] == 2 * 63


def run_untouched(tmp: Path, output: str) -> None:
    run = tmp / "run_copy"
    assert (run / "report.md").is_file() and all((run / p).is_file() for p in PLOTS)
    assert json.loads((run / "metrics.json").read_text())["config"]["train_config"]["report"]


def replaced_whole(tmp: Path, output: str) -> None:
    """Only the new run's files: its checkpoint and metrics, none of the old report."""
    run = tmp / "run_copy"
    names = sorted(p.name for p in run.iterdir())
    assert names == [
        "config.json", "metrics.json", "model.safetensors", "tokenizer.json", "tokenizer_meta.json"
    ], names  # fmt: skip
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 1


def trained_into_empty(tmp: Path, output: str) -> None:
    assert (tmp / "empty" / "metrics.json").is_file()
    assert (tmp / "empty" / "model.safetensors").is_file()
