"""`gptclf ensemble`: two classifiers of different model families (the trained tiny GPT-2 and a
random Llama-tiny with its own byte tokenizer, labels in another order) averaged into one that
predict, evaluate, predict files and serve like a single classifier. The bad inputs (one run, a
non-checkpoint, other labels, --out taken, export of an ensemble ...) are rows of
tests/reliability/ensembles.toml."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from fixtures_checkpoint import write_tiny_checkpoint
from fixtures_multilabel import write_topics
from fixtures_tool import write_reviews
from gptclf import Classifier
from gptclf.cli import main
from gptclf.ensemble import ENSEMBLE_FILE, Ensemble
from gptclf.errors import GptclfError

TEXTS = ["It was great love.", "It was awful refund.", "It was fine.", "okay broke cash"]


def write_llama_member(run: Path, reviews_run: Path, **train: object) -> Path:
    """A random Llama-tiny classifier on the reviews' labels, listed in another order, with the
    reviews run's training settings (its data and split) but for `train`."""
    config = json.loads((reviews_run / "config.json").read_text(encoding="utf-8"))
    train_config = {**config["train_config"], "model": "llama-tiny", **train}
    labels = ["positive", "negative", "neutral"]
    write_tiny_checkpoint(run, seed=1, labels=labels, train_config=train_config)
    return run


@pytest.fixture(scope="module")
def llama_member(tmp_path_factory: pytest.TempPathFactory, reviews_run: Path) -> Path:
    return write_llama_member(tmp_path_factory.mktemp("llama") / "run", reviews_run)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory, reviews_run: Path, llama_member: Path) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    assert main(["ensemble", str(reviews_run), str(llama_member), "--out", str(out)]) == 0
    return out


def mean_probabilities(runs: list[Path], texts: list[str], labels: list[str]) -> np.ndarray:
    """Each run's probabilities, by label name, averaged: what the ensemble must give."""
    rows = []
    for run in runs:
        preds = Classifier.load(run).predict(texts)
        rows.append([[p.probabilities[name] for name in labels] for p in preds])
    return np.mean(rows, axis=0)


def test_the_ensemble_predicts_the_mean_of_its_members(
    ensemble_dir: Path, reviews_run: Path, llama_member: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "elsewhere"  # self-contained: it loads from wherever it is moved
    shutil.copytree(ensemble_dir, moved)
    clf = Classifier.load(moved)
    assert isinstance(clf, Ensemble)
    assert clf.labels == ["negative", "neutral", "positive"]  # the first member's order
    expected = mean_probabilities([reviews_run, llama_member], TEXTS, clf.labels)
    members = [Classifier.load(run).predict(TEXTS) for run in (reviews_run, llama_member)]
    assert members[0][0].probabilities != pytest.approx(members[1][0].probabilities, abs=1e-3)
    preds = clf.predict(TEXTS)
    got = np.array([[p.probabilities[name] for name in clf.labels] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p.label for p in preds] == [clf.labels[i] for i in expected.argmax(axis=1)]
    manifest = json.loads((moved / ENSEMBLE_FILE).read_text())
    assert [m["path"] for m in manifest["members"]] == ["members/0", "members/1"]
    assert manifest["members"][1]["labels"] == ["positive", "negative", "neutral"]


def test_evaluate_scores_the_averaged_probabilities(
    ensemble_dir: Path, reviews_run: Path, llama_member: Path, tmp_path: Path, capsys
) -> None:
    data = write_reviews(tmp_path / "reviews.csv")
    assert main(["evaluate", str(ensemble_dir), "--data", str(data), "--errors", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    clf = Classifier.load(ensemble_dir)
    split = clf.load_data(data)
    probs = mean_probabilities([reviews_run, llama_member], split.texts, clf.labels)
    truth = [clf.labels.index(split.label_names[y]) for y in split.labels]
    assert metrics["n"] == len(split.texts)
    assert metrics["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == truth))
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(truth)), truth])))
    assert len(metrics["errors"]) == 2


def test_evaluate_without_data_scores_the_members_common_splits(
    ensemble_dir: Path, reviews_run: Path, tmp_path: Path, capsys
) -> None:
    assert main(["evaluate", str(ensemble_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    _, _, test = Classifier.load(reviews_run).training_splits()
    assert metrics["test"]["n"] == len(test.texts)
    # another seed's split holds, in its test split, texts the first member trained on
    other = write_llama_member(tmp_path / "other", reviews_run, seed=7)
    out = tmp_path / "ens"
    assert main(["ensemble", str(reviews_run), str(other), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gptclf: error: ") and "\n" not in error
    assert "were trained on different splits" in error and "--data FILE" in error


def test_predict_on_the_command_line_and_files(ensemble_dir: Path, tmp_path: Path, capsys) -> None:
    clf = Classifier.load(ensemble_dir)
    assert main(["predict", str(ensemble_dir), *TEXTS[:2]]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for line, pred in zip(lines, clf.predict(TEXTS[:2]), strict=True):
        assert line["label"] == pred.label
        assert line["probabilities"] == pytest.approx(pred.probabilities, abs=1e-7)
    data, scored = write_reviews(tmp_path / "in.csv"), tmp_path / "out.csv"
    argv = ["predict", str(ensemble_dir), "--input", str(data), "--output", str(scored)]
    assert main(argv) == 0
    rows = list(csv.DictReader(scored.open(encoding="utf-8")))
    first = clf.predict([f"{rows[0]['headline']}\n{rows[0]['review_body']}"])[0]
    assert rows[0]["predicted_label"] == first.label
    assert float(rows[0]["probability_neutral"]) == pytest.approx(first.probabilities["neutral"])


def test_precision_applies_to_every_member(ensemble_dir: Path) -> None:
    clf = Classifier.load(ensemble_dir, precision="int8")
    assert clf.precision == "int8"
    assert [m.precision for m in clf.members] == ["int8", "int8"]
    assert len(clf.predict(TEXTS[:1])[0].probabilities) == 3
    with pytest.raises(GptclfError, match="precision must be one of"):
        Classifier.load(ensemble_dir, precision="fp64")


def test_serve_classifies_with_the_ensemble(ensemble_dir: Path, monkeypatch) -> None:
    from gptclf.server import create_app, running

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    clf = Classifier.load(ensemble_dir)
    with running(create_app(clf)) as url, httpx.Client(base_url=url, trust_env=False) as client:
        got = client.post("/classify", json={"texts": TEXTS}).json()["predictions"]
        info = client.get("/info").json()
    for g, p in zip(got, clf.predict(TEXTS), strict=True):
        assert g["label"] == p.label
        assert g["probabilities"] == pytest.approx(p.probabilities, abs=1e-6)
    assert info["labels"] == ["negative", "neutral", "positive"]
    assert info["model"]["base"]["name"] == "ensemble of 2: gpt2-tiny + llama-tiny"
    assert info["model"]["pool"] == "last / last_real"  # the page shows one value per field
    assert {"max_length", "truncation", "trainable", "train_model"} <= set(info["model"])
    assert [m["base"]["name"] for m in info["model"]["ensemble"]["members"]] == [
        "gpt2-tiny",
        "llama-tiny",
    ]


def test_a_multilabel_ensemble_averages_sigmoids_and_thresholds(
    multilabel_run: Path, tmp_path: Path
) -> None:
    first = Classifier.load(multilabel_run)
    other = tmp_path / "other"
    labels = first.labels[::-1]
    thresholds = [0.3, 0.6, 0.45]
    train = {"text_columns": ["message"], "label_column": "tags", "label_sep": "|"}
    write_tiny_checkpoint(
        other, labels=labels, multi_label=True, thresholds=thresholds, train_config=train
    )
    out = tmp_path / "ens"
    assert main(["ensemble", str(multilabel_run), str(other), "--out", str(out)]) == 0
    clf = Classifier.load(out)
    assert clf.multi_label
    own = dict(zip(labels, thresholds, strict=True))
    mean = [(t + own[name]) / 2 for name, t in zip(first.labels, first.thresholds, strict=True)]
    assert clf.thresholds == pytest.approx(mean)
    texts = ["goal team cash", "pizza lunch today"]
    expected = mean_probabilities([multilabel_run, other], texts, clf.labels)
    preds = clf.predict(texts)
    got = np.array([[p.probabilities[name] for name in clf.labels] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for pred, row in zip(preds, expected, strict=True):
        chosen = {name for name, p, t in zip(clf.labels, row, mean, strict=True) if p >= t}
        assert set(pred.labels) == chosen
    metrics = clf.evaluate(clf.load_data(write_topics(tmp_path / "topics.csv")))
    assert 0.0 <= metrics["micro_f1"] <= 1.0
