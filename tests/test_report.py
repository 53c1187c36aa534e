"""report.py: the PNGs and report.md of a run, from metrics and test probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gptclf.metrics import logit_metrics
from gptclf.run_report import PLOTS, curve, write_report


def fake_run(num_classes: int, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"class {i}" for i in range(num_classes)]
    labels = rng.integers(0, num_classes, n).tolist()
    logits = rng.normal(size=(n, num_classes)) + 2 * np.eye(num_classes)[labels]
    split = logit_metrics(logits, labels, names)
    steps = [(8 * (i + 1), 1 / (i + 1), min(1.0, i / 20)) for i in range(30)]
    history = [
        {
            "epoch": e,
            "examples_seen": 80 * e,
            "train_loss": 1 / e,
            "train_accuracy": 0.5 + e / 10,
            "validation_loss": 1.2 / e,
            "validation_accuracy": 0.4 + e / 10,
        }
        for e in (1, 2, 3)
    ]
    metrics = {
        "train": split,
        "validation": split,
        "test": split,
        "labels": names,
        "history": history,
        "train_curve": curve(steps),
        "best_epoch": 3,
        "truncated": {"train": 2, "validation": 0, "test": 1},
    }
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return metrics, labels, probs


@pytest.mark.parametrize("num_classes", [2, 12])
def test_write_report(tmp_path: Path, num_classes: int) -> None:
    metrics, labels, probs = fake_run(num_classes)
    written = write_report(tmp_path, metrics, labels, probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*PLOTS, "report.md"])
    assert [p.name for p in written] == [*PLOTS, "report.md"]
    for name in PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    report = (tmp_path / "report.md").read_text()
    for name in PLOTS:
        assert f"({name})" in report
    assert "| test | 60 |" in report and "| class 1 |" in report
    assert "| train | 60 | " in report and report.rstrip().endswith("`metrics.json`.")


def test_report_with_a_class_missing_from_test(tmp_path: Path) -> None:
    metrics, labels, probs = fake_run(3)
    labels = [0 if y == 2 else y for y in labels]  # no class 2 in the test set: no curve for it
    write_report(tmp_path, metrics, labels, probs)
    assert (tmp_path / "roc.png").stat().st_size > 10_000


def test_curve_downsamples_by_window_means() -> None:
    steps = [(i + 1, float(i), 1.0) for i in range(1000)]
    c = curve(steps, max_points=10)
    assert c["examples_seen"] == list(range(100, 1001, 100))
    assert c["loss"][0] == pytest.approx(49.5) and len(c["accuracy"]) == 10
    assert curve(steps[:3])["loss"] == [0.0, 1.0, 2.0]
    assert curve([]) == {"examples_seen": [], "loss": [], "accuracy": []}
