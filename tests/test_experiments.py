"""The experiment runner, report and baseline on a tiny table (gpt2-tiny random, 1 epoch, 120/40/40
rows of the book split), and the real table's configs checked without running them."""

import dataclasses
import itertools
import json
import shutil
import statistics

import numpy as np
import pytest

from gptclf import train
from gptclf.cli import main
from gptclf.data import load_dataset, split_book, write_split
from gptclf.errors import GptclfError
from gptclf.experiments import records as result_records
from gptclf.experiments import report, runner
from gptclf.experiments.baseline import tfidf_logreg
from gptclf.experiments.configs import (
    BASELINE_QUESTION,
    EXPERIMENTS,
    FACTORS,
    QUESTIONS,
    Experiment,
    Question,
    validate,
)
from gptclf.train import TrainConfig
from gptclf.train_config import RECIPES

SEEDS = [1, 2]


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """120/40/40 rows of the book split, written as `gptclf data split` writes them."""
    tr, val, test = split_book(load_dataset("sms-spam"))
    out = tmp_path_factory.mktemp("split")
    write_split(out, tr.subset(range(120)), val.subset(range(40)), test.subset(range(40)))
    return out


def tiny_table(split):
    base = dict(model="gpt2-tiny", weights="random", data=str(split), epochs=1, lr=1e-3)
    rows = [
        Experiment("tiny-last", "trainable", "last block", {**base, "trainable": "last_block"},
                   book="95.00", book_row="last block", cpu_minutes=20),
        Experiment("tiny-head", "trainable", "head only", {**base, "trainable": "head"},
                   cpu_minutes=10),
        Experiment("tiny-gpu", "trainable", "needs a GPU", base, gpu_only="too big"),
        Experiment("tiny-tfidf", BASELINE_QUESTION, "TF-IDF", {"data": str(split)},
                   method="tfidf"),
    ]  # fmt: skip
    return {e.name: e for e in rows}


TINY_QUESTIONS = {"trainable": Question("Which layers should train?", "Head or last block?")}


def count_fit():
    """A `train.fit` that records each call's (trainable, seed, metrics): passed to the runner."""
    calls = []

    def fit(cfg):
        metrics = train.fit(cfg)
        calls.append((cfg.trainable, cfg.seed, metrics))
        return metrics

    return calls, fit


@pytest.fixture(scope="module")
def ran(small_split, tmp_path_factory):
    """The tiny table run once for SEEDS: (results dir, table, outcomes, fit calls)."""
    table = tiny_table(small_split)
    results = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("torch.cuda.is_available", lambda: False)
        calls, fit = count_fit()
        outcomes = runner.run("all", SEEDS, results, table, fit=fit)
    return results, table, outcomes, calls


def test_runner_runs_each_row_and_seed_and_caches_a_result(ran):
    results, _, outcomes, calls = ran
    assert [(o.name, o.seed, o.status) for o in outcomes] == [
        ("tiny-last", 1, "done"), ("tiny-last", 2, "done"),
        ("tiny-head", 1, "done"), ("tiny-head", 2, "done"),
        ("tiny-gpu", 1, "skipped"), ("tiny-gpu", 2, "skipped"),
        ("tiny-tfidf", 1, "done"), ("tiny-tfidf", 2, "done"),
    ]  # fmt: skip
    assert [(trainable, seed) for trainable, seed, _ in calls] == [
        ("last_block", 1), ("last_block", 2), ("head", 1), ("head", 2)
    ]  # fmt: skip
    assert "needs a GPU: too big" in outcomes[4].reason
    assert not (results / "tiny-gpu").exists()
    record = json.loads((results / "tiny-last" / "seed2.json").read_text())
    metrics = calls[1][2]
    assert record["test_accuracy"] == metrics["test"]["accuracy"]
    assert record["test_f1"] == metrics["test"]["f1"]
    assert record["train_seconds"] == metrics["train_seconds"]
    assert record["trainable_params"] == metrics["trainable_params"] < record["total_params"]
    assert record["seed"] == 2 and record["config"]["train_config"]["seed"] == 2
    assert record["hardware"]["summary"] and record["hardware"]["cpu_count"] >= 1
    assert set(record["versions"]) >= {"python", "torch", "gptclf", "numpy"}
    assert not list(results.rglob("*.tmp"))  # atomic writes leave no temp files


def test_runner_skips_finished_runs_and_resumes(ran, tmp_path):
    results, table, _, _ = ran
    shutil.copytree(results, tmp_path, dirs_exist_ok=True)
    calls, fit = count_fit()
    outcomes = runner.run(["tiny-head", "tiny-last"], [1, 2, 3], tmp_path, table, fit=fit)
    assert [(o.name, o.seed, o.status) for o in outcomes] == [
        ("tiny-last", 1, "cached"), ("tiny-last", 2, "cached"), ("tiny-last", 3, "done"),
        ("tiny-head", 1, "cached"), ("tiny-head", 2, "cached"), ("tiny-head", 3, "done"),
    ]  # fmt: skip
    assert [(trainable, seed) for trainable, seed, _ in calls] == [("last_block", 3), ("head", 3)]
    assert runner.run(["tiny-head"], [3], tmp_path, table, fit=fit)[0].status == "cached"
    assert len(calls) == 2


def test_partial_stale_or_failed_results_do_not_count(ran, tmp_path):
    results, table, _, _ = ran
    shutil.copytree(results, tmp_path, dirs_exist_ok=True)
    path = runner.result_path(tmp_path, "tiny-head", 1)
    whole = path.read_text()
    calls, fit = count_fit()

    path.write_text(whole[: len(whole) // 2])  # a file cut short by a crash
    assert runner.load_result(path, table["tiny-head"]) is None
    assert runner.run(["tiny-head"], [1], tmp_path, table, fit=fit)[0].status == "done"
    assert len(calls) == 1 and json.loads(path.read_text())["seed"] == 1

    record = json.loads(path.read_text())  # a result of the time the seed also split the data
    record["seed"], record["split_seed"] = 7, 7
    path7 = runner.result_path(tmp_path, "tiny-head", 7)
    path7.write_text(json.dumps(record))
    assert runner.load_result(path7, table["tiny-head"], 7) is None
    del record["split_seed"]
    path7.write_text(json.dumps(record))
    assert runner.load_result(path7, table["tiny-head"], 7) is None
    record["seed"] = 123  # before split seeds existed, seed 123 was the book split: still valid
    path7.write_text(json.dumps(record))
    assert runner.load_result(path7, table["tiny-head"]) is not None

    record = json.loads(whole)
    record["overrides"]["lr"] = 0.5  # made with settings the row no longer has
    path.write_text(json.dumps(record))
    assert runner.run(["tiny-head"], [1], tmp_path, table, fit=fit)[0].status == "done"
    record = json.loads(whole)  # made before a factor existed: read from its TrainConfig
    ran_with = record["config"]["train_config"]["epochs"]
    del record["overrides"]["epochs"]
    path.write_text(json.dumps(record))
    assert runner.load_result(path, table["tiny-head"]) is not None
    record["config"]["train_config"]["epochs"] = ran_with + 1  # ran otherwise than the row says
    path.write_text(json.dumps(record))
    assert runner.load_result(path, table["tiny-head"]) is None
    del record["config"]["train_config"]["epochs"]  # unknown, so the default (5): stale
    path.write_text(json.dumps(record))
    assert runner.load_result(path, table["tiny-head"]) is None
    # An option added after the run is absent from the recorded TrainConfig too: the run had
    # its default, so a row naming the default still matches, and one naming another value not.
    record = json.loads(whole)
    del record["config"]["train_config"]["prompt"]
    path.write_text(json.dumps(record))
    head = table["tiny-head"]
    for prompt, valid in ((None, True), ("Q: {text}", False)):
        row = dataclasses.replace(head, overrides={**head.overrides, "prompt": prompt})
        assert (runner.load_result(path, row) is not None) is valid
    del record["test_f1"]  # a record missing a key
    record["overrides"] = json.loads(whole)["overrides"]
    path.write_text(json.dumps(record))
    assert runner.run(["tiny-head"], [1], tmp_path, table, fit=fit)[0].status == "done"
    assert len(calls) == 3

    def crash(cfg):
        raise RuntimeError("out of memory")

    (failed,) = runner.run(["tiny-head"], [9], tmp_path, table, fit=crash)
    assert failed.status == "failed" and "out of memory" in failed.reason
    assert not runner.result_path(tmp_path, "tiny-head", 9).exists()


def test_report_is_generated_from_the_cached_results(ran, tmp_path):
    results, table, _, _ = ran
    table = {**table, "tiny-never": Experiment("tiny-never", "trainable", "never run",
                                                table["tiny-head"].overrides)}  # fmt: skip
    out = tmp_path / "docs" / "RESULTS.md"
    written = report.write(results, out, experiments=table, questions=TINY_QUESTIONS)
    md = out.read_text()
    assert written == [out, tmp_path / "docs" / "results" / "trainable.png"]
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## 1. Which layers should train?" in md and "(results/trainable.png)" in md
    lines = {
        line.split("`")[1]: line
        for line in md.splitlines()
        if line.startswith("| ") and "`" in line
    }
    means = {}
    for name in ("tiny-last", "tiny-head", "tiny-tfidf"):
        records = [json.loads((results / name / f"seed{s}.json").read_text()) for s in SEEDS]
        cells = [c.strip() for c in lines[name].split("|")[1:-1]]
        assert cells[2] == "—"  # no CV score: not a candidate for the choice
        for column, key, scale, digits in ((3, "test_accuracy", 100, 2), (5, "test_f1", 100, 2),
                                           (6, "train_seconds", 1, 1)):  # fmt: skip
            values = [scale * r[key] for r in records]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            assert cells[column] == f"{mean:.{digits}f} ± {std:.{digits}f}", (name, key)
        unseen = [100 * r["metrics"]["test"]["unseen_accuracy"] for r in records]
        assert cells[4] == report.fmt_pm(statistics.fmean(unseen), statistics.stdev(unseen))
        assert cells[8] == "2"
        means[name] = statistics.fmean(100 * r["test_accuracy"] for r in records)
    assert "| 95.00 | last block |" in lines["tiny-last"]
    assert "not run yet" in lines["tiny-never"] and "not run yet (needs a GPU" in lines["tiny-gpu"]
    best = max(means["tiny-last"], means["tiny-head"])
    assert f"at {best:.2f}% test accuracy" in md  # the answer is drawn from the same numbers
    assert f"The TF-IDF baseline reaches {means['tiny-tfidf']:.2f}%" in md
    assert "2 seeds" in md or "standard deviation" in md
    assert "6 runs: 3 of 5 rows, seeds 1, 2" in md
    assert "gptclf experiments run --all" in md
    assert "## The target" in md and "No small row has a cross-validation score yet" in md
    assert "Chosen by cross-validation: not yet (0 of these rows" in md


def test_unseen_accuracy_of_older_results_is_computed_as_runs_record_it(ran):
    """Results made before runs recorded `unseen_accuracy` get it from their test mistakes and
    their split: the same number; without the mistakes either, the report shows "—"."""
    results, table, _, _ = ran
    for name in ("tiny-last", "tiny-tfidf"):
        for record in json_records(results, name):
            recorded = record["metrics"]["test"]["unseen_accuracy"]
            assert record["metrics"]["test"]["unseen_count"] == 39  # one of the 40 is a copy
            older = json.loads(json.dumps(record))
            del (
                older["metrics"]["test"]["unseen_accuracy"],
                older["metrics"]["test"]["unseen_count"],
            )
            assert report.unseen_accuracy_of(older) == pytest.approx(recorded, abs=1e-12)
            del older["metrics"]["test"]["misclassified"]
            assert report.unseen_accuracy_of(older) is None
            assert report.Row(table[name], [older]).unseen() == "—"


def test_target_section_chooses_by_cross_validation_not_by_test(ran, monkeypatch):
    """The row with the best CV score is chosen even where another has the better test
    accuracy; the verdict then reads its test accuracy and says by how much it falls short."""
    results, table, _, _ = ran
    rows = {e.name: report.Row(e, json_records(results, e.name)) for e in ("tiny-last", "tiny-head")
            for e in [table[e]]}  # fmt: skip
    by_test = sorted(rows, key=lambda n: rows[n].acc)
    worse, better = by_test[0], by_test[1]
    rows[worse].cv = [{"pooled": {"accuracy": 0.9}}]
    rows[better].cv = [{"pooled": {"accuracy": 0.8}}]
    accs = [100 * rec["test_accuracy"] for rec in rows[worse].records]
    text = "\n".join(report.target(list(rows.values())))
    assert (
        f"Chosen: {table[worse].label} (`{worse}`" in text and "cross-validated at 90.00%" in text
    )
    assert f"read once: {report.fmt_pm(*report.mean_std(accs))}% over 2 seeds" in text
    assert "Not met: short by 3 more seeds" in text
    monkeypatch.setattr(report, "TARGET_SEEDS", 2)
    monkeypatch.setattr(report, "TARGET_MEAN", 0.0)
    monkeypatch.setattr(report, "TARGET_BEST", 0.0)
    assert "Met." in "\n".join(report.target(list(rows.values())))
    said = " ".join(report.cv_choice(list(rows.values())))
    assert "Chosen by cross-validation (" in said and f"`{worse}`), 90.00%, ahead of" in said
    # a tie on CV accuracy goes to the lower out-of-fold loss, whatever the test accuracy
    rows[worse].cv = [{"pooled": {"accuracy": 0.9, "loss": 0.3}}]
    rows[better].cv = [{"pooled": {"accuracy": 0.9, "loss": 0.2}}]
    text = "\n".join(report.target(list(rows.values())))
    assert f"Chosen: {table[better].label} (`{better}`" in text
    assert (
        f"Tied on CV accuracy with `{worse}`, lower in out-of-fold loss: 0.2000 vs 0.3000" in text
    )
    said = " ".join(report.cv_choice(list(rows.values())))
    assert f"`{better}`), 90.00%, tied with" in said and "lower in out-of-fold loss" in said


def json_records(results, name):
    return [json.loads((results / name / f"seed{s}.json").read_text()) for s in SEEDS]


def test_report_without_results_says_not_run_yet(tmp_path, small_split):
    out = tmp_path / "RESULTS.md"
    written = report.write(tmp_path / "none", out, tiny_table(small_split), TINY_QUESTIONS)
    md = out.read_text()
    assert written == [out] and "No results yet" in md
    assert md.count("| not run yet") == 4 and "Not enough rows have results" in md


def test_baseline_returns_fits_metric_keys(ran, small_split):
    metrics = tfidf_logreg(TrainConfig(data=str(small_split), seed=1))
    fit_metrics = ran[3][0][2]  # train.fit's; the runner's default fit adds the probabilities
    assert set(metrics) == {*fit_metrics, "probabilities"}
    kept = metrics["probabilities"]
    assert [len(kept[s]) for s in ("validation", "test")] == [40, 40]
    for split in ("train", "validation", "test"):
        assert set(metrics[split]) == set(fit_metrics[split])
        assert metrics[split]["n"] == fit_metrics[split]["n"]
    assert metrics["train"]["accuracy"] > 0.9  # TF-IDF separates 120 SMS easily
    assert 0 < metrics["trainable_params"] == metrics["total_params"]
    assert metrics["config"]["C"] in (0.1, 1.0, 10.0, 100.0)


def test_unknown_names_and_bad_flags_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(GptclfError, match="unknown experiment.*'nope'"):
        runner.run(["smollm2", "nope"], [1], tmp_path)
    for argv in (
        ["experiments", "run", "nope", "--results", str(tmp_path)],
        ["experiments", "run", "--results", str(tmp_path)],  # neither names nor --all
        ["experiments", "run", "smollm2", "--all"],
        ["experiments", "run", "smollm2", "--seeds", "1,x"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("gptclf: error: ") and err.count("\n") == 1, argv
    assert not list(tmp_path.iterdir())  # nothing ran


def test_cli_list_run_and_report(ran, tmp_path, capsys, monkeypatch):
    results, table, _, _ = ran
    monkeypatch.setattr(runner, "EXPERIMENTS", table)
    written = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert (
        main(["experiments", "run", "tiny-last", "--seeds", "2,1", "--results", str(results)]) == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["seed"], x["status"]) for x in lines] == [(2, "cached"), (1, "cached")]
    # nothing ran again: every result file is the one written before
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*.json")} == written
    assert main(["experiments", "list", "--seeds", "1,2,3", "--results", str(results)]) == 0
    listed = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert listed["tiny-last"][3] == listed["tiny-tfidf"][3] == "2/3"
    assert listed["tiny-gpu"][3] == "0/3"
    line = " ".join(listed["runnable"])  # 30 min per seed; one of three seeds left per row
    assert "about 30 min per seed; not cached yet for seeds 1,2,3: about 30 min" in line
    monkeypatch.undo()
    out = tmp_path / "RESULTS.md"
    assert (
        main(["experiments", "report", "--results", str(tmp_path / "none"), "--out", str(out)]) == 0
    )
    md = out.read_text()
    assert all(f"(`{name}`)" in md for name in EXPERIMENTS)
    assert all(f"## {i}. {q.title}" in md for i, q in enumerate(QUESTIONS.values(), start=1))
    assert main(["experiments", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS) and "min per seed" in listed


def test_every_named_config_is_a_valid_train_config():
    seven = ["trainable", "pool", "bert_vs_gpt", "causal_mask", "model_size", "lora", "padding"]
    assert list(QUESTIONS)[:7] == seven  # the book's seven first, then ours
    seen = set()
    for exp in EXPERIMENTS.values():
        cfg = validate(exp)
        assert isinstance(cfg, TrainConfig) and cfg.seed == 123 and cfg.out is None
        assert exp.question in QUESTIONS or exp.question == BASELINE_QUESTION
        assert exp.label and (exp.cpu_minutes is not None or exp.gpu_only), exp.name
        assert all(0 < v <= 100 for v in exp.book_values()), exp.name
        if exp.method == "fit":
            assert set(FACTORS) <= set(exp.overrides), exp.name  # every factor spelled out
            key = tuple(sorted((k, str(v)) for k, v in exp.overrides.items()))
            assert key not in seen, f"{exp.name} duplicates another row"
            seen.add(key)
    for qid, question in QUESTIONS.items():
        assert any(e.question == qid for e in EXPERIMENTS.values()), qid
        assert all(name in EXPERIMENTS for name in question.references), qid
    baselines = [e for e in EXPERIMENTS.values() if e.question == BASELINE_QUESTION]
    assert [e.method for e in baselines] == ["tfidf"]  # one row beside every question
    smollm2 = EXPERIMENTS["smollm2"].train_config()
    assert (smollm2.model, smollm2.pool, smollm2.padding) == (
        "smollm2-135m",
        "last_real",
        "dynamic",
    )
    assert EXPERIMENTS["smollm2-pad-none"].train_config(5).grad_accum == 8
    assert EXPERIMENTS["smollm2-pad-none"].train_config(5).seed == 5
    assert EXPERIMENTS["smollm2-pad-none"].train_config(5).split_seed == 123  # the book's split


def test_a_bad_row_is_caught_without_running():
    bad = Experiment("bad", "trainable", "bad", {**EXPERIMENTS["smollm2"].overrides, "pool": "max"})
    with pytest.raises(GptclfError, match="pool 'max'"):
        validate(bad)
    with pytest.raises(GptclfError, match="not TrainConfig fields: poool"):
        validate(Experiment("bad", "trainable", "bad", {"poool": "last"}))
    with pytest.raises(GptclfError, match="unknown question"):
        validate(Experiment("bad", "size", "bad", {}))


def test_hard_texts_lists_what_most_leading_runs_miss(ran, small_split):
    results, table, _, _ = ran
    rows = [report.Row(table[n], json_records(results, n)) for n in ("tiny-last", "tiny-head")]
    rows = [report.Row(r.exp, [json.loads(json.dumps(rec)) for rec in r.records]) for r in rows]
    for rec, wrong in zip(
        [rec for r in rows for rec in r.records], [[0, 1], [0, 2], [0], [0, 1]], strict=True
    ):
        rec["metrics"]["test"]["misclassified"] = wrong
    other_split = json.loads(json.dumps(rows[0].records[0]))
    other_split["config"]["train_config"]["split_seed"] = 999  # another split: left out
    other_split["metrics"]["test"]["misclassified"] = [3]
    rows[0].records.append(other_split)
    text = "\n".join(report.hard_texts(rows))
    assert "4 of their runs list their test mistakes (2 rows)" in text
    assert "1 test texts are wrong in more than half of those runs, 1 in all of them" in text
    first = " ".join(load_dataset(small_split / "test.csv").texts[0].split())
    assert "| 0 | " in text and "4 of 4" in text and first[:60] in text
    assert "| 1 | " not in text  # missed by 2 of 4: not more than half
    assert report.hard_texts([report.Row(table["tiny-last"], [])]) == []


def synthetic_record(name, seed, wrong, n=10, split_seed=123):
    """A cached result as the runner writes it, reduced to what the report reads."""
    train_config = dataclasses.asdict(
        TrainConfig(data="sms-spam", seed=seed, split_seed=split_seed)
    )
    return {
        "name": name, "seed": seed, "test_accuracy": 1 - len(wrong) / n, "test_f1": 0.9,
        "train_seconds": 10.0, "trainable_params": 100, "hardware": {"summary": "CPU"},
        "metrics": {"test": {"n": n, "misclassified": wrong}},
        "config": {"train_config": train_config},
    }  # fmt: skip


def test_paired_test_compares_the_rows_text_by_text():
    a_exp, b_exp = (Experiment(n, "trainable", n, {}) for n in ("row-a", "row-b"))
    # text 0: row a always wrong; texts 1-5: row b wrong in one of its two seeds
    a = report.Row(a_exp, [synthetic_record("row-a", s, [0]) for s in (1, 2)])
    b = report.Row(
        b_exp, [synthetic_record("row-b", 1, [1, 2, 3]), synthetic_record("row-b", 2, [4, 5])]
    )
    assert report.right_share(b).tolist() == [1, 0.5, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1]
    ahead, behind, p = report.paired_test(a, b)
    assert (ahead, behind) == (5, 1)
    # brute force over every sign pattern of the six differences (-1, then +0.5 five times)
    diffs = [-1.0] + [0.5] * 5
    flips = list(itertools.product((1, -1), repeat=len(diffs)))
    total = abs(sum(diffs))
    extreme = sum(abs(sum(s * d for s, d in zip(f, diffs, strict=True))) >= total for f in flips)
    assert p == pytest.approx(extreme / len(flips))
    assert 0.2 < p < 1
    assert report.paired_test(b, a) == (1, 5, pytest.approx(p))
    assert report.paired_test(a, a) == (0, 0, 1.0)
    sentence = " ".join(report.answer([a, b], None))
    assert "ahead on 5 and behind on 1 of the 10 test texts" in sentence
    assert f"permutation test gives p = {p:.2g}, not significant at the 5% level" in sentence
    # one run per row and a clear gap: McNemar's exact test, 8 discordant texts all one way
    clear = report.Row(a_exp, [synthetic_record("row-a", 1, [], n=20)])
    poor = report.Row(b_exp, [synthetic_record("row-b", 1, list(range(8)), n=20)])
    assert report.paired_test(clear, poor) == (8, 0, pytest.approx(2 / 2**8))
    assert "p = 0.0078, significant at the 5% level" in " ".join(report.answer([clear, poor], None))
    # a run without its mistakes listed, or tested on other texts: no test
    moved = report.Row(b_exp, [synthetic_record("row-b", 1, [1], split_seed=999)])
    assert report.paired_test(a, moved) is None
    del b.records[1]["metrics"]["test"]["misclassified"]
    assert report.right_share(b) is None and report.paired_test(a, b) is None
    assert "permutation test" not in " ".join(report.answer([a, b], None))


def test_results_with_impossible_numbers_do_not_count(tmp_path, caplog):
    """A hand-edited or damaged result must not reach the report (an out-of-range mistake
    index would crash it; an accuracy of 1.5 would top the table)."""
    exp = Experiment("row-a", "trainable", "row a", {"lr": 1e-3})
    record = synthetic_record("row-a", 1, [2, 9])
    record.update(
        format=runner.FORMAT, split_seed=runner.SPLIT_SEED, overrides={"lr": 1e-3},
        total_seconds=11.0, total_params=100, versions={},
    )  # fmt: skip
    path = runner.result_path(tmp_path, "row-a", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    assert runner.load_result(path, exp, 1) is not None
    for key, value, why in (
        ("misclassified", [2, 10], "not test text indices"),
        ("misclassified", [-1], "not test text indices"),
        ("misclassified", "2,9", "not test text indices"),
        ("test_accuracy", 1.5, "test_accuracy is 1.5, not a number in [0, 1]"),
        ("test_f1", "0.9", "test_f1 is '0.9', not a number in [0, 1]"),
    ):
        bad = json.loads(json.dumps(record))
        (bad["metrics"]["test"] if key == "misclassified" else bad)[key] = value
        path.write_text(json.dumps(bad))
        caplog.clear()
        assert runner.load_result(path, exp, 1) is None
        assert why in caplog.text
    bad = dict(record, metrics=[])
    path.write_text(json.dumps(bad))
    assert runner.load_result(path, exp, 1) is None and "no test metrics" in caplog.text
    assert runner.load_results(tmp_path, {"row-a": exp}) == {}


def test_train_times_compare_only_within_a_machine(ran):
    results, table, _, _ = ran
    rows = [
        report.Row(table[n], [json.loads(json.dumps(rec)) for rec in json_records(results, n)])
        for n in ("tiny-last", "tiny-head")
    ]
    same = " ".join(report.answer(rows, None))
    assert "the fastest row" in same or "also the fastest" in same
    assert "Train s compares only within a machine" not in "\n".join(report.table(rows, table, {}))
    for rec in rows[1].records:  # the second row ran on a slower machine
        rec["hardware"]["summary"] = "another CPU, 2 threads, AVX2 (bf16 emulated)"
    best = max(rows, key=lambda r: r.acc)
    other = " ".join(report.answer(rows, None))
    assert "the other rows ran on other machines" in other and "fastest" not in other
    assert f"in {best.seconds:.1f} s" in other
    note = report.table(rows, table, {})[-1]
    assert note.startswith("Train s compares only within a machine")
    assert "another CPU, 2 threads, AVX2 (bf16 emulated): `tiny-head`" in note


def test_runner_shares_frozen_prefixes_through_cache_dir(ran, tmp_path):
    _, table, _, _ = ran
    cache = tmp_path / "cache"
    first = runner.run(["tiny-last"], [1], tmp_path / "a", table, cache_dir=cache)
    again = runner.run(["tiny-last"], [1], tmp_path / "b", table, cache_dir=cache)
    records = [json.loads(o.path.read_text()) for o in (*first, *again)]
    assert [r["prefix_cache"] for r in records] == ["computed", "read"]
    assert len(list(cache.glob("prefix-*.safetensors"))) == 1
    assert records[0]["test_accuracy"] == records[1]["test_accuracy"]
    # The report counts the computation the reading run skipped, not the read.
    read = records[1]
    assert read["cache_build_seconds"] == pytest.approx(records[0]["cache_build_seconds"], abs=1e-3)
    assert result_records.train_seconds(read) == pytest.approx(
        read["train_seconds"] - read["cache_seconds"] + read["cache_build_seconds"]
    )
    assert result_records.train_seconds(records[0]) == records[0]["train_seconds"]
    # Without cache_dir, a results dir other than the default one gets no disk cache.
    runner.run(["tiny-last"], [1], tmp_path / "c", table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "cache"]


def test_a_prompt_setting_stays_in_one_table_cell():
    shown = report.setting(EXPERIMENTS["smollm2-prompt"], EXPERIMENTS)
    assert shown.startswith("prompt `Text message:") and "\n" not in shown and "\\n" in shown


def test_size_trend_lists_rows_that_differ_only_in_the_model():
    def row(name, model, params, wrong_per_seed, **other):
        exp = Experiment(name, "model_size", name, {"model": model, "weights": "random", **other})
        records = [synthetic_record(name, s, w, n=100) for s, w in enumerate(wrong_per_seed)]
        for record in records:
            record["total_params"] = params
        return report.Row(exp, records)

    small = row("small", "gpt2-small", 124_000_000, [[1, 2], [1]])  # 98.50%
    tiny = row("tiny", "gpt2-tiny", 1_600_000, [[1, 2, 3], [1, 2, 3]])  # 97.00%
    medium = row("medium", "gpt2-medium", 355_000_000, [[1], [1, 2, 3]])  # 98.00%
    other = row("other", "gpt2-xl", 1_558_000_000, [[]], lr=1.0)  # another setting: not listed
    (sentence,) = report.size_trend([small, other, medium, tiny])
    assert sentence == (
        "By size, the rest of the settings the same: tiny (1.6M parameters) 97.00 ± 0.00%, "
        "small (124.0M parameters) 98.50 ± 0.71%, medium (355.0M parameters) 98.00 ± 1.41%; "
        "accuracy does not rise with every step in size."
    )
    assert report.size_trend([tiny, small])[0].endswith("rises with every step in size.")
    assert report.size_trend([small, other]) == []  # no two rows differ only in the model


def test_tuning_rows_are_the_old_recipe_search():
    """The rows of benchmarks/tune_smollm2.py's grid, on its BASE and the TrainConfig defaults it
    ran with (length-bucketed batches, the book split of seed 123)."""
    base = dict(model="smollm2-135m", pool="last_real", padding="dynamic", precision="bf16",
                epochs=5)  # fmt: skip
    grid = {
        "tune-last-block-lr5e-4": dict(trainable="last_block", lr=5e-4),
        "tune-last-block-lr2e-4": dict(trainable="last_block", lr=2e-4),
        "tune-last-two-blocks-lr2e-4": dict(trainable="last_two_blocks", lr=2e-4),
        "tune-last-4-lr2e-4": dict(trainable="last_4", lr=2e-4),
        "tune-last-block-lr1e-3": dict(trainable="last_block", lr=1e-3),
        "tune-last-block-lr5e-4-mean": dict(trainable="last_block", lr=5e-4, pool="mean"),
        "tune-last-4-lr1e-4": dict(trainable="last_4", lr=1e-4),
        "tune-last-4-lr5e-4": dict(trainable="last_4", lr=5e-4),
    }
    rows = [e for e in EXPERIMENTS.values() if e.question == "tuning"]
    assert [e.name for e in rows] == list(grid) and QUESTIONS["tuning"].search
    for exp in rows:
        ran = TrainConfig(**{**base, **grid[exp.name]}, bucket=True,  # the default it ran with
                          out=None, report=False, progress=False, baseline=False,
                          split_seed=123)  # fmt: skip
        assert exp.train_config() == ran, exp.name
        assert exp.cpu_minutes and "tune_smollm2.jsonl" in exp.note, exp.name
    assert not any(q.search for qid, q in QUESTIONS.items() if qid != "tuning")


def test_a_search_chooses_on_validation_never_on_test():
    def row(name, val_acc, val_loss, wrong, **overrides):
        exp = Experiment(name, "tuning", name, {"trainable": "last_block", "lr": 2e-4, **overrides})
        records = [synthetic_record(name, s, wrong, n=100) for s in (1, 2)]
        for rec in records:
            rec["metrics"]["validation"] = {"n": 149, "accuracy": val_acc, "loss": val_loss}
        return report.Row(exp, records)

    best_test = row("best-test", 0.99, 0.05, [], lr=1e-3)  # best on test, not on validation
    tied = row("tied", 1.0, 0.20, [1, 2, 3], trainable="last_two_blocks")
    chosen = row("chosen", 1.0, 0.10, [1, 2])  # same validation accuracy, lower loss
    never = report.Row(Experiment("never", "tuning", "never", {"lr": 5e-4}))
    recipe = Experiment("recipe", "trainable", "recipe", {"trainable": "last_two_blocks",
                                                          "lr": 2e-4})  # fmt: skip
    text = " ".join(report.choice([best_test, tied, chosen, never], recipe))
    assert "Selection is by validation accuracy" in text and "never used to choose" in text
    assert "By that rule: chosen 100.00% (loss 0.1000, 2 seeds); tied 100.00% (loss 0.2000" in text
    assert "The choice is chosen (`chosen`), tied on validation accuracy with tied" in text
    assert "its test accuracy is 98.00 ± 0.00%" in text and "One of the 149 validation" in text
    assert "1 of the 4 rows have no results yet" in text
    differ = "`recipe` recipe differs from the choice in trainable (last_two_blocks, the choice"
    assert f"{differ} last_block)." in text
    same = " ".join(
        report.choice([chosen, best_test], Experiment("r", "t", "r", chosen.exp.overrides))
    )
    assert "`r` recipe has the choice's lr." in same and "no results yet" not in same
    del chosen.records[0]["metrics"]["validation"]  # a run without validation metrics
    text = " ".join(report.choice([chosen, best_test]))
    assert "The choice is best-test" in text and "not ranked: chosen" in text
    assert "nothing is chosen" in " ".join(report.choice([never]))


def test_every_committed_result_still_counts_for_its_row():
    """A new TrainConfig option or a recipe change must not make cached results silently stale
    (docs/RESULTS.md would lose them) or relabel them. `head_bias`: the rows ran with a biased
    head, before the option existed; the recipe's head has none now, so the rows pin it."""
    assert EXPERIMENTS["smollm2"].overrides["head_bias"] is True
    assert RECIPES["smollm2"]["head_bias"] is False
    paths = sorted(runner.default_results_dir().glob("*/seed*.json"))
    assert paths, "no committed results"
    for path in paths:
        if path.parent.name in EXPERIMENTS:
            assert runner.load_result(path, EXPERIMENTS[path.parent.name]) is not None, path


def test_ensemble_rows_average_their_members_kept_probabilities(small_split, tmp_path):
    """An ensemble row averages the per-text probabilities its members' results keep; a member
    result without them (made before they were kept) is rerun, the others are read."""
    table = tiny_table(small_split)
    members = ("tiny-last", "tiny-tfidf")
    table["tiny-ens"] = Experiment(
        "tiny-ens", "trainable", "last + TF-IDF", method="ensemble", members=members
    )
    outcomes = runner.run(["tiny-ens"], [1], tmp_path, table)
    assert [(o.name, o.status) for o in outcomes] == [
        ("tiny-last", "done"), ("tiny-tfidf", "done"), ("tiny-ens", "done")
    ]  # fmt: skip
    found = runner.load_results(tmp_path, table)
    (ensemble,) = found["tiny-ens"]
    ran = [found[name][0] for name in members]
    _, _, test = result_records.splits_of(
        result_records.split_key(ran[0]["config"]["train_config"])
    )
    labels = np.array(test.labels)
    for member in ran:  # the kept probabilities are the ones the member was scored with
        kept = np.array(member["probabilities"]["test"])
        assert kept.shape == (len(test), 2)
        assert np.mean(kept.argmax(1) == labels) == pytest.approx(member["test_accuracy"])
    mean = np.mean([np.array(m["probabilities"]["test"]) for m in ran], axis=0)
    assert ensemble["test_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
    wrong = np.flatnonzero(mean.argmax(1) != labels).tolist()
    assert ensemble["metrics"]["test"]["misclassified"] == wrong
    assert ensemble["total_params"] == sum(m["total_params"] for m in ran)
    assert ensemble["train_seconds"] == pytest.approx(sum(m["train_seconds"] for m in ran))

    path = tmp_path / "tiny-last" / "seed1.json"  # as made before results kept probabilities
    old = json.loads(path.read_text())
    del old["probabilities"]
    path.write_text(json.dumps(old))
    assert "tiny-ens" not in runner.load_results(tmp_path, table)
    outcomes = runner.run(["tiny-ens"], [1], tmp_path, table)
    assert [o.status for o in outcomes] == ["done", "cached", "done"]


def test_ensemble_rows_are_checked():
    for bad in (("nope",), ("tfidf-logreg", "ens-minilm-tfidf"), ()):
        row = Experiment("x", "ensemble", "x", method="ensemble", members=bad)
        with pytest.raises(GptclfError, match="member|needs members"):
            validate(row)
    for row in EXPERIMENTS.values():
        if row.method == "ensemble":
            validate(row)


def test_cv_rows_score_rows_and_ensembles_on_the_same_folds(small_split, tmp_path):
    """`experiments run --cv`: each row's record holds every cross-validated text's
    out-of-fold probabilities; an ensemble row's pooled score averages its members'."""
    from gptclf.experiments import cv_rows

    table = tiny_table(small_split)
    table["tiny-ens"] = Experiment(
        "tiny-ens", "trainable", "x", method="ensemble", members=("tiny-last", "tiny-tfidf")
    )
    outcomes = cv_rows.run_cv(["tiny-ens"], [1], 2, tmp_path, table)
    assert [(o.name, o.status) for o in outcomes] == [("tiny-last", "done"), ("tiny-tfidf", "done")]
    found = cv_rows.load_cv_results(tmp_path, table, folds=2)
    neural, tfidf = found["tiny-last"][0], found["tiny-tfidf"][0]
    labels = np.array(neural["pool_labels"])
    assert len(labels) == neural["texts"] == 160 and neural["pool_labels"] == tfidf["pool_labels"]
    for record in (neural, tfidf):  # the pooled score is the kept out-of-fold probabilities'
        kept = np.array(record["probabilities"])
        assert record["pooled"]["accuracy"] == pytest.approx(np.mean(kept.argmax(1) == labels))
        assert [f["fold"] for f in record["per_fold"]] == [1, 2]
    mean = (np.array(neural["probabilities"]) + np.array(tfidf["probabilities"])) / 2
    (ensemble,) = found["tiny-ens"]
    assert ensemble["pooled"]["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
    again = cv_rows.run_cv(["tiny-last"], [1], 2, tmp_path, table)
    assert again[0].status == "cached"
    assert cv_rows.load_cv_results(tmp_path, table, folds=3) == {}  # other folds: not these
    # A record made on other texts, labels or folds than the row's now is not taken for it.
    path = cv_rows.cv_path(tmp_path, "tiny-last", 1)
    record = json.loads(path.read_text())
    assert cv_rows.load_cv_result(path, table["tiny-last"], 1, 2) == record
    path.write_text(json.dumps({**record, "data_hash": "0" * 32}))
    assert cv_rows.load_cv_result(path, table["tiny-last"], 1, 2) is None


def test_experiments_run_cv_flag_checks_folds(capsys):
    assert main(["experiments", "run", "smollm2", "--cv", "--folds", "1"]) == 2
    assert "--folds" in capsys.readouterr().err


def test_results_md_regenerates_byte_for_byte_from_the_stored_results(tmp_path):
    """docs/RESULTS.md is exactly what `gptclf experiments report` makes of
    experiments/results/ (nothing typed in, nothing of the machine it runs on)."""
    root = runner.repo_root()
    if root is None or not (root / "docs" / "RESULTS.md").is_file():
        pytest.skip("not a source checkout")
    out = tmp_path / "RESULTS.md"
    report.write(root / "experiments" / "results", out)
    assert out.read_text(encoding="utf-8") == (root / "docs" / "RESULTS.md").read_text(
        encoding="utf-8"
    ), "docs/RESULTS.md is stale: run `gptclf experiments report`"


def test_audit_observations_quote_their_source_lines_exactly():
    from importlib.resources import files

    from gptclf.experiments.audit import OBSERVATIONS, observation

    source = files("gptclf") / "datasets" / "sms_spam" / "SMSSpamCollection"
    lines = source.read_text(encoding="utf-8").split("\n")
    for text, (line, _) in OBSERVATIONS.items():
        assert lines[line - 1].split("\t", 1)[1] == text, line
        assert observation(text).endswith(f"(line {line})")
    assert observation("not a test text") == "—"


def test_rows_that_train_no_network_run_through_the_runner(small_split, tmp_path):
    """`method` zero_shot / zero_shot_calibrated / probe rows: a valid cached record each."""
    from gptclf.experiments.configs import SPAM_PROMPT

    base = dict(model="gpt2-tiny", weights="random", data=str(small_split), pool="last_real")
    table = {
        name: Experiment(name, "trainable", name, {**base, **extra}, method=method)
        for name, method, extra in (
            ("tiny-zero", "zero_shot", {"prompt": SPAM_PROMPT}),
            ("tiny-zero-cal", "zero_shot_calibrated", {"prompt": SPAM_PROMPT}),
            ("tiny-probe", "probe", {"padding": "dynamic"}),
        )
    }
    outcomes = runner.run("all", [1], tmp_path, table)
    assert [o.status for o in outcomes] == ["done"] * 3
    found = runner.load_results(tmp_path, table)
    assert found["tiny-zero"][0]["trainable_params"] == 0
    assert found["tiny-zero-cal"][0]["trainable_params"] == 1
    assert found["tiny-probe"][0]["versions"]["scikit-learn"]
    assert found["tiny-probe"][0]["config"]["baseline"] == "linear-probe"


DEPTHS = (8, 12, 16, 20, 24)


def test_depth_rows_cut_the_recipe_and_older_results_stay_valid():
    """The depth rows are the smollm2 row with `layers`; results made before the option existed
    (no `layers` recorded) count as its default, every block, so they stay valid."""
    smollm2 = EXPERIMENTS["smollm2"]
    rows = [e for e in EXPERIMENTS.values() if e.question == "depth"]
    assert [e.name for e in rows] == [f"smollm2-layers-{k}" for k in DEPTHS]
    for exp, k in zip(rows, DEPTHS, strict=True):
        assert exp.overrides == {**smollm2.overrides, "layers": k}
        assert exp.label == f"first {k} of 30 blocks" and validate(exp).layers == k
        assert exp.cpu_minutes == pytest.approx(smollm2.cpu_minutes * k / 30, abs=0.05)
        assert "estimated" in exp.note
    question = QUESTIONS["depth"]
    assert question.title == "Which layer should the classifier read?"
    assert question.references == ("smollm2",) and question.chart == "layers"
    assert "Skean et al. (2025" in question.text
    assert "layers" in FACTORS and smollm2.overrides["layers"] is None
    path = runner.result_path(runner.default_results_dir(), "smollm2", 123)
    record = json.loads(path.read_text())
    assert "layers" not in record["overrides"] and "layers" not in record["config"]["train_config"]
    assert runner.load_result(path, smollm2) is not None


def fake_depth_results(results, blocks):
    """The committed smollm2 results, relabelled as depth rows with `blocks` kept (train time
    scaled by the blocks), and the reference and baseline rows' own."""
    stored = runner.default_results_dir()
    for name in ("smollm2", "tfidf-logreg"):
        shutil.copytree(stored / name, results / name)
    for k in blocks:
        exp = EXPERIMENTS[f"smollm2-layers-{k}"]
        (results / exp.name).mkdir(parents=True)
        for path in sorted((stored / "smollm2").glob("seed*.json")):
            record = json.loads(path.read_text())
            record.update(name=exp.name, overrides=json.loads(json.dumps(exp.overrides)))
            record["config"]["model_config"]["n_layer"] = record["config"]["train_config"][
                "layers"
            ] = k
            record["train_seconds"] *= k / 30
            (results / exp.name / path.name).write_text(json.dumps(record))


def test_depth_report_charts_accuracy_and_train_time_against_the_blocks_kept(tmp_path):
    names = ("smollm2", "tfidf-logreg", *(f"smollm2-layers-{k}" for k in DEPTHS))
    table = {name: EXPERIMENTS[name] for name in names}
    questions = {"depth": QUESTIONS["depth"]}
    fake_depth_results(tmp_path / "results", (8, 16))
    out = tmp_path / "docs" / "RESULTS.md"
    chart = tmp_path / "docs" / "results" / "depth.png"
    assert report.write(tmp_path / "results", out, table, questions) == [out, chart]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out.read_text()
    assert "## 1. Which layer should the classifier read?" in md
    assert "![Which layer should the classifier read?](results/depth.png)" in md
    lines = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("| ")
             and "`" in line}  # fmt: skip
    seeds = len(list((runner.default_results_dir() / "smollm2").glob("seed*.json")))
    assert "| layers=8 |" in lines["smollm2-layers-8"]
    assert f"| {seeds} |" in lines["smollm2-layers-8"]
    assert "not run yet" in lines["smollm2-layers-12"]
    results = runner.load_results(tmp_path / "results", table)
    rows = [report.Row(table[n], results[n], reference=n == "smollm2") for n in results]
    assert sorted(report.blocks_read(r) for r in rows if r.exp.method == "fit") == [8, 16, 30]
    for k in (8, 16):  # only the reference has results: one point, no chart
        shutil.rmtree(tmp_path / "results" / f"smollm2-layers-{k}")
    assert report.write(tmp_path / "results", out, table, questions) == [out]
    assert not chart.exists() and "depth.png" not in out.read_text()
    assert md.count("not run yet") == 3 and out.read_text().count("not run yet") == 5


def test_a_pooled_seed_ensemble_needs_two_seeds():
    from gptclf.experiments.ensembles import member_groups

    row = Experiment("x", "ensemble", "x", method="ensemble", members=("a",), pool_seeds=True)
    one = {"a": [{"seed": 1, "probabilities": [[1.0, 0.0]]}]}
    assert member_groups(row, one) == []
    two = {"a": [*one["a"], {"seed": 2, "probabilities": [[0.0, 1.0]]}]}
    assert member_groups(row, two) == [(1, two["a"])]
