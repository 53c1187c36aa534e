"""The Python API on a classifier trained (through the CLI) on a user's review CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fixtures_tool import TRAIN_FLAGS, reviews, write_reviews
from gptclf import Classifier
from gptclf.errors import GptclfError


@pytest.fixture(scope="module")
def clf(reviews_run: Path) -> Classifier:
    return Classifier.load(reviews_run)


def test_checkpoint_remembers_labels_columns_and_metrics(clf: Classifier) -> None:
    assert clf.labels == ["negative", "neutral", "positive"]
    assert clf.text_columns == ["headline", "review_body"] and clf.label_column == "sentiment"
    assert clf.truncation == "head"
    metrics = clf.metrics
    assert metrics["labels"] == clf.labels and set(metrics["test"]["per_class"]) == set(clf.labels)
    assert len(metrics["history"]) == 2 and "train_accuracy" in metrics["history"][0]


def test_predict(clf: Classifier) -> None:
    preds = clf.predict(["It was great love.", "It was awful refund."])
    assert [p.text for p in preds] == ["It was great love.", "It was awful refund."]
    for p in preds:
        assert p.label in clf.labels and p.probability == max(p.probabilities.values())
        assert sum(p.probabilities.values()) == pytest.approx(1)
    with pytest.raises(GptclfError, match="list of texts"):
        clf.predict("one string")
    with pytest.raises(GptclfError, match="text #2 is empty"):
        clf.predict(["fine", " "])


def test_evaluate_with_errors(clf: Classifier, reviews_run: Path) -> None:
    data = clf.load_data(reviews_run.parent / "reviews.csv")  # the training columns by default
    result = clf.evaluate(data, errors=3)
    mistakes = result["errors"]
    assert len(mistakes) == min(3, round(result["n"] * (1 - result["accuracy"])))
    probs = [m["probability"] for m in mistakes]
    assert probs == sorted(probs, reverse=True)  # most confident first
    for m in mistakes:
        assert m["label"] != m["predicted"] and m["probability"] > m["probability_of_label"]
        assert data.texts[m["row"] - 1] == m["text"]
    assert "errors" not in clf.evaluate(data)


@pytest.mark.parametrize(("src", "dst"), [(".csv", ".csv"), (".jsonl", ".jsonl"), (".tsv", ".csv")])
def test_predict_file_keeps_columns_and_matches_predict(
    clf: Classifier, tmp_path: Path, src: str, dst: str
) -> None:
    rows = reviews(4, seed=5)
    rows[3] = {**rows[3], "headline": "", "review_body": ""}  # an empty text: left unlabelled
    summary = clf.predict_file(write_reviews(tmp_path / f"in{src}", rows), tmp_path / f"out{dst}")
    assert summary["rows"] == 12 and summary["empty"] == 1
    if dst == ".jsonl":
        out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    else:
        out = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert [{k: r[k] for k in rows[0]} for r in out] == rows  # input columns kept, in order
    texts = [f"{r['headline']}\n{r['review_body']}" for r in rows]
    expected = clf.predict(texts[:3] + texts[4:])
    got = out[:3] + out[4:]
    assert [r["predicted_label"] for r in got] == [p.label for p in expected]
    first = got[0]
    probs = (
        first["probabilities"]
        if dst == ".jsonl"
        else {n: float(first[f"probability_{n}"]) for n in clf.labels}
    )
    assert probs == pytest.approx(expected[0].probabilities, abs=1e-5)
    assert out[3]["predicted_label"] in (None, "")


def test_predict_file_streams_in_chunks(clf: Classifier, tmp_path: Path, monkeypatch) -> None:
    import gptclf.api

    monkeypatch.setattr(gptclf.api, "FILE_CHUNK_ROWS", 7)
    seen = []
    original = Classifier.predict_proba

    def spy(self, texts, batch_size=32):
        seen.append(len(texts))
        return original(self, texts, batch_size)

    monkeypatch.setattr(Classifier, "predict_proba", spy)
    source = write_reviews(tmp_path / "in.csv", reviews(6))
    assert clf.predict_file(source, tmp_path / "out.jsonl", progress=True)["rows"] == 18
    assert seen == [7, 7, 4]


def test_predict_file_parquet_input(clf: Classifier, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = reviews(2)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    clf.predict_file(tmp_path / "in.parquet", tmp_path / "out.jsonl")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows]


def test_predict_file_errors(clf: Classifier, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("body\nhello\n")
    with pytest.raises(GptclfError, match=r"missing column 'headline' \(columns: 'body'\)"):
        clf.predict_file(tmp_path / "in.csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    out = tmp_path / "out.csv"
    assert clf.predict_file(tmp_path / "in.csv", out, text_columns=["body"])["rows"] == 1
    with pytest.raises(GptclfError, match="unknown file type '.xlsx'"):
        clf.predict_file(tmp_path / "in.csv", tmp_path / "out.xlsx")
    with pytest.raises(GptclfError, match="--output must differ"):
        clf.predict_file(tmp_path / "in.csv", tmp_path / "in.csv")
    with pytest.raises(GptclfError, match="file not found"):
        clf.predict_file(tmp_path / "nope.csv", tmp_path / "o.csv")


def test_train_mirrors_the_cli(reviews_run: Path, tmp_path: Path) -> None:
    """Classifier.train with the CLI's options gives the CLI's run, metric for metric."""
    flags = dict(zip(TRAIN_FLAGS[:-1:2], TRAIN_FLAGS[1:-1:2], strict=True))
    options = {k.lstrip("-").replace("-", "_"): v for k, v in flags.items()}
    options.update(epochs=int(options["epochs"]), lr=float(options["lr"]))
    options.update(batch_size=int(options["batch_size"]), max_length=int(options["max_length"]))
    clf = Classifier.train(
        out=tmp_path / "run",
        data=str(reviews_run.parent / "reviews.csv"),
        text_columns=["headline", "review_body"],
        label_column="sentiment",
        progress=False,
        report=False,
        **options,
    )
    cli = json.loads((reviews_run / "metrics.json").read_text())
    assert clf.labels == cli["labels"]
    assert clf.metrics["test"] == cli["test"] and clf.metrics["history"] == cli["history"]
    assert not (tmp_path / "run" / "loss.png").exists()  # report=False
    with pytest.raises(GptclfError, match=r"unknown training option\(s\) \['epochz'\]"):
        Classifier.train(out=tmp_path / "x", epochz=3)
