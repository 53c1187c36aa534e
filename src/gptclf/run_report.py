"""A training run's report: PNG plots and a short ``report.md`` linking them, in the run directory.

    loss.png              train loss (per batch, smoothed) and per-epoch train/validation loss
    accuracy.png          the same for accuracy (train accuracy is measured in training mode)
    confusion_matrix.png  test set, counts, coloured by the share of each true class
    roc.png, pr.png       test set ROC and precision-recall curves (one-vs-rest per class)

A multi-label run (``metrics["multi_label"]``) has no confusion matrix (its labels are not
exclusive: report.md lists each label's counts instead); its ROC and PR curves are per label,
its accuracy is subset accuracy (every label of a text right).

Everything is drawn from ``metrics.json`` plus the test labels and probabilities. Figures are
made without pyplot (no global state, no display backend), so training from a thread is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gptclf.fileio import atomic_write
from gptclf.metrics import pr_curve, roc_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOTS = ("loss.png", "accuracy.png", "confusion_matrix.png", "roc.png", "pr.png")
MULTILABEL_PLOTS = ("loss.png", "accuracy.png", "roc.png", "pr.png")
MAX_CURVE_POINTS = 500
MAX_CURVE_CLASSES = 10  # ROC/PR: one curve per class, for the first this many classes


def curve(steps: Sequence[tuple[int, float, float]], max_points: int = MAX_CURVE_POINTS) -> dict:
    """Per-batch ``(examples seen, loss, accuracy)`` as lists, averaged over equal windows so at
    most ``max_points`` remain (metrics.json stays small on long runs)."""
    if not steps:
        return {"examples_seen": [], "loss": [], "accuracy": []}
    arr = np.asarray(steps, dtype=np.float64)
    windows = np.array_split(arr, min(max_points, len(arr)))
    seen = [int(w[-1, 0]) for w in windows]
    return {
        "examples_seen": seen,
        "loss": [float(w[:, 1].mean()) for w in windows],
        "accuracy": [float(w[:, 2].mean()) for w in windows],
    }


def write_report(
    out: Path, metrics: dict[str, Any], test_labels: Sequence[int], test_probs: np.ndarray
) -> list[Path]:
    """Write the plots and ``report.md`` into ``out``; returns their paths.

    ``test_labels``: class indices, or (multi-label) the (N, L) 0/1 targets."""
    out = Path(out)
    names = metrics["labels"]
    if metrics.get("multi_label"):
        return write_multilabel_report(out, metrics, np.asarray(test_labels), test_probs)
    written = [
        _save(_curves_figure(metrics, "loss"), out / "loss.png"),
        _save(_curves_figure(metrics, "accuracy"), out / "accuracy.png"),
        _save(
            _confusion_figure(metrics["test"]["confusion_matrix"], names),
            out / "confusion_matrix.png",
        ),
        _save(_rate_figure(test_labels, test_probs, names, "roc"), out / "roc.png"),
        _save(_rate_figure(test_labels, test_probs, names, "pr"), out / "pr.png"),
    ]
    report = out / "report.md"
    atomic_write(report, lambda tmp: tmp.write_text(markdown(metrics), encoding="utf-8"))
    log.info("report: %s", report)
    return [*written, report]


def baseline_lines(metrics: dict[str, Any]) -> list[str]:
    """The TF-IDF baseline's accuracy per split and the verdict on validation (if it ran)."""
    if "baseline" not in metrics["validation"]:
        return []
    from gptclf.baseline import verdict

    base = {name: metrics[name]["baseline"] for name in ("train", "validation", "test")}
    _, line = verdict(metrics["validation"]["accuracy"], base["validation"]["accuracy"])
    cells = ", ".join(f"{name} {_fmt(b['accuracy'])}" for name, b in base.items())
    return [
        "",
        f"Baseline, {base['test']['name']} (C = {base['test']['C']:g}, fitted in "
        f"{metrics.get('baseline_seconds', 0):.1f} s), accuracy: {cells}. The model {line}.",
    ]


def write_multilabel_report(
    out: Path, metrics: dict[str, Any], targets: np.ndarray, test_probs: np.ndarray
) -> list[Path]:
    names = metrics["labels"]
    written = [
        _save(_curves_figure(metrics, "loss"), out / "loss.png"),
        _save(_curves_figure(metrics, "accuracy"), out / "accuracy.png"),
        _save(_rate_figure(targets, test_probs, names, "roc", multi_label=True), out / "roc.png"),
        _save(_rate_figure(targets, test_probs, names, "pr", multi_label=True), out / "pr.png"),
    ]
    report = out / "report.md"
    text = multilabel_markdown(metrics)
    atomic_write(report, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    log.info("report: %s", report)
    return [*written, report]


def multilabel_markdown(metrics: dict[str, Any]) -> str:
    """report.md of a multi-label run: summary per split, per-label test table, the plots."""
    cfg = metrics.get("config", {}).get("train_config", {})
    lines = [
        "# Training report (multi-label)",
        "",
        f"Model `{cfg.get('model', '?')}` ({cfg.get('weights', '?')} weights), data "
        f"`{cfg.get('data', '?')}`, labels: {', '.join(f'`{n}`' for n in metrics['labels'])}. "
        f"Best epoch {metrics.get('best_epoch')} of {len(metrics.get('history', []))} by "
        f"validation micro-F1; trained in {metrics.get('train_seconds', 0):.1f} s. Subset "
        "accuracy: every label of a text right.",
        "",
        "| split | n | subset accuracy | micro F1 | macro F1 | Hamming loss | ROC-AUC | loss "
        "| truncated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    truncated = metrics.get("truncated", {})
    for name in ("train", "validation", "test"):
        m = metrics[name]
        keys = ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss", "roc_auc", "loss")
        cells = [name, str(m["n"]), *(_fmt(m.get(k)) for k in keys)]
        lines.append("| " + " | ".join([*cells, str(truncated.get(name, "-"))]) + " |")
    thresholds = metrics.get("thresholds") or {}
    lines += [
        "",
        "Test set, per label (a label is predicted where its probability reaches its threshold;"
        " confusion matrices do not apply: labels are not exclusive):",
        "",
        "| label | support | predicted | threshold | precision | recall | F1 | ROC-AUC | PR-AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["test"]["per_label"].items():
        cells = [m["precision"], m["recall"], m["f1"], m.get("roc_auc"), m.get("pr_auc")]
        head = f"| {name} | {m['support']} | {m['predicted']} | {_fmt(thresholds.get(name))} | "
        lines.append(head + " | ".join(map(_fmt, cells)) + " |")
    lines += [
        "",
        "![loss](loss.png) ![subset accuracy](accuracy.png)",
        "",
        "![ROC per label (test)](roc.png) ![precision-recall per label (test)](pr.png)",
        "",
        "All numbers: `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def markdown(metrics: dict[str, Any]) -> str:
    """The text of ``report.md``: summary table, per-class test table, the plots."""
    cfg = metrics.get("config", {}).get("train_config", {})
    splits = ("train", "validation", "test")
    lines = [
        "# Training report",
        "",
        f"Model `{cfg.get('model', '?')}` ({cfg.get('weights', '?')} weights), data "
        f"`{cfg.get('data', '?')}`, labels: {', '.join(f'`{n}`' for n in metrics['labels'])}. "
        f"Best epoch {metrics.get('best_epoch')} of {len(metrics.get('history', []))} by "
        f"validation accuracy; trained in {metrics.get('train_seconds', 0):.1f} s.",
        "",
        "| split | n | accuracy | balanced accuracy | macro F1 | ROC-AUC | PR-AUC | loss | truncated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    truncated = metrics.get("truncated", {})
    for name in splits:
        m = metrics[name]
        cells = [m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["roc_auc"], m["pr_auc"]]
        row = [
            name,
            str(m["n"]),
            *map(_fmt, cells),
            _fmt(m.get("loss")),
            str(truncated.get(name, "-")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += baseline_lines(metrics)
    lines += [
        "",
        "Test set, per class:",
        "",
        "| class | support | precision | recall | F1 | ROC-AUC | PR-AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in metrics["test"]["per_class"].items():
        cells = [m["precision"], m["recall"], m["f1"], m.get("roc_auc"), m.get("pr_auc")]
        lines.append(f"| {name} | {m['support']} | " + " | ".join(map(_fmt, cells)) + " |")
    lines += [
        "",
        "![loss](loss.png) ![accuracy](accuracy.png)",
        "",
        "![confusion matrix (test)](confusion_matrix.png)",
        "",
        "![ROC (test)](roc.png) ![precision-recall (test)](pr.png)",
        "",
        "All numbers: `metrics.json`.",
        "",
    ]
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "–" if x is None or x != x else f"{x:.3f}"


def _figure(width: float = 5.5, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def _curves_figure(metrics: dict[str, Any], what: str) -> Figure:
    """Train curve per batch (light), per-epoch train and validation values (markers)."""
    fig = _figure()
    ax = fig.add_subplot()
    steps = metrics.get("train_curve") or {}
    history = metrics.get("history", [])
    if steps.get("examples_seen"):
        x, v = np.asarray(steps["examples_seen"]), np.asarray(steps[what])
        ax.plot(x, v, color="tab:blue", alpha=0.2, lw=1, label=f"train {what} (per batch)")
        k = max(1, len(v) // 10)  # moving average over a tenth of the run
        if k > 1:
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1 :], smooth, color="tab:blue", lw=1.5, label="train (moving average)")
    seen = [h["examples_seen"] for h in history]
    for split, color in (("train", "tab:blue"), ("validation", "tab:orange")):
        key = f"{split}_{what}"
        if history and key in history[0]:
            ax.plot(seen, [h[key] for h in history], "o-", color=color, label=f"{split} (epoch)")
    ax.set_xlabel("examples seen")
    ax.set_ylabel(what)
    if what == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{what.capitalize()} during training")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def _confusion_figure(confusion: list[list[int]], names: list[str]) -> Figure:
    matrix = np.asarray(confusion, dtype=np.int64)
    k = len(names)
    size = max(4.0, min(0.6 * k + 2.5, 14.0))
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)  # rows sum to 1
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    if k <= 30:
        font = "medium" if k <= 8 else "x-small"
        for i in range(k):
            for j in range(k):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(
                    j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=font
                )
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"Confusion matrix (test, n={int(matrix.sum())})")
    return fig


def _rate_figure(
    labels: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    names: list[str],
    kind: str,
    multi_label: bool = False,
) -> Figure:
    """ROC (kind="roc") or precision-recall ("pr") curves on the test set; ``multi_label``:
    ``labels`` are (N, L) 0/1 targets, one curve per label."""
    fig = _figure()
    ax = fig.add_subplot()
    y = np.asarray(labels)
    probs = np.asarray(probs)
    binary = len(names) == 2 and not multi_label
    classes = [1] if binary else range(len(names))[:MAX_CURVE_CLASSES]
    drawn = 0
    for c in classes:
        positive = y[:, c].astype(bool) if multi_label else y == c
        points = (roc_curve if kind == "roc" else pr_curve)(positive, probs[:, c])
        if points is None:
            continue  # undefined: the class is absent from (or is all of) the test set
        x, v = points
        if kind == "roc":
            area = float(np.sum(np.diff(x) * (v[1:] + v[:-1]) / 2))
            ax.plot(x, v, lw=1.5, label=f"{names[c]} (AUC {area:.3f})")
        else:
            area = float(np.sum(np.diff(np.r_[0.0, x]) * v))
            ax.step(
                np.r_[0.0, x],
                np.r_[v[0], v],
                where="pre",
                lw=1.5,
                label=f"{names[c]} (AP {area:.3f})",
            )
        drawn += 1
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        title = "ROC curve" if binary else "ROC curves (one-vs-rest)"
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        title = "Precision-recall curve" if binary else "Precision-recall (one-vs-rest)"
    if multi_label:
        title = ("ROC curves" if kind == "roc" else "Precision-recall") + " per label"
    if len(names) > MAX_CURVE_CLASSES:
        title += (
            f", first {MAX_CURVE_CLASSES} of {len(names)} {'labels' if multi_label else 'classes'}"
        )
    ax.set_title(f"{title}, test set")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if drawn == 0:
        note = (
            "undefined: no label has both positives and negatives"
            if multi_label
            else "undefined: the test set lacks a class"
        )
        ax.text(0.5, 0.5, note, ha="center", va="center")
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
    return fig
