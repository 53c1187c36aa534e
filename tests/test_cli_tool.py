"""The tool with flags only: a user's CSV (unfamiliar columns, string labels) trains, evaluates,
predicts and serves through `gptclf`; each bad input is one `gptclf: error:` line and exit 2."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fixtures_tool import TRAIN_FLAGS, reviews, write_reviews
from gptclf.cli import main
from gptclf.run_report import PLOTS


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_report_with_string_labels(reviews_run: Path) -> None:
    names = {p.name for p in reviews_run.iterdir()}
    assert names >= {*PLOTS, "report.md", "metrics.json", "config.json", "model.safetensors"}
    metrics = json.loads((reviews_run / "metrics.json").read_text())
    assert metrics["labels"] == ["negative", "neutral", "positive"]
    assert metrics["test"]["confusion_matrix"] and metrics["test"]["roc_auc"] is not None
    assert metrics["truncated"]["train"] > 0  # --max-length 12 cuts the longer reviews
    config = json.loads((reviews_run / "config.json").read_text())["train_config"]
    assert config["text_columns"] == ["headline", "review_body"]
    assert config["label_column"] == "sentiment" and config["split"] == "auto"


def test_evaluate_file_with_errors_and_default_splits(reviews_run: Path, capsys) -> None:
    data = reviews_run.parent / "reviews.csv"
    code, out, _ = run_cli(capsys, "evaluate", reviews_run, "--data", data, "--errors", "2")
    result = json.loads(out)
    assert code == 0 and result["n"] == 90 and len(result["errors"]) <= 2
    assert set(result["per_class"]) == {"negative", "neutral", "positive"}
    assert all(e["label"] != e["predicted"] for e in result["errors"])
    code, out, _ = run_cli(capsys, "evaluate", reviews_run)  # the splits it was trained on
    saved = json.loads((reviews_run / "metrics.json").read_text())
    assert json.loads(out)["test"]["accuracy"] == saved["test"]["accuracy"]


def test_predict_file(reviews_run: Path, tmp_path: Path, capsys) -> None:
    source = write_reviews(tmp_path / "new.csv", reviews(3, seed=9))
    code, out, _ = run_cli(
        capsys, "predict", reviews_run, "--input", source, "--output", tmp_path / "o.csv"
    )
    assert code == 0 and json.loads(out)["rows"] == 9
    rows = list(csv.DictReader(open(tmp_path / "o.csv", encoding="utf-8")))
    assert list(rows[0])[:4] == ["id", "review_body", "headline", "sentiment"]
    assert {r["predicted_label"] for r in rows} <= {"negative", "neutral", "positive"}
    assert all(float(r["predicted_probability"]) > 0 for r in rows)


@pytest.mark.parametrize("ui", [True, False])
def test_serve_command(reviews_run: Path, ui: bool) -> None:
    """`gptclf serve` in its own process, on an ephemeral loopback port; the page at / unless
    --no-ui."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1"}
    cmd = [sys.executable, "-m", "gptclf", "serve", str(reviews_run), "--port", "0"]
    cmd += [] if ui else ["--no-ui"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, url = time.monotonic() + 60, None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if match := re.search(r"running on (http://127\.0\.0\.1:\d+)", line):
                url = match.group(1)
            assert line or proc.poll() is None, "the server exited"
        assert url is not None
        with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
            assert client.get("/health").json() == {"status": "ok"}
            answer = client.post("/classify", json={"texts": ["It was great."]}).json()
            assert answer["predictions"][0]["label"] in ("negative", "neutral", "positive")
            page = client.get("/")
            assert page.status_code == (200 if ui else 404)
            assert ("<title>gptclf</title>" in page.text) == ui
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bad_inputs(tmp_path: Path) -> Path:
    write_reviews(tmp_path / "reviews.csv", reviews(10))
    (tmp_path / "one.csv").write_text("body,y\n" + "".join(f"text {i},pos\n" for i in range(9)))
    (tmp_path / "test.csv").write_text("review_body,sentiment\nhm,mixed\n")
    (tmp_path / "latin1.csv").write_bytes(b"review_body,sentiment\ncaf\xe9,positive\n")
    (tmp_path / "empty.jsonl").write_text(
        '{"review_body": "ok", "sentiment": "a"}\n{"review_body": " ", "sentiment": "b"}\n'
    )
    return tmp_path


COLS = ["--text-column", "review_body", "--label-column", "sentiment"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{tmp}/reviews.csv"], "missing column 'text'"),
        (
            ["--data", "{tmp}/reviews.csv", "--text-column", "body", "--label-column", "sentiment"],
            "missing column 'body'",
        ),
        (
            ["--data", "{tmp}/reviews.csv", *COLS, "--test", "{tmp}/test.csv"],
            "'mixed' do not occur in the training data",
        ),
        (
            ["--data", "{tmp}/one.csv", "--text-column", "body", "--label-column", "y"],
            "single class ('pos')",
        ),
        (["--data", "{tmp}/latin1.csv", *COLS, "--encoding", "utf-8"], "not valid utf-8 at line 2"),
        (["--data", "{tmp}/empty.jsonl", *COLS], "row 2 (line 2): empty review_body"),
        (["--data", "{tmp}/reviews.csv", *COLS, "--class-weights", "1,2"], "3 classes"),
        (["--data", "{tmp}/reviews.csv", *COLS, "--class-weights", "heavy"], "class-weights"),
        (["--data", "{tmp}/data.xlsx"], "unknown dataset"),
    ],
)
def test_bad_training_input(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    bad_inputs(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run_cli(capsys, "train", *argv, *TRAIN_FLAGS, "--out", tmp_path / "run")
    lines = [line for line in err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gptclf: error:"), err
    assert message in lines[0].lower()
    assert not (tmp_path / "run").exists()  # failed before training


def test_bad_predict_and_evaluate_input(reviews_run: Path, tmp_path: Path, capsys) -> None:
    src = write_reviews(tmp_path / "in.csv", reviews(1))
    cases = [
        (["predict", reviews_run, "--input", src], "go together"),
        (["predict", reviews_run, "--input", src, "--output", tmp_path / "o.xlsx"], "unknown file"),
        (
            [
                "predict",
                reviews_run,
                "--input",
                src,
                "--output",
                tmp_path / "o.csv",
                "--text-column",
                "nope",
            ],
            "missing column 'nope'",
        ),
        (["evaluate", reviews_run, "--data", src, "--label-column", "headline"], "are not among"),
        (["evaluate", reviews_run, "--data", src, "--errors", "-1"], "--errors"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and err.startswith("gptclf: error:") and message in err, (argv, err)


def test_rare_class_is_a_warning_not_an_error(tmp_path: Path, capsys, caplog) -> None:
    rows = reviews(10)
    rows += [{"id": "r1", "review_body": "It was odd.", "headline": "x", "sentiment": "odd"}]
    data = write_reviews(tmp_path / "r.csv", rows)
    epochs = ["--epochs", "1"]
    flags = [*TRAIN_FLAGS, *epochs, "--no-report", "--balance", "none", "--class-weights", "auto"]
    code, out, err = run_cli(capsys, "train", "--data", data, *COLS, *flags, "--out", tmp_path)
    assert code == 0, err
    assert "fewer than 5 training examples: ['odd']" in caplog.text
    assert json.loads(out)["labels"] == ["negative", "neutral", "odd", "positive"]
