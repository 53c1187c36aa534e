"""The command line: happy paths on a tiny model, and bad input → one line on stderr, exit 2."""

import json
import subprocess
import sys

import pytest

from gptclf.cli import main
from gptclf.data import load_dataset, split_book, write_split


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train, val, test = split_book(load_dataset("sms-spam"))
    write_split(
        root / "split", train.subset(range(64)), val.subset(range(24)), test.subset(range(24))
    )
    code = main(
        [
            "train",
            "--model",
            "gpt2-tiny",
            "--weights",
            "random",
            "--data",
            str(root / "split"),
            "--epochs",
            "1",
            "--out",
            str(root / "run"),
            "--no-progress",
        ]
    )
    assert code == 0
    return root


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_prints_metrics(trained):
    metrics = json.loads((trained / "run" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 24


def test_evaluate_default_and_file(trained, capsys):
    code, out, _ = run_cli(capsys, "evaluate", str(trained / "run"))
    assert code == 0
    result = json.loads(out)
    saved = json.loads((trained / "run" / "metrics.json").read_text())
    assert result["test"]["accuracy"] == saved["test"]["accuracy"]
    code, out, _ = run_cli(
        capsys,
        "evaluate",
        str(trained / "run"),
        "--data",
        str(trained / "split" / "validation.csv"),
    )
    assert code == 0 and json.loads(out)["n"] == 24


def test_predict_arguments_and_stdin(trained, capsys, monkeypatch):
    code, out, _ = run_cli(capsys, "predict", str(trained / "run"), "Free entry!!", "hi mum")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [x["text"] for x in lines] == ["Free entry!!", "hi mum"]
    assert all(set(x) >= {"text", "label", "probability"} for x in lines)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("one\n\ntwo\n"))
    code, out, _ = run_cli(capsys, "predict", str(trained / "run"))
    assert code == 0 and len(out.splitlines()) == 2


def test_data_split_command(tmp_path, capsys):
    code, out, _ = run_cli(
        capsys, "data", "split", "--data", "sms-spam", "--split", "book", "--out", str(tmp_path)
    )
    assert code == 0 and json.loads(out)["train"] == 1045
    header = (tmp_path / "test.csv").read_text().splitlines()[0]
    assert header == "Label,Text"
    assert len(load_dataset(tmp_path / "test.csv")) == 300


def bad(tmp_path):
    (tmp_path / "malformed.csv").write_text('Label,Text\n0,"never closed\n1,x\n')
    (tmp_path / "nolabel.csv").write_text("Category,Text\nham,hello\n")
    (tmp_path / "empty.csv").write_text("Label,Text\nham,hello\nspam,\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "gpt5-giant", "--weights", "random"], "unknown model"),
        (["train", "--data", "{tmp}/missing.csv"], "not found"),
        (["train", "--data", "{tmp}/malformed.csv"], "malformed"),
        (["train", "--data", "{tmp}/nolabel.csv"], "missing column"),
        (["train", "--data", "{tmp}/empty.csv"], "empty"),
        (
            ["train", "--model", "gpt2-tiny", "--weights", "random", "--trainable", "last_9"],
            "blocks",
        ),
        (["train", "--epochs", "0"], "epochs"),
        (["train", "--layers", "0"], "--layers must be at least 1, got 0"),
        (
            ["train", "--model", "gpt2-tiny", "--weights", "random", "--layers", "3"],
            "--layers must be in [1, 2] (gpt2-tiny has 2 blocks), got 3",
        ),
        (["evaluate", "{tmp}/ckpt"], "config.json: not valid json"),
        (["evaluate", "{tmp}/nowhere"], "does not exist"),
        (["predict", "{tmp}/ckpt", "hello"], "config.json: not valid json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    bad(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + (
        ["--no-progress"] if argv[0] == "train" else []
    )
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert len(lines) == 1 and lines[0].startswith("gptclf: error:"), err
    assert message in lines[0].lower()


def test_predict_empty_text_is_an_error(trained, capsys):
    code, _, err = run_cli(capsys, "predict", str(trained / "run"), "   ")
    assert code == 2 and "empty" in err


def test_installed_command_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gptclf", "evaluate", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("gptclf: error:") and "Traceback" not in proc.stderr


def test_recipe_sets_defaults_and_flags_override_them():
    from gptclf.cli import build_parser

    book = build_parser("book").parse_args(["train"])
    recipe = build_parser("smollm2").parse_args(["train", "--recipe", "smollm2"])
    assert (book.model, book.bucket) == ("gpt2-small", True)
    assert (recipe.model, recipe.trainable, recipe.bucket) == (
        "smollm2-135m",
        "last_two_blocks",
        False,
    )
    again = build_parser("smollm2").parse_args(["train", "--recipe", "smollm2", "--bucket"])
    assert again.bucket is True and again.lr == recipe.lr == 2e-4
    assert build_parser("book").parse_args(["train", "--no-bucket"]).bucket is False


def test_train_without_model_or_recipe_is_the_smollm2_recipe():
    from gptclf.cli import parse_args
    from gptclf.train_config import RECIPES, TrainConfig, config_for

    plain = parse_args(["train"])
    for key, value in RECIPES["smollm2"].items():
        assert getattr(plain, key) == value
    # a run that names its model keeps the book's defaults for the rest, as before
    named = parse_args(["train", "--model", "gpt2-tiny"])
    assert (named.model, named.trainable, named.lr) == ("gpt2-tiny", "last_block", 5e-5)
    assert parse_args(["train", "--recipe", "book"]).model == TrainConfig().model == "gpt2-small"
    # the Python API resolves the recipe the same way
    assert config_for(out=None).model == "smollm2-135m"
    assert config_for(model="gpt2-tiny", out=None).trainable == "last_block"
    assert config_for("smollm2", model="gpt2-tiny", out=None).trainable == "last_two_blocks"
