"""Training-data options of `fit` each change the run, and the checkpoint remembers truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_tool import reviews, write_reviews
from gptclf.api import Classifier
from gptclf.data import splits_from_config
from gptclf.errors import GptclfError
from gptclf.train import TrainConfig, fit


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """24 negative, 12 neutral, 6 positive reviews."""
    wanted = {"negative": 24, "neutral": 12, "positive": 6}
    rows = []
    for row in reviews(24):
        if wanted[row["sentiment"]] > 0:
            wanted[row["sentiment"]] -= 1
            rows.append(row)
    return write_reviews(tmp_path_factory.mktemp("imbalanced") / "r.csv", rows)


def tiny(data: Path, out: Path | None = None, **kw) -> TrainConfig:
    base = dict(
        model="gpt2-tiny",
        weights="random",
        data=str(data),
        epochs=1,
        lr=1e-3,
        text_columns=["review_body"],
        label_column="sentiment",
        max_length=8,
        progress=False,
        out=str(out) if out else None,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def base(imbalanced: Path) -> dict:
    return fit(tiny(imbalanced))


@pytest.mark.parametrize(
    "option",
    [
        dict(class_weights="auto"),
        dict(class_weights="1,1,5"),
        dict(truncation="tail"),
        dict(truncation="head+tail"),
        dict(balance="undersample"),
    ],
)
def test_each_data_option_changes_the_training_run(
    base: dict, imbalanced: Path, option: dict
) -> None:
    changed = fit(tiny(imbalanced, **option))
    assert base["history"][0]["train_loss"] != pytest.approx(
        changed["history"][0]["train_loss"], rel=1e-4
    )
    if "balance" in option:
        assert changed["train"]["n"] == 3 * 4 < base["train"]["n"]  # 6 positives: 4 in train
    if "class_weights" in option:
        assert changed["class_weights"] is not None and base["class_weights"] is None


def test_checkpoint_truncates_like_training(imbalanced: Path, tmp_path: Path) -> None:
    metrics = fit(tiny(imbalanced, tmp_path / "run", truncation="tail", report=False))
    assert metrics["truncated"]["train"] > 0
    clf = Classifier.load(tmp_path / "run")
    assert clf.truncation == "tail"
    text = "It was " + "great " * 20 + "awful refund."
    assert clf._encode([text])[0] == clf.tokenizer.encode(text)[-clf.info.max_length :]
    _, _, test = splits_from_config(clf.info.train_config)
    assert clf.evaluate(test)["accuracy"] == metrics["test"]["accuracy"]
    assert clf.evaluate(test)["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(truncation="middle"), "--truncation must be one of"),
        (dict(balance="smote"), "--balance must be one of"),
        (dict(split="random"), "--split must be one of"),
        (dict(class_weights="a,b"), "--class-weights"),
    ],
)
def test_bad_options_fail_before_loading(option: dict, message: str) -> None:
    with pytest.raises(GptclfError, match=message):
        TrainConfig(**option)
