"""Multi-label classification end to end: label cells, splits, the CLI, the Python API, the
server, the report, resume; bad input is one line."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from fixtures_multilabel import FLAGS, TOPICS, topics, write_topics
from gptclf import Classifier
from gptclf.balance import class_weights
from gptclf.batching import batches
from gptclf.cli import main
from gptclf.data import load_dataset, load_splits, splits_from_config
from gptclf.errors import GptclfError, Interrupted
from gptclf.metrics import multilabel_logit_metrics, sigmoid, tune_thresholds
from gptclf.multilabel import iterative_split, parse_labels
from gptclf.run_report import MULTILABEL_PLOTS
from gptclf.server import Limits, create_app, running
from gptclf.train import TrainConfig, TrainParts, fit

LABELS = sorted(TOPICS)


# --- data ---------------------------------------------------------------------------------


def test_label_cells() -> None:
    assert parse_labels(" b | a ||b", "|", "tags", "row 1") == ["b", "a"]
    assert parse_labels("", "|", "tags", "row 1") == [] == parse_labels(None, "|", "t", "r")
    assert parse_labels(["x", " y"], "|", "tags", "row 1") == ["x", "y"]  # JSONL lists
    assert parse_labels("a;b", ";", "tags", "row 1") == ["a", "b"]
    for bad in (3, 1.5, True, {"a": 1}, ["a", 2]):
        with pytest.raises(GptclfError, match="row 1: tags .* not text"):
            parse_labels(bad, "|", "tags", "row 1")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_read_multilabel_table(tmp_path: Path, suffix: str) -> None:
    rows = topics(20)
    data = load_dataset(write_topics(tmp_path / f"t{suffix}", rows), ["message"], "tags", "|")
    assert data.multi_label and data.label_names == LABELS
    assert [sorted(LABELS[c] for c in np.flatnonzero(t)) for t in data.targets] == [
        sorted(r["tags"]) for r in rows
    ]
    assert not data.targets[[not r["tags"] for r in rows]].any()  # an empty cell: no label


def test_iterative_split_keeps_each_labels_share() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((1000, 6)) < np.array([0.01, 0.03, 0.1, 0.2, 0.4, 0.5])
    parts = iterative_split(targets, (0.7, 0.1, 0.2), seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    assert [len(p) for p in parts] == pytest.approx([700, 100, 200], abs=3)
    for part, share in zip(parts, (0.7, 0.1, 0.2), strict=True):
        expected = share * targets.sum(0)
        assert np.abs(targets[part].sum(0) - expected).max() <= 1  # within one row per label
    again = iterative_split(targets, (0.7, 0.1, 0.2), seed=1)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))
    assert len(iterative_split(targets, (0.8, 0.0, 0.2), seed=1)[1]) == 0


def test_splits_weights_and_given_files(tmp_path: Path) -> None:
    data = write_topics(tmp_path / "t.csv", topics(100))
    train, val, test = load_splits(
        data, text_columns=["message"], label_column="tags", label_sep="|"
    )
    assert (len(train), len(val), len(test)) == (70, 10, 20) and train.multi_label
    positives = train.targets.sum(0)
    expected = [(len(train) - p) / p for p in positives]  # negatives / positives per label
    assert class_weights("auto", train) == pytest.approx(expected)
    with pytest.raises(GptclfError, match="2 weights but there are 3 labels"):
        class_weights("1,2", train)
    unknown = write_topics(tmp_path / "v.csv", [{"id": 0, "message": "hi", "tags": ["golf"]}])
    with pytest.raises(GptclfError, match="'golf' do not occur in the training data"):
        load_splits(data, text_columns=["message"], label_column="tags", label_sep="|",
                    validation=unknown)  # fmt: skip


def test_a_separator_that_never_occurs_is_one_warning(tmp_path: Path, caplog) -> None:
    rows = [{**r, "tags": r["tags"][:1]} for r in topics(60)]  # one label or none per row
    data = write_topics(tmp_path / "t.csv", rows)
    cfg = dict(data=str(data), split="auto", text_columns=["message"], label_column="tags")
    cfg["multi_label"] = True
    with caplog.at_level(logging.WARNING):
        splits_from_config(cfg)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no text has more than one label" in warning and "--label-sep '|'" in warning
    assert "\n" not in warning


# --- bad input, from the command line -----------------------------------------------------


def error_line(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err, err
    return err[-1]


def test_a_label_column_that_is_not_text_is_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "t.jsonl"
    data.write_text('{"message": "hi", "tags": ["a"]}\n{"message": "yo", "tags": 3}\n')
    out = tmp_path / "run"
    line = error_line(["train", "--data", str(data), *FLAGS, "--out", str(out)], capsys)
    assert line == (
        f"gptclf: error: {data}, row 2 (line 2): tags 3 is int, not text: with --multi-label a "
        "label cell holds labels separated by '|' (in JSONL also a list of strings)"
    )
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tune_thresholds": True}, "--tune-thresholds needs --multi-label"),
        ({"label_sep": ";"}, "--label-sep needs --multi-label"),
        ({"multi_label": True, "label_sep": ""}, "--label-sep must not be empty"),
        ({"multi_label": True}, "sms-spam has one label per text"),
        ({"multi_label": True, "data": "x.csv", "split": "book"}, "--split book is single-label"),
        ({"multi_label": True, "data": "x.csv", "balance": "undersample"}, "single-label only"),
    ],
)
def test_options_that_do_not_fit_multi_label(options: dict, message: str, capsys) -> None:
    with pytest.raises(GptclfError, match=message) as api_error:
        TrainConfig(**options)
    argv = ["train", "--no-progress"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, value]
    assert error_line(argv, capsys) == f"gptclf: error: {api_error.value}"


# --- a trained multi-label classifier -----------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(multilabel_run: Path) -> Path:
    return multilabel_run  # conftest: one run shared with the page's tests


@pytest.fixture(scope="module")
def clf(run_dir: Path) -> Classifier:
    return Classifier.load(run_dir)


def test_metrics_checkpoint_and_report(run_dir: Path, clf: Classifier) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert metrics["multi_label"] and config["multi_label"] and clf.multi_label
    assert list(metrics["thresholds"].values()) == config["thresholds"] == clf.thresholds
    for split in ("train", "validation", "test"):
        m = metrics[split]
        for key in ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss", "roc_auc", "loss"):
            assert isinstance(m[key], float), key
        assert set(m["per_label"]) == set(LABELS)
        for per in m["per_label"].values():
            assert {"precision", "recall", "f1", "support", "roc_auc", "pr_auc"} <= set(per)
    assert metrics["test"]["micro_f1"] > 0.6  # the topic words are learnable
    names = {p.name for p in run_dir.iterdir()}
    assert names >= {*MULTILABEL_PLOTS, "report.md"} and "confusion_matrix.png" not in names
    assert "| sport |" in (run_dir / "report.md").read_text()
    # the thresholds are the best F1 on the validation split, and test metrics use them
    _, val, test = splits_from_config(clf.info.train_config)
    val_probs = clf.predict_proba(val.texts).numpy()
    assert clf.thresholds == pytest.approx(tune_thresholds(val.targets, val_probs), abs=1e-6)
    again = clf.evaluate(test)
    for key in ("micro_f1", "macro_f1", "subset_accuracy"):
        assert again[key] == pytest.approx(metrics["test"][key])
    wrong = clf.evaluate(test, errors=100)["errors"]
    assert [e["row"] - 1 for e in sorted(wrong, key=lambda e: e["row"])] == metrics["test"][
        "misclassified"
    ]


def test_predict(clf: Classifier) -> None:
    preds = clf.predict(["cash prize and pay", "see you later ok", "goal team pizza cake"])
    for p in preds:
        assert set(p.probabilities) == set(LABELS)
        expected = [
            n for n, t in zip(LABELS, clf.thresholds, strict=True) if p.probabilities[n] >= t
        ]
        assert sorted(p.labels) == sorted(expected)
        probs = [p.probabilities[n] for n in p.labels]
        assert probs == sorted(probs, reverse=True)
        assert p.label == (p.labels[0] if p.labels else None)
        assert p.to_dict() == {"labels": p.labels, "probabilities": p.probabilities}
    assert "money" in preds[0].labels


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_file(clf: Classifier, tmp_path: Path, suffix: str) -> None:
    rows = topics(5, seed=9)
    rows[4] = {**rows[4], "message": ""}  # an empty text: left unlabelled
    source = write_topics(tmp_path / f"in{suffix}", rows)
    out = tmp_path / f"out{suffix}"
    clf.predict_file(source, out)
    expected = clf.predict([r["message"] for r in rows[:4]])
    if suffix == ".jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [g["predicted_labels"] for g in got] == [p.labels for p in expected] + [None]
        assert got[0]["probabilities"] == pytest.approx(expected[0].probabilities)
    else:
        got = list(csv.DictReader(out.open()))
        assert [g["predicted_labels"] for g in got] == ["|".join(p.labels) for p in expected] + [""]
        assert float(got[0]["probability_money"]) == pytest.approx(
            expected[0].probabilities["money"]
        )
        assert "predicted_label" not in got[0]


def test_cli_predict_prints_labels(run_dir: Path, capsys) -> None:
    assert main(["predict", str(run_dir), "cash prize and pay"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert set(line) == {"text", "labels", "probabilities"} and "money" in line["labels"]


def test_server_classify_and_info(clf: Classifier, monkeypatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    texts = ["cash prize and pay", "see you later ok"]
    with running(create_app(clf, Limits())) as url, httpx.Client(trust_env=False) as client:
        got = client.post(f"{url}/classify", json={"texts": texts}).json()["predictions"]
        info = client.get(f"{url}/info").json()
    assert got == [p.to_dict() for p in clf.predict(texts)]
    assert info["multi_label"] is True and list(info["thresholds"].values()) == clf.thresholds
    assert info["metrics"]["test"]["micro_f1"] == clf.metrics["test"]["micro_f1"]


# --- resume -------------------------------------------------------------------------------


def test_an_interrupted_multilabel_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    data = write_topics(tmp_path / "t.csv", topics(60))
    cfg = dict(
        data=str(data), text_columns=["message"], label_column="tags", multi_label=True,
        model="gpt2-tiny", weights="random", epochs=2, lr=2e-3, batch_size=4, save_every=1,
        class_weights="auto", report=False, progress=False,
    )  # fmt: skip
    whole = fit(TrainConfig(**cfg, out=str(tmp_path / "whole")))
    drawn = 0

    def interrupting(*args, **kw):  # SIGINT in the middle of epoch 2
        nonlocal drawn
        for batch in batches(*args, **kw):
            drawn += 1
            if drawn == 15:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    out = str(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        fit(TrainConfig(**cfg, out=out), TrainParts(batches=interrupting))
    resumed = fit(TrainConfig(**cfg, out=out, resume=True))
    for split in ("train", "validation", "test"):
        assert resumed[split]["loss"] == whole[split]["loss"]
        assert resumed[split]["micro_f1"] == whole[split]["micro_f1"]
    assert resumed["history"] == whole["history"]
    assert resumed["train_curve"] == whole["train_curve"]


def test_ddp_equals_a_single_process_run(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes with batch 4 = one process with batch 8 (frozen-prefix cache,
    dynamic padding, positive weights)."""
    data = write_topics(tmp_path / "t.csv", topics(64))
    flags = [
        "train", "--data", str(data), *FLAGS, "--trainable", "last_block", "--pool", "last_real",
        "--padding", "dynamic", "--class-weights", "auto", "--epochs", "2", "--no-report",
    ]  # fmt: skip
    assert main([*flags, "--batch-size", "8", "--out", str(tmp_path / "single")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*torchrun, "--nproc-per-node", "2", "-m", "gptclf", *flags, "--batch-size", "4",
         "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = (
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("single", "ddp")
    )
    assert ddp["world_size"] == 2 and ddp["cached_from_block"] == single["cached_from_block"]
    for name in ("train", "validation", "test"):
        assert ddp[name]["n"] == single[name]["n"]
        assert ddp[name]["loss"] == pytest.approx(single[name]["loss"], abs=2e-3)
        for label, per in single[name]["per_label"].items():
            assert ddp[name]["per_label"][label]["predicted"] == per["predicted"]
    for a, b in zip(ddp["history"], single["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=2e-3)
    assert single["history"][0]["train_loss"] != single["history"][1]["train_loss"]


def test_multilabel_logit_metrics_are_what_training_reports(run_dir: Path, clf: Classifier) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, _, test = splits_from_config(clf.info.train_config)
    logits = clf._logits(test.texts, 32).numpy()
    m = multilabel_logit_metrics(logits, test.targets, clf.labels, clf.thresholds)
    assert m["loss"] == pytest.approx(metrics["test"]["loss"], abs=1e-6)
    assert (sigmoid(logits) >= np.asarray(clf.thresholds)).sum() == sum(
        per["predicted"] for per in metrics["test"]["per_label"].values()
    )
