"""`docs/RESULTS.md` and its bar charts, generated from the cached results only.

Per question: a table (mean ± sample standard deviation over seeds of test accuracy, F1 and train
time; trainable parameters; seeds; the book's number beside ours), a few sentences templated from
those numbers (for a search, its pick by validation accuracy), and a PNG bar chart with error
bars (matplotlib, no pyplot; the depth question's plots accuracy and train time against the
blocks kept). Rows without results say "not run yet". Nothing here is typed in: edit the runs, not the document.
"""

from __future__ import annotations

import json
import logging
import statistics
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptclf.data import (
    load_dataset,
    normalized_text,
    resolve_split,
    split_book,
    splits_from_config,
)
from gptclf.experiments.audit import observation
from gptclf.experiments.configs import (
    BASELINE_QUESTION,
    EXPERIMENTS,
    FACTORS,
    QUESTIONS,
    REFERENCE,
    Experiment,
    Question,
)
from gptclf.experiments.cv_rows import load_cv_results
from gptclf.experiments.records import split_key, train_seconds, unseen_test_texts
from gptclf.experiments.runner import default_results_dir, load_results, repo_root
from gptclf.fileio import atomic_write
from gptclf.metrics import unseen_accuracy
from gptclf.train_config import TrainConfig

log = logging.getLogger(__name__)
_DEFAULTS = TrainConfig()

REGENERATE = "gptclf experiments run --all --seeds 123,124,125 && gptclf experiments report"


def default_out() -> Path:
    return (repo_root() or Path.cwd()) / "docs" / "RESULTS.md"


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt_pm(mean: float, std: float | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_params(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


@dataclass
class Row:
    """One table row: an experiment and the statistics of its cached results."""

    exp: Experiment
    records: list[dict[str, Any]] = field(default_factory=list)
    reference: bool = False  # shown for comparison, belongs to another question
    cv: list[dict[str, Any]] = field(default_factory=list)  # its `--cv` records, one per seed

    @property
    def cv_acc(self) -> float | None:
        """Pooled out-of-fold accuracy (%), mean over its CV seeds: what rows are chosen by."""
        return statistics.fmean(100 * r["pooled"]["accuracy"] for r in self.cv) if self.cv else None

    @property
    def cv_rank(self) -> tuple[float, float]:
        """How rows are ordered by cross-validation: the higher `cv_acc` first, ties (to 1e-9)
        to the lower pooled out-of-fold loss (mean over CV seeds), as validation ties go."""
        loss = statistics.fmean(r["pooled"].get("loss", float("inf")) for r in self.cv)
        return -round(self.cv_acc, 9), loss

    def cv_cell(self) -> str:
        if not self.cv:
            return "—"
        return fmt_pm(*mean_std([100 * r["pooled"]["accuracy"] for r in self.cv]))

    @property
    def n(self) -> int:
        return len(self.records)

    def stat(self, key: str, scale: float = 1.0) -> tuple[float, float | None]:
        if key == "train_seconds":
            return mean_std([scale * train_seconds(r) for r in self.records])
        return mean_std([scale * r[key] for r in self.records])

    def unseen(self) -> str:
        """Mean ± std of the duplicate-aware test accuracy (%), or "—" where a run lacks it."""
        values = [unseen_accuracy_of(r) for r in self.records]
        if any(v is None for v in values):
            return "—"
        return fmt_pm(*mean_std([100 * v for v in values]))

    @property
    def acc(self) -> float:
        return self.stat("test_accuracy", 100)[0]

    @property
    def acc_std(self) -> float | None:
        return self.stat("test_accuracy", 100)[1]

    @property
    def seconds(self) -> float:
        return self.stat("train_seconds")[0]

    @property
    def params(self) -> int:
        return self.records[0]["trainable_params"]

    @property
    def machine(self) -> str | None:
        """The hardware summary its runs share (None if they ran on several machines)."""
        found = {r["hardware"]["summary"] for r in self.records}
        return found.pop() if len(found) == 1 else None


def unseen_accuracy_of(record: dict[str, Any]) -> float | None:
    """A run's accuracy on the test texts with no copy in its training split: as the run
    recorded it (`metrics.test.unseen_accuracy`), else from its recorded test mistakes and its
    split, rebuilt from its config (the same number: runs made before it was recorded)."""
    test = record["metrics"]["test"]
    if "unseen_accuracy" in test:
        return test["unseen_accuracy"]
    if "misclassified" not in test:
        return None
    unseen = unseen_test_texts(split_key(record["config"]["train_config"]))
    return unseen_accuracy(test["misclassified"], list(unseen))["unseen_accuracy"]


def why_not_run(exp: Experiment) -> str | None:
    """Why a row without results cannot run everywhere, the same on every machine (what this
    machine has is not part of the report: it regenerates byte for byte anywhere)."""
    from gptclf.weights.registry import KNOWN_MODELS

    if exp.gpu_only:
        return f"needs a GPU: {exp.gpu_only}"
    model = KNOWN_MODELS.get(exp.overrides.get("model", ""))
    hub = model is not None and model.hf_repo and not (model.gguf or model.archive)
    if exp.method == "fit" and exp.overrides.get("weights") == "pretrained" and hub:
        return f"its weights download from the Hugging Face hub: `gptclf download {model.name}`"
    return None


def setting(exp: Experiment, experiments: dict[str, Experiment]) -> str:
    """What differs from the reference row, as `factor=value` pairs."""
    if exp.method != "fit":
        return exp.note
    reference = experiments.get(REFERENCE)
    if reference is None or exp.name == REFERENCE:
        return "reference" if exp.name == REFERENCE else ""
    parts = []
    # FACTORS, then any other TrainConfig field a row sets (e.g. bucket)
    extra = [k for k in exp.overrides if k not in FACTORS]
    for key in (*FACTORS, *extra):
        value = exp.overrides.get(key)
        if value == reference.overrides.get(key, getattr(_DEFAULTS, key, None)):
            continue
        if key == "causal":
            parts.append("causal mask" if value else "no causal mask")
        elif key == "prompt":  # one table cell: newlines and pipes escaped
            shown = str(value).replace("\n", "\\n").replace("|", "\\|")
            parts.append(f"prompt `{shown}`")
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def table(
    rows: list[Row], experiments: dict[str, Experiment], reasons: dict[str, str | None]
) -> list[str]:
    lines = [
        "| row | setting | CV acc % | test accuracy % | unseen % | test F1 % | train s "
        "| trainable params | seeds | book % | book's row |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        exp = row.exp
        role = "baseline" if exp.question == BASELINE_QUESTION else "reference"
        name = f"{exp.label} (`{exp.name}`)" + (f" · {role}" if row.reference else "")
        book = [exp.book or "–", exp.book_row or "–"]
        if not row.n:
            reason = reasons.get(exp.name)
            status = "not run yet" + (f" ({reason})" if reason else "")
            lines.append(
                f"| {name} | {setting(exp, experiments)} | {row.cv_cell()} | {status} | | | | | 0 | "
                + " | ".join(book)
                + " |"
            )
            continue
        cells = [
            fmt_pm(*row.stat("test_accuracy", 100)),
            row.unseen(),
            fmt_pm(*row.stat("test_f1", 100)),
            fmt_pm(*row.stat("train_seconds"), digits=1),
            fmt_params(row.params),
            str(row.n),
        ]
        cells = [row.cv_cell(), *cells]
        lines.append(f"| {name} | {setting(exp, experiments)} | " + " | ".join(cells + book) + " |")
    machines = dict.fromkeys(r["hardware"]["summary"] for row in rows for r in row.records)
    if len(machines) > 1:
        groups = {m: [row for row in rows if row.n and row.machine == m] for m in machines}
        groups["several machines"] = [row for row in rows if row.n and row.machine is None]
        where = "; ".join(
            f"{m}: " + ", ".join(f"`{row.exp.name}`" for row in group)
            for m, group in groups.items()
            if group
        )
        lines += ["", f"Train s compares only within a machine. Runs here: {where}."]
    return lines


def answer(rows: list[Row], baseline: Row | None) -> list[str]:
    """Plain sentences from the numbers: which row is best and by how much, whether the gap
    exceeds the seed-to-seed spread and holds text by text (`paired_test`), what it costs; then
    the book and the baseline beside it."""
    ran = sorted((r for r in rows if r.n), key=lambda r: -r.acc)
    if len(ran) < 2:
        return [f"Not enough rows have results yet to answer this ({len(ran)} of {len(rows)} run)."]
    best, second = ran[0], ran[1]
    gap = best.acc - second.acc
    if gap < 0.005:
        out = [
            f"on the test split (described, not used to choose), {best.exp.label} and "
            f"{second.exp.label} tie for first at {best.acc:.2f}% test accuracy."
        ]
    else:
        out = [
            f"on the test split (described, not used to choose), {best.exp.label} is best at "
            f"{best.acc:.2f}% test accuracy, {gap:.2f} points above {second.exp.label} "
            f"({second.acc:.2f}%)."
        ]
    stds = [s for s in (best.acc_std, second.acc_std) if s is not None]
    if len(stds) < 2:
        out.append("One of them has a single seed, so there is no spread yet to judge that gap by.")
    elif gap > max(stds):
        out.append(
            f"That gap is larger than either row's standard deviation over seeds (at most "
            f"{max(stds):.2f} points)."
        )
    else:
        out.append(
            f"That gap is within the standard deviation over seeds (up to {max(stds):.2f} "
            f"points): with {min(best.n, second.n)} seeds the two are not distinguishable."
        )
    out += paired_sentence(best, second)
    out += cost_sentences(best, ran)
    out += beside_sentences(best, ran, baseline)
    return [s[0].upper() + s[1:] for s in out]


CV_RULE = (
    "the highest pooled out-of-fold accuracy of stratified 5-fold cross-validation over the "
    "1,194 train + validation texts (mean over CV seeds; every row on the same folds; ties "
    "broken by the lower pooled out-of-fold loss), the test split unread"
)


def cv_able(exp: Experiment) -> bool:
    """Whether `experiments run --cv` can score the row here and everywhere (rows that train
    no network are not cross-validated yet; rows that cannot run anywhere are not named)."""
    return exp.method in ("fit", "tfidf", "ensemble") and why_not_run(exp) is None


def tie_break(best: Row, second: Row) -> str:
    """', lower in out-of-fold loss (a vs b)' where the two rows' CV accuracy is the same."""
    if best.cv_rank[0] != second.cv_rank[0]:
        return ""
    return f", lower in out-of-fold loss: {best.cv_rank[1]:.4f} vs {second.cv_rank[1]:.4f}"


def cv_choice(rows: list[Row]) -> list[str]:
    """Each question's winner, chosen by cross-validation only; its test accuracy after."""
    scored = sorted((r for r in rows if r.cv), key=lambda r: r.cv_rank)
    names = " ".join(r.exp.name for r in rows if not r.cv and not r.reference and cv_able(r.exp))
    if len(scored) < 2:
        return [
            f"Chosen by cross-validation: not yet ({len(scored)} of these rows "
            f"{'has' if len(scored) == 1 else 'have'} a CV score"
            + (f"; `gptclf experiments run {names} --cv` adds them)." if names else ").")
        ]
    best, second = scored[0], scored[1]
    test = f"{fmt_pm(best.acc, best.acc_std)}% over {best.n} seeds" if best.n else "not run yet"
    tie = best.cv_rank[0] == second.cv_rank[0]  # the rule's tie: the same accuracy to 1e-9
    out = [
        f"Chosen by cross-validation ({CV_RULE}): {best.exp.label} (`{best.exp.name}`), "
        f"{best.cv_cell()}%, {'tied with' if tie else 'ahead of'} {second.exp.label} "
        f"({second.cv_cell()}%{tie_break(best, second)}); its test accuracy, read after "
        f"choosing: {test}."
    ]
    if names:
        out.append(f"Without a CV score, not candidates: {', '.join(names.split())}.")
    return out


def paired_sentence(best: Row, second: Row) -> list[str]:
    """The text-by-text test of the best row against the runner-up, if both have results."""
    out = []
    tested = paired_test(best, second)
    if tested is not None:
        ahead, behind, p = tested
        verdict = "significant" if p < SIGNIFICANCE else "not significant"
        out.append(
            f"Text by text (the share of its seeds that get a text right), {best.exp.label} is "
            f"ahead on {ahead} and behind on {behind} of the "
            f"{best.records[0]['metrics']['test']['n']} test texts: an exact paired permutation "
            f"test gives p = {p:.2g}, {verdict} at the {SIGNIFICANCE:.0%} level."
        )
    return out


def cost_sentences(best: Row, ran: list[Row]) -> list[str]:
    """What the best row costs to train, against the fastest row run on the same machine."""
    out = []
    # Train times compare only between rows that ran on the same machine.
    timed = [r for r in ran if best.machine is not None and r.machine == best.machine]
    fastest = min(timed, key=lambda r: r.seconds) if timed else None
    if len(timed) < 2:
        out.append(
            f"It trains {fmt_params(best.params)} parameters in {best.seconds:.1f} s; the other "
            "rows ran on other machines, so their train times are not compared with it."
        )
    elif fastest is best:
        out.append(
            f"It is also the fastest to train ({best.seconds:.1f} s, "
            f"{fmt_params(best.params)} trainable parameters)."
        )
    else:
        out.append(
            f"It trains {fmt_params(best.params)} parameters in {best.seconds:.1f} s; the "
            f"fastest row, {fastest.exp.label}, takes {fastest.seconds:.1f} s "
            f"({fmt_params(fastest.params)} trainable parameters) for {fastest.acc:.2f}%."
        )
    if 2 <= len(timed) < len(ran):
        out.append(
            f"(Train times compared among the {len(timed)} rows run on the same machine as the "
            f"best; {len(ran) - len(timed)} ran elsewhere.)"
        )
    return out


def beside_sentences(best: Row, ran: list[Row], baseline: Row | None) -> list[str]:
    """The book's ranking of the same rows, and the TF-IDF baseline."""
    beside = []
    booked = [r for r in ran if r.exp.book_values()]
    if len(booked) >= 2:
        book_best = max(booked, key=lambda r: max(r.exp.book_values()))
        if book_best is booked[0]:
            beside.append(
                f"The book's GPT-2 table also ranks {book_best.exp.label} first of the "
                f"rows it has ({book_best.exp.book}%)."
            )
        else:
            beside.append(
                f"The book's GPT-2 table ranks {book_best.exp.label} first of the rows it "
                f"has ({book_best.exp.book}%); here {booked[0].exp.label} leads them."
            )
    if baseline is not None and baseline.n:
        d = best.acc - baseline.acc
        beside.append(
            f"The TF-IDF baseline reaches {baseline.acc:.2f}%, {abs(d):.2f} points "
            f"{'below' if d > 0 else 'above'} the best row here."
        )
    return beside


SIGNIFICANCE = 0.05


def validation(row: Row) -> tuple[float, float] | None:
    """Mean validation accuracy (%) and loss over the row's runs; None where a run lacks them."""
    runs = [(r.get("metrics") or {}).get("validation") for r in row.records]
    if not runs or not all(
        isinstance(v, dict)
        and all(isinstance(v.get(k), (int, float)) for k in ("accuracy", "loss"))
        for v in runs
    ):
        return None
    return statistics.fmean(100 * v["accuracy"] for v in runs), statistics.fmean(
        v["loss"] for v in runs
    )


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def choice(rows: list[Row], recipe: Experiment | None = None) -> list[str]:
    """A search's pick, made on validation only: the best mean validation accuracy over seeds,
    ties broken by the lower mean validation loss. Test accuracy is reported for the pick, never
    used to make it. `recipe`: the row the search chose a recipe for, compared on the factors
    the search varies."""
    rule = (
        "Selection is by validation accuracy (mean over seeds), ties broken by the lower mean "
        "validation loss; test accuracy is shown but never used to choose."
    )
    ranked = sorted(
        ((r, v) for r in rows if r.n and (v := validation(r)) is not None),
        key=lambda rv: (-round(rv[1][0], 9), rv[1][1]),  # equal accuracy up to float rounding
    )
    unranked = [r.exp.label for r in rows if r.n and validation(r) is None]
    left = sum(not r.n for r in rows)
    if not ranked:
        return [rule, f"No row of the search has results yet ({left} not run): nothing is chosen."]
    best, (acc, _) = ranked[0]
    tied = [r.exp.label for r, v in ranked[1:] if round(v[0], 9) == round(acc, 9)]
    out = [
        rule,
        "By that rule: "
        + "; ".join(
            f"{r.exp.label} {a:.2f}% (loss {loss:.4f}, {r.n} seed{'s' if r.n > 1 else ''})"
            for r, (a, loss) in ranked
        )
        + ".",
        f"The choice is {best.exp.label} (`{best.exp.name}`)"
        + (
            f", tied on validation accuracy with {', '.join(tied)} and lower in loss"
            if tied
            else ""
        )
        + f"; its test accuracy is {fmt_pm(best.acc, best.acc_std)}%.",
    ]
    n = (best.records[0].get("metrics") or {}).get("validation", {}).get("n")
    if isinstance(n, int) and n > 0:
        out.append(f"One of the {n} validation texts is {100 / n:.2f} points.")
    if unranked:
        out.append(f"Without validation metrics, not ranked: {', '.join(unranked)}.")
    if left:
        out.append(f"{left} of the {len(rows)} rows have no results yet: the choice may change.")
    varied = [f for f in FACTORS if len({repr(r.exp.overrides.get(f)) for r in rows}) > 1]
    if recipe is not None and varied:
        differ = [f for f in varied if recipe.overrides.get(f) != best.exp.overrides.get(f)]
        out.append(
            f"The `{recipe.name}` recipe differs from the choice in "
            + ", ".join(
                f"{f} ({_shown(recipe.overrides.get(f))}, the choice "
                f"{_shown(best.exp.overrides.get(f))})"
                for f in differ
            )
            + "."
            if differ
            else f"The `{recipe.name}` recipe has the choice's {', '.join(varied)}."
        )
    return out


def size_trend(rows: list[Row]) -> list[str]:
    """For rows that differ only in the model (same weights, same everything else): accuracy
    against total parameters, and whether it rises with size."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if row.n and not row.reference and "model" in row.exp.overrides:
            rest = {k: v for k, v in row.exp.overrides.items() if k != "model"}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(row)
    out = []
    for group in groups.values():
        if len({r.exp.overrides["model"] for r in group}) < 2:
            continue
        group.sort(key=lambda r: r.records[0]["total_params"])
        accs = [r.acc for r in group]
        listed = ", ".join(
            f"{r.exp.label} ({fmt_params(r.records[0]['total_params'])} parameters) "
            f"{fmt_pm(r.acc, r.acc_std)}%"
            for r in group
        )
        rises = all(b > a for a, b in zip(accs[:-1], accs[1:], strict=True))
        verb = "rises" if rises else "does not rise"
        out.append(
            f"By size, the rest of the settings the same: {listed}; accuracy {verb} with every "
            "step in size."
        )
    return out


def right_share(row: Row) -> np.ndarray | None:
    """Per test text, the share of the row's runs that got it right; None unless every run
    lists its test mistakes (`misclassified`) on the same test texts."""
    records = row.records
    if not records or any("misclassified" not in r["metrics"]["test"] for r in records):
        return None
    splits = {_test_split(r["config"]["train_config"]) for r in records}
    sizes = {r["metrics"]["test"]["n"] for r in records}
    if len(splits) > 1 or len(sizes) > 1:
        return None
    right = np.ones((len(records), sizes.pop()))
    for run, rec in zip(right, records, strict=True):
        run[rec["metrics"]["test"]["misclassified"]] = 0.0
    return right.mean(axis=0)


def paired_test(a: Row, b: Row) -> tuple[int, int, float] | None:
    """Exact paired permutation test of two rows on the same test texts. Each text's score is
    the share of a row's runs that got it right; the test statistic is the summed difference
    a - b over the texts, and under "neither row is better" each text's difference is as likely
    to have the other sign. The text is the unit, so it asks whether the gap would hold on other
    texts, not only on other seeds (with one run per row it is McNemar's exact test). Returns
    the number of texts where `a` is ahead, where behind, and the two-sided p-value; None where
    either row lacks per-text mistakes or the two tested on different texts."""
    shares = right_share(a), right_share(b)
    if shares[0] is None or shares[1] is None or len(shares[0]) != len(shares[1]):
        return None
    if _test_split(a.records[0]["config"]["train_config"]) != _test_split(
        b.records[0]["config"]["train_config"]
    ):
        return None
    # Differences in units of 1 / (runs of a x runs of b) are integers: the null distribution
    # of their sum is exact by convolution, one text at a time.
    diffs = np.rint((shares[0] - shares[1]) * a.n * b.n).astype(int)
    sizes = np.abs(diffs[diffs != 0])
    total = int(sizes.sum())
    null = np.zeros(2 * total + 1)
    null[total] = 1.0
    for size in sizes:  # partial sums stay within +-total, so the rolls never wrap
        null = 0.5 * (np.roll(null, size) + np.roll(null, -size))
    observed = abs(int(diffs.sum()))
    p = float(null[np.abs(np.arange(-total, total + 1)) >= observed].sum())
    return int(np.sum(diffs > 0)), int(np.sum(diffs < 0)), min(p, 1.0)


def chart(title: str, rows: list[Row], path: Path) -> Path | None:
    """Bar chart of test accuracy (mean, error bar = std over seeds), the book's number as a tick."""
    from matplotlib.figure import Figure

    ran = [r for r in rows if r.n]
    if not ran:
        path.unlink(missing_ok=True)  # no stale chart for a question with no results
        return None
    fig = Figure(figsize=(max(4.5, 1.0 * len(ran) + 2), 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(ran))
    means = np.array([r.acc for r in ran])
    errs = np.array([r.acc_std or 0.0 for r in ran])
    ax.bar(x, means, yerr=errs, capsize=4, color=[row_color(r) for r in ran])
    book = [(i, v) for i, r in enumerate(ran) for v in r.exp.book_values()]
    if book:
        ax.plot(
            [i for i, _ in book],
            [v for _, v in book],
            "_",
            color="black",
            markersize=22,
            markeredgewidth=2,
            label="book (GPT-2)",
        )
        ax.legend(loc="lower right", fontsize="small")
    low = min([*(means - errs), *(v for _, v in book)])
    ax.set_ylim(max(0.0, np.floor(low / 5) * 5 - 5), 100.5)
    ax.set_xticks(
        x, [textwrap.fill(r.exp.label, 18) for r in ran], fontsize="small", rotation=30, ha="right"
    )
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def row_color(row: Row) -> str:
    """A row's colour in the charts: the question's own, a reference, or the baseline."""
    if row.exp.question == BASELINE_QUESTION:
        return "tab:olive"
    return "tab:gray" if row.reference else "tab:blue"


def blocks_read(row: Row) -> int:
    """The blocks a row's model kept: its `layers`, else every block its runs recorded."""
    return row.exp.overrides.get("layers") or row.records[0]["config"]["model_config"]["n_layer"]


def layers_chart(title: str, rows: list[Row], path: Path) -> Path | None:
    """Test accuracy and train time (mean, error bar = std over seeds) against the blocks kept
    (`--layers`, the layer the head reads); the baseline's accuracy as a dashed line."""
    from matplotlib.figure import Figure

    ran = sorted((r for r in rows if r.n and r.exp.method == "fit"), key=blocks_read)
    if all(r.reference for r in ran):  # the reference alone is one point: nothing to compare
        path.unlink(missing_ok=True)  # no stale chart for a question with no results
        return None
    fig = Figure(figsize=(9, 4.2), dpi=100, layout="constrained")
    accuracy, seconds = fig.subplots(1, 2)
    blocks = [blocks_read(r) for r in ran]
    for ax, key, scale, label in (
        (accuracy, "test_accuracy", 100, "test accuracy (%), mean ± std over seeds"),
        (seconds, "train_seconds", 1, "train s per seed, mean ± std over seeds"),
    ):
        means, stds = zip(*(r.stat(key, scale) for r in ran), strict=True)
        errs = [s or 0.0 for s in stds]
        ax.errorbar(blocks, means, yerr=errs, color="tab:blue", capsize=4, alpha=0.6)
        ax.scatter(blocks, means, c=[row_color(r) for r in ran], zorder=3)
        ax.set_xticks(blocks)
        ax.set_xlabel("blocks kept = the layer the head reads")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for row in rows:
        if row.n and row.exp.question == BASELINE_QUESTION:
            accuracy.axhline(row.acc, color="tab:olive", linestyle="--", label=row.exp.label)
            accuracy.legend(loc="lower right", fontsize="small")
    machines = {r.machine for r in ran}  # None: a row's seeds ran on several
    if len(machines) > 1 or None in machines:  # train times compare only within a machine
        seconds.set_title("runs on several machines: see the table", fontsize="small")
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


# The target: a configuration chosen by cross-validation alone, with at most this many
# parameters in all (an ensemble counts its members'), reaching TARGET_BEST % test accuracy on
# its best seed and TARGET_MEAN % on average over TARGET_SEEDS seeds.
TARGET_PARAMS, TARGET_BEST, TARGET_MEAN, TARGET_SEEDS = 135e6, 99.0, 98.67, 5


def target(rows: list[Row]) -> list[str]:
    """The configuration cross-validation chooses among the small ones, its test accuracy read
    once, whether it meets the target and by how much not; then what the leading rows miss."""
    lines = [
        "",
        "## The target",
        "",
        f"A configuration chosen by cross-validation alone, of at most {TARGET_PARAMS / 1e6:.0f}M "
        f"parameters in all (an ensemble counts its members'), that reaches {TARGET_BEST:.2f}% "
        f"test accuracy on its best seed and averages at least {TARGET_MEAN:.2f}% over "
        f"{TARGET_SEEDS} seeds (the book's best, GPT-2 XL (1.5B) on an A100, is 98.67% on one "
        f"seed). The rule: {CV_RULE}; among the rows that also have test results.",
        "",
    ]
    small = [r for r in rows if r.n and r.records[0]["total_params"] <= TARGET_PARAMS]
    candidates = sorted((r for r in small if r.cv), key=lambda r: r.cv_rank)
    if not candidates:
        lines.append("No small row has a cross-validation score yet: nothing is chosen.")
    else:
        lines += target_verdict(*candidates[:2])
        lines += [
            "",
            "| row | parameters | CV acc % | CV seeds | test acc % | best seed % | seeds |",
        ]
        lines.append("|---|---|---|---|---|---|---|")
        for r in candidates:
            top = max(100 * rec["test_accuracy"] for rec in r.records)
            lines.append(
                f"| {r.exp.name} | {fmt_params(r.records[0]['total_params'])} | {r.cv_cell()} | "
                f"{len(r.cv)} | {fmt_pm(r.acc, r.acc_std)} | {top:.2f} | {r.n} |"
            )
    ran = sorted((r for r in rows if r.n), key=lambda r: -r.acc)
    leading = [r for r in ran if ran and r.acc >= ran[0].acc - LEADING_POINTS]
    return lines + hard_texts(leading)


def target_verdict(chosen: Row, runner_up: Row | None = None) -> list[str]:
    """Met or not, and by how much, for the row cross-validation chose (and how a tie with the
    runner-up was broken)."""
    top = max(100 * r["test_accuracy"] for r in chosen.records)
    short = [
        f"{TARGET_SEEDS - chosen.n} more seeds" if chosen.n < TARGET_SEEDS else "",
        f"{TARGET_MEAN - chosen.acc:.2f} points of mean" if chosen.acc < TARGET_MEAN else "",
        f"{TARGET_BEST - top:.2f} points on its best seed" if top < TARGET_BEST else "",
    ]
    short = [s for s in short if s]
    verdict = "Met." if not short else "Not met: short by " + ", ".join(short) + "."
    broken = tie_break(chosen, runner_up) if runner_up is not None else ""
    tied = f"Tied on CV accuracy with `{runner_up.exp.name}`{broken}. " if broken else ""
    return [
        f"Chosen: {chosen.exp.label} (`{chosen.exp.name}`, "
        f"{fmt_params(chosen.records[0]['total_params'])} parameters), cross-validated at "
        f"{chosen.cv_cell()}%. Its test accuracy, read once: {fmt_pm(chosen.acc, chosen.acc_std)}% "
        f"over {chosen.n} seed{'s' if chosen.n > 1 else ''}, {top:.2f}% on the best. {verdict} "
        + tied
        + "The candidates, by cross-validation:"
    ]


LEADING_POINTS = 1.0  # rows within this many points of the best mean count as "leading"


def hard_texts(rows: list[Row]) -> list[str]:
    """The test texts that most runs of `rows` get wrong, from the runs that list their mistakes
    (`misclassified`, recorded since the runner started keeping it) on the first run's split."""
    runs = [rec for r in rows for rec in r.records if "misclassified" in rec["metrics"]["test"]]
    if not runs:
        return []
    first = runs[0]["config"]["train_config"]
    runs = [rec for rec in runs if _test_split(rec["config"]["train_config"]) == _test_split(first)]
    misses = Counter(i for rec in runs for i in rec["metrics"]["test"]["misclassified"])
    hard = sorted((i for i, k in misses.items() if 2 * k > len(runs)), key=lambda i: -misses[i])
    test = splits_from_config(first)[2]
    names = {rec["name"] for rec in runs}
    lines = [
        "",
        f"What the leading rows (within {LEADING_POINTS:g} point of the best mean) miss: "
        f"{len(runs)} of their runs list their test mistakes ({len(names)} rows). "
        f"{len(hard)} test texts are wrong in more than half of those runs, "
        f"{sum(k == len(runs) for k in misses.values())} in all of them; a row at "
        f"{TARGET_BEST:.2f}% may miss {int(len(test.labels) * (100 - TARGET_BEST) / 100)} of the "
        f"{len(test.labels)}.",
    ]
    if hard:
        lines += [
            "",
            "Each is read against the source file; the observation is an observation, the "
            "label is never changed (`src/gptclf/experiments/audit.py`).",
            "",
            "| test # | label | missed by | text | observation |",
            "|---|---|---|---|---|",
        ]
        for i in hard:
            text = " ".join(test.texts[i].split()).replace("|", "\\|")
            text = text if len(text) <= 120 else text[:117] + "..."
            label = test.label_names[test.labels[i]]
            seen = observation(test.texts[i]).replace("|", "\\|")
            lines.append(f"| {i} | {label} | {misses[i]} of {len(runs)} | {text} | {seen} |")
    return lines


def _test_split(train_config: dict[str, Any]) -> tuple[Any, ...]:
    """What fixes a run's test rows: `book_full` (and `auto` on the SMS data) test on the
    book's rows, so their mistakes count together with the book split's."""
    split = resolve_split(train_config.get("split", "book"), train_config.get("data"))
    split = "book" if split == "book_full" else split  # the book's test rows, exactly
    keys = ("data", "split_seed", "text_columns", "label_column", "test")
    return (split, *(train_config.get(k) for k in keys))


def duplicates_note(results: dict[str, list[dict[str, Any]]]) -> str:
    """How far the book's test split overlaps its training split (counted on the data), and
    how many test texts the "unseen %" column scores on each split the runs used."""
    train, validation, test = split_book(load_dataset("sms-spam"))
    counts = {}
    for name, same in (("exact", str), ("normalised", normalized_text)):
        seen = {same(t) for t in train.texts}
        with_val = seen | {same(t) for t in validation.texts}
        copied = [i for i, t in enumerate(test.texts) if same(t) in seen]
        counts[name] = (
            len(copied),
            sum(test.labels[i] for i in copied),  # spam = 1
            sum(same(t) in with_val for t in test.texts),
            len({same(t) for t in test.texts}),
        )
    exact, normal = counts["exact"], counts["normalised"]
    scored = Counter()
    for records in results.values():
        for r in records:
            tc = r["config"]["train_config"]
            split = resolve_split(tc.get("split", "book"), tc.get("data"))
            scored[(split, len(unseen_test_texts(split_key(tc))), r["metrics"]["test"]["n"])] += 1
    per_split = "; ".join(
        f"{unseen} of {n} with the `{split}` split's training texts" for split, unseen, n in scored
    )
    return (
        "Duplicates: the SMS data repeats messages, and the book's split (`split_book`) keeps "
        f"the copies. Of its {len(test)} test texts, {exact[0]} have an exact copy among its "
        f"{len(train):,} training texts ({exact[1]} of them spam), {exact[2]} counting the "
        f"{len(validation)} validation texts; compared with whitespace runs made one space and "
        f"case folded, {normal[0]} ({normal[1]} spam) and {normal[2]}. The {len(test)} hold "
        f"{exact[3]} distinct texts. Part of every test score is recall of a seen message, so "
        '"unseen %" is each run\'s accuracy on the test texts with no (normalised) copy in its '
        f"own training split{': ' + per_split if per_split else ''}. Runs record it "
        "(`metrics.test.unseen_accuracy`); for runs made before that, it is computed from their "
        "recorded test mistakes on the same split, which gives the same number."
    )


def fmt_duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def overview(
    results: dict[str, list[dict[str, Any]]], experiments: dict[str, Experiment]
) -> list[str]:
    records = [r for rs in results.values() for r in rs]
    if not records:
        return ['No results yet: every row below says "not run yet".']
    total = sum(r["total_seconds"] for r in records)
    training = sum(r["train_seconds"] for r in records)
    seeds = sorted({r["seed"] for r in records})
    hardware = Counter(r["hardware"]["summary"] for r in records)
    versions = Counter(
        ", ".join(
            f"{k} {v}" for k, v in r["versions"].items() if k in ("gptclf", "torch", "python")
        )
        for r in records
    )
    data = Counter(
        "`{}` ({} split), train / validation / test = {} / {} / {} texts".format(
            r["config"]["train_config"]["data"],
            r["config"]["train_config"]["split"],
            *(r["metrics"][s]["n"] for s in ("train", "validation", "test")),
        )
        for r in records
    )
    lines = [
        f"{len(records)} runs: {len(results)} of {len(experiments)} rows, seeds "
        f"{', '.join(map(str, seeds))}. Total compute {fmt_duration(total)} "
        f"({fmt_duration(training)} of it training, the rest loading data and models and "
        "evaluating).",
        "",
        "Data:",
        "",
        *(f"- {d}: {n} runs" for d, n in data.most_common()),
        "",
        "Hardware:",
        "",
    ]
    lines += [f"- {hw}: {n} runs" for hw, n in hardware.most_common()]
    lines += ["", "Versions:", ""] + [f"- {v}: {n} runs" for v, n in versions.most_common()]
    return lines


def preamble(
    results_dir: Path,
    results: dict[str, list[dict[str, Any]]],
    experiments: dict[str, Experiment],
) -> list[str]:
    """The report's opening: how it is made, how to read it, the duplicates, the overview."""
    try:
        shown_dir = results_dir.resolve().relative_to((repo_root() or Path.cwd()).resolve())
    except ValueError:
        shown_dir = results_dir
    return [
        "# Results: the seven questions",
        "",
        f"Generated by `gptclf experiments report` from the cached runs in `{shown_dir}/` (one JSON "
        "per row and seed): do not edit by hand. To rerun what is missing and regenerate:",
        "",
        "```bash",
        REGENERATE,
        "```",
        "",
        "Numbers are the mean ± sample standard deviation over seeds on the test split (each "
        'run keeps its best epoch by validation accuracy). "book %" is the test accuracy of the '
        "corresponding row of the book's bonus table (chapter 6; GPT-2 small, pretrained, one "
        "seed, unless its row says otherwise): a point of reference, not the same model. Each "
        f"row lists what differs from the reference row `{REFERENCE}` (`gptclf train --recipe "
        "smollm2`); row definitions: `src/gptclf/experiments/configs.py`. Charts: this "
        "question's rows in blue, reference rows in grey, the baseline in olive, the book as "
        "black ticks; error bars are the standard deviation over seeds. Train s is the wall "
        "time of training one seed, frozen-prefix cache included: where a run read that cache "
        "from another run of the same frozen layers and texts, the time its computation took "
        "there is counted instead of the read.",
        "",
        duplicates_note(results),
        "",
        *overview(results, experiments),
    ]


def write(
    results_dir: str | Path | None = None,
    out: str | Path | None = None,
    experiments: dict[str, Experiment] | None = None,
    questions: dict[str, Question] | None = None,
) -> list[Path]:
    """Regenerate the Markdown report and one chart per question; returns the files written."""
    experiments = EXPERIMENTS if experiments is None else experiments
    questions = QUESTIONS if questions is None else questions
    results_dir = Path(results_dir) if results_dir is not None else default_results_dir()
    out = Path(out) if out is not None else default_out()
    results = load_results(results_dir, experiments)
    scored = load_cv_results(results_dir, experiments)
    reasons = {name: why_not_run(exp) for name, exp in experiments.items() if name not in results}
    charts_dir = out.parent / out.stem.lower()
    baseline = next(
        (
            Row(e, results.get(e.name, []), reference=True, cv=scored.get(e.name, []))
            for e in experiments.values()
            if e.question == BASELINE_QUESTION
        ),
        None,
    )
    lines = preamble(results_dir, results, experiments)
    written = []
    for i, (qid, question) in enumerate(questions.items(), start=1):
        own = [
            Row(e, results.get(e.name, []), cv=scored.get(e.name, []))
            for e in experiments.values()
            if e.question == qid
        ]
        refs = [
            Row(experiments[n], results.get(n, []), reference=True, cv=scored.get(n, []))
            for n in question.references
            if n in experiments
        ]
        rows = own + refs
        lines += ["", f"## {i}. {question.title}", "", question.text, ""]
        lines += table(rows + ([baseline] if baseline else []), experiments, reasons)
        # the same rule everywhere: cross-validation chooses; a search without CV scores
        # falls back to its validation split (and says so), never to the test split
        said = cv_choice(own if question.search else rows) + (
            choice(own, experiments.get(REFERENCE)) if question.search else answer(rows, baseline)
        )
        lines += ["", " ".join(said + size_trend(own))]
        draw = layers_chart if question.chart == "layers" else chart
        path = draw(
            question.title, rows + ([baseline] if baseline else []), charts_dir / f"{qid}.png"
        )
        if path is not None:
            written.append(path)
            lines += ["", f"![{question.title}]({charts_dir.name}/{qid}.png)"]
    lines += target(
        [
            Row(e, results.get(e.name, []), cv=scored.get(e.name, []))
            for e in experiments.values()
            if e.name in results or e.name in scored
        ]
    )
    lines.append("")
    atomic_write(out, lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8"))
    log.info("wrote %s and %d charts", out, len(written))
    return [out, *written]
