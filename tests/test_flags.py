"""Flags and --out: what the reliability record (tests/reliability/flags.toml) cannot say as one
command: every numeric option has a range, the list of a run's files is complete, an unwritable
--out (not as root), the default --out replaced without leftovers, and the Python API failing as
the command line does before any model loads."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from fixtures_tool import write_reviews
from gptclf import Classifier, checkpoint, resume, run_report, tokenizer, train
from gptclf.cli import main
from gptclf.errors import GptclfError
from gptclf.out_dir import RUN_FILES, STATE_FILE, prepare_out
from gptclf.train_config import DEFAULT_OUT, NUMBER_RANGES, TrainConfig


def test_every_numeric_option_has_a_range():
    numeric = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.type.split(" | ")[0] in ("int", "float")
    ]
    assert sorted(numeric) == sorted(NUMBER_RANGES)


def test_run_files_are_every_file_a_run_writes(reviews_run: Path):
    written = {
        *run_report.PLOTS, *run_report.MULTILABEL_PLOTS, checkpoint.WEIGHTS_FILE,
        tokenizer.TOKENIZER_FILE, tokenizer.META_FILE, resume.STATE_FILE, "config.json",
        "metrics.json", "report.md",
    }  # fmt: skip
    assert written == set(RUN_FILES)
    assert STATE_FILE == resume.STATE_FILE
    assert {p.name for p in reviews_run.iterdir()} <= set(RUN_FILES)


def tiny_train(data: Path, out: Path) -> list[str]:
    columns = ["--text-column", "review_body", "--label-column", "sentiment"]
    model = ["--model", "gpt2-tiny", "--weights", "random"]
    return ["train", "--data", str(data), *columns, *model, "--out", str(out)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory anyway")
def test_an_unwritable_out_fails_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "fit", lambda cfg: pytest.fail("training started"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code = main(tiny_train(tmp_path / "data.csv", locked / "run"))
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"gptclf: error: --out {locked / 'run'}: no permission to write in {locked}"
    )


def test_no_write_permission_is_one_line_as_root_too(tmp_path, monkeypatch):
    """Root writes anyway, so here the permission is taken away by `os.access` answering no."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    with pytest.raises(GptclfError, match=f"^--out {locked / 'run'}: no permission to write in"):
        prepare_out(TrainConfig(out=str(locked / "run")))


def fake_run(out: Path) -> None:
    """A finished run's files, a killed write's temporary file and a killed search's folder."""
    out.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "model.safetensors", "report.md", "roc.png"):
        (out / name).write_text("old run")
    (out / ".metrics.json.x1y2.tmp").write_text("half")
    (out / ".auto-abc" / "candidate").mkdir(parents=True)


def test_the_default_out_is_replaced_without_leftovers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(Path(DEFAULT_OUT))
    (Path(DEFAULT_OUT) / "notes.txt").write_text("the user's own")
    prepare_out(TrainConfig())
    assert sorted(os.listdir(DEFAULT_OUT)) == ["notes.txt"]
    # elsewhere the same directory is refused, or replaced with --overwrite
    fake_run(tmp_path / "mine")
    with pytest.raises(GptclfError, match="holds another run"):
        prepare_out(TrainConfig(out=str(tmp_path / "mine")))
    prepare_out(TrainConfig(out=str(tmp_path / "mine"), overwrite=True))
    assert os.listdir(tmp_path / "mine") == []


def test_resume_keeps_its_own_run(tmp_path):
    """--resume with a training state there: this run's own files, continued, not removed."""
    fake_run(tmp_path / "run")
    (tmp_path / "run" / STATE_FILE).write_text("state")
    before = sorted(os.listdir(tmp_path / "run"))
    prepare_out(TrainConfig(out=str(tmp_path / "run"), resume=True))
    assert sorted(os.listdir(tmp_path / "run")) == before


def test_the_api_refuses_a_bad_out_before_any_model_loads(reviews_run, tmp_path, monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("data or a model was loaded")

    monkeypatch.setattr(train, "load_lm", loaded)
    monkeypatch.setattr(train, "splits_from_config", loaded)
    run = shutil.copytree(reviews_run, tmp_path / "run")
    (tmp_path / "afile").write_text("x")
    options = dict(data="sms-spam", model="gpt2-tiny", weights="random")
    with pytest.raises(GptclfError, match=f"--out {run} holds another run"):
        Classifier.train(**options, out=run)
    with pytest.raises(GptclfError, match="afile is a file, not a directory"):
        Classifier.train(**options, out=tmp_path / "afile" / "run")
    with pytest.raises(GptclfError, match="--lr must be a finite number, greater than 0"):
        Classifier.train(**options, out=tmp_path / "new", lr=float("nan"))
    assert not (tmp_path / "new").exists()


def test_the_api_refuses_a_max_length_beyond_the_context(tmp_path):
    """Known once the model is: before training, nothing written."""
    data = write_reviews(tmp_path / "reviews.csv")
    with pytest.raises(GptclfError, match=r"--max-length 2000 .* \(128 tokens\)"):
        Classifier.train(
            data=str(data), text_columns=["review_body"], label_column="sentiment",
            model="gpt2-tiny", weights="random", out=tmp_path / "new", max_length=2000,
        )  # fmt: skip
    assert not (tmp_path / "new").exists()
