"""Cross-validation (cv.py) on the tiny random GPT-2: stratified folds, one frozen-prefix pass for
every fold, the cv.json record, --resume, bad input; and duplicate-aware accuracy
(`data.unseen_indices`, `metrics.test.unseen_accuracy`) on the book's split and in a run."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from fixtures_tool import TRAIN_FLAGS, write_reviews
from gptclf import cv
from gptclf.api import Classifier
from gptclf.classifier import SequenceClassifier
from gptclf.cli import main
from gptclf.data import (
    LabeledTexts,
    load_dataset,
    normalized_text,
    split_book,
    split_book_full,
    unseen_indices,
    write_split,
)
from gptclf.errors import GptclfError
from gptclf.train import TrainConfig, fit

COLUMNS = ["--text-column", "review_body", "--label-column", "sentiment"]
FOLDS = 3


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """90 reviews, 30 per class: the stratified split's train + validation are 72 texts."""
    return write_reviews(tmp_path_factory.mktemp("cv") / "reviews.csv")


def cv_argv(data, out, *extra):
    flags = list(TRAIN_FLAGS)
    flags[flags.index("--epochs") + 1] = "1"  # one epoch is enough here
    return ["cv", "--data", str(data), *COLUMNS, *flags, "--folds", str(FOLDS), "--out", str(out),
            *extra]  # fmt: skip


def counting_prefix(monkeypatch):
    """Rows that pass through the frozen prefix (`SequenceClassifier.prefix_states`)."""
    rows = []
    original = SequenceClassifier.prefix_states

    def counted(self, input_ids, attention_mask, stop):
        rows.append(len(input_ids))
        return original(self, input_ids, attention_mask, stop)

    monkeypatch.setattr(SequenceClassifier, "prefix_states", counted)
    return rows


@pytest.fixture(scope="module")
def cv_run(reviews, tmp_path_factory):
    """`gptclf cv` run once: (out dir, exit code, stdout, prefix rows)."""
    out = tmp_path_factory.mktemp("cv_out")
    with pytest.MonkeyPatch.context() as mp:
        rows = counting_prefix(mp)
        printed = io.StringIO()
        with redirect_stdout(printed):
            code = main(cv_argv(reviews, out))
    return out, code, printed.getvalue(), rows


def test_folds_are_stratified_deterministic_and_cover_every_text():
    labels = [0] * 50 + [1] * 13 + [2] * 7
    folds = cv.stratified_folds(labels, 5, seed=1)
    assert (folds == cv.stratified_folds(labels, 5, seed=1)).all()
    assert not (folds == cv.stratified_folds(labels, 5, seed=2)).all()
    sizes = np.bincount(folds, minlength=5)
    assert sizes.sum() == 70 and sizes.max() - sizes.min() <= 1
    for c, n in ((0, 50), (1, 13), (2, 7)):
        per_fold = np.bincount(folds[np.asarray(labels) == c], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1 and per_fold.min() >= 1


def test_the_bundled_data_cross_validates_the_books_train_and_validation_texts():
    pool, share, n = cv.cv_pool(TrainConfig())
    train, validation, test = split_book(load_dataset("sms-spam"))
    assert len(pool) == n == 1194 == len(train) + len(validation)
    assert pool.texts == train.texts + validation.texts
    assert share == pytest.approx(149 / 1194)
    # every fold: an inner validation split of the training folds, the held-out fold apart
    assignment = cv.assign_folds(pool, n, 5, 123)
    assert (assignment == cv.stratified_folds(pool.labels, 5, 123)).all()
    index = cv.fold_indices(pool, assignment, 0, share, 123, TrainConfig())
    assert sorted(np.concatenate(list(index.values()))) == list(range(1194))
    assert len(index["test"]) in (238, 239) and abs(len(index["validation"]) - 119) <= 1


def test_book_full_cross_validates_the_same_texts_and_only_trains_on_the_rest():
    """The same 1,194 texts and folds as the book's split; the messages the book leaves out
    join every fold's training split, never held out, and none is a copy of a held-out text."""
    book, book_share, book_n = cv.cv_pool(TrainConfig())
    cfg = TrainConfig(split="book_full", class_weights="auto")
    pool, share, n = cv.cv_pool(cfg)
    assert (n, share) == (book_n, book_share) and pool.texts[:n] == book.texts
    assert pool.labels[:n] == book.labels
    full_train, _validation, _test = split_book_full(load_dataset("sms-spam"))
    assert len(pool) - n > 3900 and set(pool.texts[n:]) <= set(full_train.texts)
    assert not {normalized_text(t) for t in pool.texts[n:]} & {
        normalized_text(t) for t in pool.texts[:n]
    }
    assignment = cv.assign_folds(pool, n, 5, 123)
    assert (assignment[:n] == cv.assign_folds(book, book_n, 5, 123)).all()
    assert (assignment[n:] == -1).all()
    for k in range(5):
        index = cv.fold_indices(pool, assignment, k, share, 123, cfg)
        assert (index["test"] == np.flatnonzero(assignment == k)).all()
        assert set(range(n, len(pool))) <= set(index["train"].tolist())
        assert max(index["validation"]) < n  # the inner validation split: book texts only
        assert sorted(np.concatenate(list(index.values()))) == list(range(len(pool)))
    record = cv.new_record(cfg, 5, pool, assignment, inner=True)
    assert (record["texts"], record["only_train"]) == (n, len(pool) - n)
    assert sum(record["class_counts"].values()) == n


def test_book_full_cv_runs_end_to_end_on_a_users_file(tmp_path):
    """A file with a 3:1 class imbalance: the book split's balanced texts are cross-validated,
    the rest of the larger class trains in every fold and is never scored."""
    rows = [f"ham,hello friend number {i} see you later" for i in range(48)]
    rows += [f"spam,win cash prize {i} now call" for i in range(16)]
    data = tmp_path / "texts.csv"
    data.write_text("label,text\n" + "\n".join(rows) + "\n")
    record = Classifier.cross_validate(
        folds=2, data=str(data), split="book_full", class_weights="auto", model="gpt2-tiny",
        weights="random", epochs=1, max_length=12, progress=False, out=None,
    )  # fmt: skip
    train, validation, _test = split_book(load_dataset(data, ["text"], "label"))
    n = len(train) + len(validation)
    assert record["complete"] and record["texts"] == n
    assert record["only_train"] == 32  # the ham the book split leaves out
    assert record["class_counts"] == {
        name: sum(1 for y in train.labels + validation.labels if y == i)
        for i, name in enumerate(train.label_names)
    }
    assert record["pooled"]["n"] == n
    held = sorted(i for f in record["per_fold"] for i in f["held_out"])
    assert held == list(range(n))
    for f in record["per_fold"]:
        sizes = f["sizes"]
        assert sizes["train"] + sizes["validation"] == n - sizes["test"] + record["only_train"]


def test_select_last_trains_on_every_training_fold_and_undersampling_stays_in_them():
    pool = LabeledTexts([f"text {i}" for i in range(60)], [0] * 45 + [1] * 15, ["ham", "spam"])
    assignment = cv.stratified_folds(pool.labels, 3, 7)
    last = cv.fold_indices(pool, assignment, 1, None, 7, TrainConfig(select="last"))
    assert (last["validation"] == last["test"]).all()  # recorded only: nothing is chosen on it
    assert sorted([*last["train"], *last["test"]]) == list(range(60))
    balanced = cv.fold_indices(pool, assignment, 1, 0.125, 7, TrainConfig(balance="undersample"))
    labels = np.asarray(pool.labels)
    assert np.bincount(labels[balanced["train"]]).tolist() == [9, 9]  # 10 spam, 1 to validation
    assert np.bincount(labels[balanced["test"]]).tolist() == [15, 5]  # held out: as it comes
    assert not set(balanced["train"]) & set(balanced["test"])


def test_cv_trains_every_fold_from_one_prefix_pass_and_writes_the_record(cv_run):
    out, code, printed, prefix_rows = cv_run
    assert code == 0
    record = json.loads((out / "cv.json").read_text())
    assert record["complete"] and record["folds"] == FOLDS and record["texts"] == 72
    # the frozen block 0 ran once per text, for all folds together
    assert sum(prefix_rows) == 72 and record["prefix_cache"]["status"] == "computed"
    held = sorted(i for f in record["per_fold"] for i in f["held_out"])
    assert held == list(range(72))  # each text held out exactly once
    for f in record["per_fold"]:
        assert f["sizes"]["test"] == 24 and f["sizes"]["train"] + f["sizes"]["validation"] == 48
        assert f["unseen_count"] == 24  # the reviews repeat no text
    pooled = record["pooled"]
    right = sum(f["accuracy"] * f["n"] for f in record["per_fold"])
    assert pooled["n"] == 72 and pooled["accuracy"] == pytest.approx(right / 72)
    accuracies = [f["accuracy"] for f in record["per_fold"]]
    assert record["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert record["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    lines = printed.strip().splitlines()
    assert lines[0].split()[:3] == ["fold", "train", "valid"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3", "mean", "pooled", "written:"]
    assert f"{100 * pooled['accuracy']:.2f}" in lines[-2]
    assert not list(out.glob("*.tmp")) and not (out / "model.safetensors").exists()


def test_a_fold_gathered_from_the_shared_prefix_trains_as_without_a_cache(reviews):
    """The smollm2 recipe's batching (dynamic padding, last real token): the fold's states
    gathered from the pool's are the states the uncached model computes."""
    options = dict(
        data=str(reviews), text_columns=["review_body"], label_column="sentiment",
        model="gpt2-tiny", weights="random", epochs=1, lr=1e-3, max_length=12, padding="dynamic",
        pool="last_real", progress=False, out=None,
    )  # fmt: skip
    cached = Classifier.cross_validate(folds=2, **options)
    uncached = Classifier.cross_validate(folds=2, cache=False, **options)
    assert cached["prefix_cache"]["from_block"] == 1 and uncached["prefix_cache"] is None
    for a, b in zip(cached["per_fold"], uncached["per_fold"], strict=True):
        assert a["held_out"] == b["held_out"]
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)


def test_resume_keeps_the_folds_done_and_refuses_other_settings(
    cv_run, reviews, tmp_path, monkeypatch, capsys
):
    out, _, _, _ = cv_run
    full = json.loads((out / "cv.json").read_text())
    partial = {**full, "complete": False, "per_fold": full["per_fold"][:1]}
    (tmp_path / "cv.json").write_text(json.dumps(partial))
    trained = []
    original = cv.train_fold
    monkeypatch.setattr(cv, "train_fold", lambda *a: trained.append(1) or original(*a))
    assert main(cv_argv(reviews, tmp_path, "--resume")) == 0
    resumed = json.loads((tmp_path / "cv.json").read_text())
    assert len(trained) == FOLDS - 1 and resumed["complete"]
    assert resumed["pooled"]["accuracy"] == pytest.approx(full["pooled"]["accuracy"])
    capsys.readouterr()
    assert main(cv_argv(reviews, tmp_path, "--resume", "--lr", "0.01")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings, folds or texts" in err[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--folds", "1"], "--folds must be an integer of at least 2, got 1"),
        (["--folds", "25"], "--folds 25 is more than the rarest class has texts"),
        (["--recipe", "auto"], "cv cross-validates one configuration"),
    ],
)
def test_bad_folds_are_one_line_errors(reviews, tmp_path, capsys, extra, message):
    argv = cv_argv(reviews, tmp_path / "out", *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptclf: error: ") and message in err[0]
    assert "Traceback" not in "".join(err) and not (tmp_path / "out").exists()


def test_cross_validate_refuses_what_it_does_not_do(reviews):
    with pytest.raises(GptclfError, match="unknown training option"):
        Classifier.cross_validate(folds=2, epoch=1)
    with pytest.raises(GptclfError, match="rarest class"):  # 24 per class in the pool
        Classifier.cross_validate(
            folds=30, data=str(reviews), text_columns=["review_body"], label_column="sentiment"
        )


def test_unseen_texts_are_compared_after_whitespace_and_case():
    assert normalized_text("  Free  ENTRY\n now ") == "free entry now"
    train = ["Win a prize now", "see you at 5"]
    texts = ["win a  PRIZE now ", "See you at 6", "see you at 5"]
    assert unseen_indices(train, texts) == [1]


def test_the_books_test_split_overlaps_its_training_split():
    """The counts docs/RESULTS.md states (issue #20): exact copies, then normalised."""
    train, validation, test = split_book(load_dataset("sms-spam"))

    def copied(split_texts, same):
        seen = {same(t) for t in split_texts}
        return [i for i, t in enumerate(test.texts) if same(t) in seen]

    exact = copied(train.texts, str)
    assert len(exact) == 37 and sum(test.labels[i] for i in exact) == 33  # spam = 1
    assert len(copied(train.texts + validation.texts, str)) == 41
    assert len(set(test.texts)) == len({normalized_text(t) for t in test.texts}) == 293
    normalised = copied(train.texts, normalized_text)
    assert len(normalised) == 40 and sum(test.labels[i] for i in normalised) == 36
    assert len(copied(train.texts + validation.texts, normalized_text)) == 44
    assert len(unseen_indices(train.texts, test.texts)) == 300 - 40


def test_a_run_records_its_accuracy_on_the_test_texts_it_has_not_seen(tmp_path):
    train, validation, test = split_book(load_dataset("sms-spam"))
    train, validation = train.subset(range(80)), validation.subset(range(20))
    test = test.subset(range(20))
    copies = [3, 7, 11]  # test texts 0-2 become copies of training texts, spacing and case changed
    test.texts[:3] = [f" {train.texts[i].upper()}  " for i in copies]
    test.labels[:3] = [train.labels[i] for i in copies]
    write_split(tmp_path / "split", train, validation, test)
    metrics = fit(
        TrainConfig(
            model="gpt2-tiny", weights="random", data=str(tmp_path / "split"), epochs=1,
            max_length=12, progress=False, out=None, report=False, baseline=False,
        )
    )  # fmt: skip
    seen = {normalized_text(t) for t in train.texts}
    unseen = [i for i, t in enumerate(test.texts) if normalized_text(t) not in seen]
    assert not {0, 1, 2} & set(unseen) and len(unseen) >= 15  # the SMS data repeats a few more
    result = metrics["test"]
    assert result["unseen_count"] == len(unseen)
    wrong = set(result["misclassified"]) & set(unseen)
    assert result["unseen_accuracy"] == pytest.approx(1 - len(wrong) / len(unseen))
