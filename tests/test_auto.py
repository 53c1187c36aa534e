"""`--recipe auto` (auto.py) on a tiny random GPT-2: the search, its record, the shared prefix
cache, the time budget and the fallbacks; `--patience` (train.py)."""

import json

import pytest

from gptclf.api import Classifier
from gptclf.auto import fit_auto
from gptclf.cli import main
from gptclf.data import load_dataset, split_book, write_split
from gptclf.errors import GptclfError
from gptclf.train import TrainConfig, fit

GRID = [
    ("top-lr1e-3", {"trainable": "last_block", "lr": 1e-3}),
    ("top-lr3e-3", {"trainable": "last_block", "lr": 3e-3}),
    ("top2-lr1e-3", {"trainable": "last_2", "lr": 1e-3}),
]


def split_dir(tmp_path_factory, n_validation):
    train, val, test = split_book(load_dataset("sms-spam"))
    out = tmp_path_factory.mktemp("split")
    write_split(
        out, train.subset(range(120)), val.subset(range(n_validation)), test.subset(range(40))
    )
    return out


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    return split_dir(tmp_path_factory, 40)


def tiny(data, out=None, **kw):
    base = dict(
        model="gpt2-tiny", weights="random", data=str(data), epochs=2, progress=False,
        out=str(out) if out else None, report=False,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_auto_keeps_the_best_candidate_by_validation_and_records_all(small_split, tmp_path):
    out = tmp_path / "run"
    metrics = fit_auto(tiny(small_split, out), GRID)
    record = metrics["auto"]
    assert [c["name"] for c in record["candidates"]] == [name for name, _ in GRID]
    assert all(c["status"] == "run" for c in record["candidates"])
    best = max(
        record["candidates"], key=lambda c: (c["validation_accuracy"], -c["validation_loss"])
    )
    assert record["winner"] == best["name"] and best["name"] in record["why"]
    assert metrics["validation"]["accuracy"] == best["validation_accuracy"]
    # the lrs of the same depth share one frozen-prefix pass (gpt2-tiny has 2 blocks: the
    # third trains both, nothing is frozen to cache)
    caches = [c["prefix_cache"] for c in record["candidates"]]
    assert caches == ["computed", "read", None]
    # the winner's checkpoint is in --out, with the baseline and the record; no work left behind
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["auto"]["winner"] == record["winner"] and "baseline" in saved["test"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    clf = Classifier.load(out)
    again = clf.evaluate(load_dataset(small_split / "validation.csv"))
    assert again["accuracy"] == best["validation_accuracy"]
    assert clf.info.train_config["trainable"] == dict(GRID)[best["name"]]["trainable"]
    # the recorded settings name --out, not the candidate folder that no longer exists
    assert clf.info.train_config["out"] == str(out)
    assert saved["config"]["train_config"]["out"] == str(out)


def test_budget_skips_candidates_that_would_not_fit(small_split):
    metrics = fit_auto(tiny(small_split, time_budget="0.001s"), GRID, min_seconds=0)
    statuses = [c["status"] for c in metrics["auto"]["candidates"]]
    assert statuses == ["run", "skipped for budget", "skipped for budget"]
    assert "the only one that fit in the time budget" in metrics["auto"]["why"]


def test_budget_too_short_for_one_candidate_is_a_one_line_error(small_split, capsys):
    with pytest.raises(GptclfError, match=r"too short for even one candidate.*at least 1m"):
        fit_auto(tiny(small_split, time_budget="30s"), GRID)
    code = main(["train", "--recipe", "auto", "--time-budget", "10s", "--data", str(small_split)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "at least 1m" in err, err
    with pytest.raises(GptclfError, match="--time-budget must be a positive duration"):
        tiny(small_split, time_budget="ten minutes")


def test_too_little_validation_data_falls_back_to_the_fixed_recipe(tmp_path_factory, caplog):
    data = split_dir(tmp_path_factory, 8)  # 2 classes x 5 = 10 needed
    metrics = fit_auto(tiny(data, epochs=1), GRID)
    assert "fewer than 5 per class" in metrics["auto"]["fallback"]
    assert metrics["config"]["train_config"]["trainable"] == "last_block"  # the given config
    warned = [r for r in caplog.records if "instead of comparing candidates" in r.message]
    assert len(warned) == 1 and "\n" not in warned[0].message


def test_patience_stops_after_epochs_without_a_better_validation_accuracy(small_split):
    # steps too small to change an fp32 weight: epoch 2 is no better, patience 1 stops there
    metrics = fit(tiny(small_split, epochs=5, lr=1e-30, weight_decay=0.0, patience=1))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["best_epoch"] == 1
    with pytest.raises(GptclfError, match="--patience must be at least 1"):
        tiny(small_split, patience=0)


def test_baseline_fits_more_than_two_classes():
    # scikit-learn >= 1.8's liblinear refuses 3+ classes: every multi-class run ended in an error
    from gptclf.baseline import fit_baseline
    from gptclf.data import LabeledTexts

    texts = [f"{w} {w} thing {i}" for i in range(12) for w in ("apple", "rocket", "violin")]
    labels = [i % 3 for i in range(36)]
    split = LabeledTexts(texts, labels, ["fruit", "space", "music"])
    fitted, _ = fit_baseline({"train": split, "validation": split, "test": split}, None, 123)
    assert fitted["test"]["accuracy"] == 1.0
