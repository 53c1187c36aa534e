"""Tests for gptclf.data; pandas is the oracle for parsing, the book's split and to_csv bytes."""

from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gptclf.data
import gptclf.download
from gptclf.data import (
    LabeledTexts,
    download_sms_spam,
    load_dataset,
    load_splits,
    read_sms_spam,
    read_split_file,
    split_book,
    split_book_full,
    split_stratified,
    splits_from_config,
    write_split,
)
from gptclf.errors import GptclfError

BUNDLED = Path(gptclf.data.__file__).parent / "datasets" / "sms_spam" / "SMSSpamCollection"


@pytest.fixture(scope="module")
def sms() -> LabeledTexts:
    return read_sms_spam()


@pytest.fixture(scope="module")
def book_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The book's ch. 6 code, verbatim apart from variable names."""
    df = pd.read_csv(BUNDLED, sep="\t", header=None, names=["Label", "Text"])
    num_spam = df[df["Label"] == "spam"].shape[0]
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=123)
    balanced_df = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    balanced_df["Label"] = balanced_df["Label"].map({"ham": 0, "spam": 1})
    df = balanced_df.sample(frac=1, random_state=123).reset_index(drop=True)
    train_end = int(len(df) * 0.7)
    validation_end = train_end + int(len(df) * 0.1)
    return df[:train_end], df[train_end:validation_end], df[validation_end:]


def test_parse_equals_pandas(sms: LabeledTexts) -> None:
    df = pd.read_csv(BUNDLED, sep="\t", header=None, names=["Label", "Text"])
    assert len(sms) == len(df) == 5572
    assert sms.texts == df["Text"].tolist()
    assert [sms.label_names[y] for y in sms.labels] == df["Label"].tolist()
    assert sms.label_names == ["ham", "spam"]
    # Lines 5082-5084 merge: an unclosed quote on 5082 runs to the end of 5084.
    merged = next(t for t in sms.texts if "VIVEKANAND" in t)
    assert merged.count("\nham\t") == 2


def test_sha256_mismatch(tmp_path: Path) -> None:
    copy = tmp_path / "SMSSpamCollection"
    copy.write_bytes(BUNDLED.read_bytes().replace(b"Ok lar", b"OK lar", 1))
    with pytest.raises(GptclfError, match="sha256"):
        read_sms_spam(copy)
    assert len(read_sms_spam(copy, verify=False)) == 5572
    copy.write_bytes(b"hum\thi\n" + BUNDLED.read_bytes())
    with pytest.raises(GptclfError, match="row 1: label 'hum' is not ham/spam"):
        read_sms_spam(copy, verify=False)


def test_pandas_sample_is_permutation_prefix() -> None:
    a = np.random.RandomState(123).choice(4825, 747, replace=False)
    assert np.array_equal(a, np.random.RandomState(123).permutation(4825)[:747])


def test_split_book_equals_pandas(sms: LabeledTexts, book_frames) -> None:
    splits = split_book(sms)
    assert [len(s) for s in splits] == [1045, 149, 300]
    for ours, frame in zip(splits, book_frames, strict=True):
        assert ours.texts == frame["Text"].tolist()
        assert ours.labels == frame["Label"].tolist()


def test_write_split_equals_pandas_to_csv(sms: LabeledTexts, book_frames, tmp_path: Path) -> None:
    splits = split_book(sms)
    paths = write_split(tmp_path / "out", *splits)
    names = ["train.csv", "validation.csv", "test.csv"]
    assert [p.name for p in paths] == names
    for path, frame, ours in zip(paths, book_frames, splits, strict=True):
        oracle = tmp_path / f"pandas_{path.name}"
        frame.to_csv(oracle, index=None)
        assert path.read_bytes() == oracle.read_bytes()
        back = read_split_file(path)
        assert (back.texts, back.labels, back.label_names) == (
            ours.texts,
            ours.labels,
            ours.label_names,
        )
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted([*names, "label_names.json"])  # no temp files left
    (tmp_path / "out" / "label_names.json").unlink()
    assert read_split_file(paths[0]).label_names == ["0", "1"]


def test_load_splits(sms: LabeledTexts, tmp_path: Path) -> None:
    book = load_splits("sms-spam")
    assert book == split_book(sms)
    assert load_splits("sms-spam", "stratified", seed=5) == split_stratified(sms, seed=5)

    write_split(tmp_path, *book)
    assert load_splits(tmp_path, "ignored for a directory") == book
    with pytest.raises(GptclfError, match="unknown split 'random'"):
        load_splits("sms-spam", "random")
    (tmp_path / "label_names.json").write_text('["ham"]')
    with pytest.raises(GptclfError, match="label_names.json: needs a list of 2"):
        load_splits(tmp_path)


def test_split_seed_fixes_the_split_whatever_the_training_seed():
    base = {"data": "sms-spam", "split": "book"}
    book = splits_from_config({**base, "seed": 123})
    assert splits_from_config({**base, "seed": 5, "split_seed": 123}) == book
    assert splits_from_config({**base, "seed": 5})[0].texts != book[0].texts


def test_split_book_generalizes(sms: LabeledTexts) -> None:
    swapped = LabeledTexts(sms.texts, [1 - y for y in sms.labels], ["spam", "ham"])
    sizes = [len(s) for s in split_book(swapped)]
    assert sizes == [1045, 149, 300]
    with pytest.raises(GptclfError, match="2 classes"):
        split_book(LabeledTexts(["a", "b", "c"], [0, 1, 2], ["x", "y", "z"]))


def test_split_book_full_keeps_the_book_held_out_rows_and_trains_on_the_rest(sms) -> None:
    book_train, book_val, book_test = split_book(sms)
    train, val, test = split_book_full(sms)
    assert (val, test) == (book_val, book_test)  # the same held-out rows, in the same order
    assert train.texts[: len(book_train)] == book_train.texts
    held_out = set(val.texts) | set(test.texts)
    extra = train.texts[len(book_train) :]
    assert extra and not held_out & set(extra)  # no copy of a held-out text joins training
    # Every row of the file is in one split, or was dropped as a copy of a held-out text.
    dropped = Counter(sms.texts) - Counter(train.texts + val.texts + test.texts)
    assert dropped and set(dropped) <= held_out
    assert not Counter(train.texts + val.texts + test.texts) - Counter(sms.texts)
    assert set(extra) <= {t for t, y in zip(sms.texts, sms.labels, strict=True) if y == 0}  # ham
    assert load_splits("sms-spam", "book_full") == (train, val, test)
    assert split_book_full(sms, seed=5)[2] == split_book(sms, seed=5)[2]


def test_split_stratified(sms: LabeledTexts) -> None:
    splits = split_stratified(sms, seed=7)
    again = split_stratified(sms, seed=7)
    assert splits == again
    assert split_stratified(sms, seed=8)[0].texts != splits[0].texts
    # Disjoint and covering: texts replaced by row numbers, so each row is identifiable.
    rows = LabeledTexts([str(i) for i in range(len(sms))], sms.labels, sms.label_names)
    parts = [[int(t) for t in s.texts] for s in split_stratified(rows, seed=7)]
    assert sorted(i for p in parts for i in p) == list(range(len(sms)))
    for part, frac in zip(parts, (0.7, 0.1, 0.2), strict=True):
        assert abs(len(part) - frac * len(sms)) <= 2  # at most 1 off per class
    overall = sum(sms.labels) / len(sms)
    for s in splits:
        assert abs(sum(s.labels) / len(s) - overall) < 0.01
        assert s.labels != sorted(s.labels)  # shuffled, not grouped by class


def test_split_stratified_small_classes() -> None:
    data = LabeledTexts([f"t{i}" for i in range(13)], [0] * 10 + [1] * 3, ["a", "b"])
    for s in split_stratified(data):
        assert set(s.labels) == {0, 1}
    with pytest.raises(GptclfError, match="fractions"):
        split_stratified(data, fractions=(0.5, 0.5, 0.5))


def test_load_dataset_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('Label,Text\nspam,"buy, now"\nham,hi\n', encoding="utf-8")
    data = load_dataset(str(tmp_path / "a.csv"))
    assert (data.texts, data.labels, data.label_names) == (
        ["buy, now", "hi"],
        [1, 0],
        ["ham", "spam"],
    )
    (tmp_path / "b.tsv").write_text("Text\tLabel\nhello\t2\nbye\t0\n", encoding="utf-8")
    data = load_dataset(tmp_path / "b.tsv")
    # Integer labels name classes by value (no empty class "1"), in numeric order.
    assert (data.texts, data.labels, data.label_names) == (["hello", "bye"], [1, 0], ["0", "2"])
    assert len(load_dataset("sms-spam")) == 5572


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"Label,Body\n0,hi\n", r"bad\.csv: missing column 'Text'"),
        (b"Label,Text\n0,hi\n1,  \n", r"bad\.csv, row 2 \(line 3\): empty Text"),
        (b"Label,Text\n0,hi\n1,caf\xe9\x81\n", r"bad\.csv: neither UTF-8 \(line 3.*--encoding"),
        (b"Label,Text\n0,hi,extra\n", r"bad\.csv, row 1 \(line 2\): expected 2 fields, got 3"),
        (b"Label,Text\n,hi\n", "empty Label"),
        (b"Label,Text\n", "no data rows"),
        (b"", "empty file"),
    ],
)
def test_bad_csv(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(GptclfError, match=match):
        load_dataset(str(tmp_path / "bad.csv"))


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(GptclfError, match=r"not found: .*nope\.csv"):
        load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(GptclfError, match="unknown dataset 'imdb', known: sms-spam"):
        load_dataset("imdb")


def _zip(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("SMSSpamCollection", member)
        zf.writestr("readme", b"readme")
        zf.writestr("../evil", b"must not be extracted")
    return path


@pytest.fixture
def fake_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``download_file`` copies ``tmp_path/served.zip``; returns the list of requested URLs."""
    monkeypatch.setenv("GPTCLF_HOME", str(tmp_path / "home"))
    calls: list[str] = []

    def download_file(url: str, dest: Path, *, sha256=None, progress=True) -> Path:
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "served.zip", dest)
        return dest

    monkeypatch.setattr(gptclf.download, "download_file", download_file)
    return calls


def test_download_sms_spam(tmp_path: Path, fake_download: list[str]) -> None:
    _zip(tmp_path / "served.zip", BUNDLED.read_bytes())
    path = download_sms_spam()
    assert path == tmp_path / "home" / "datasets" / "SMSSpamCollection"
    assert path.read_bytes() == BUNDLED.read_bytes()
    assert fake_download == [
        "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
    ]
    assert not (tmp_path / "home" / "evil").exists()
    assert download_sms_spam() == path and len(fake_download) == 1  # cached
    assert len(load_dataset("sms-spam-uci")) == 5572


def test_download_sms_spam_bad_checksum(tmp_path: Path, fake_download: list[str]) -> None:
    _zip(tmp_path / "served.zip", BUNDLED.read_bytes()[:-10])
    with pytest.raises(GptclfError, match="sha256"):
        download_sms_spam()
    assert not (tmp_path / "home" / "datasets" / "SMSSpamCollection").exists()
    (tmp_path / "served.zip").write_bytes(b"not a zip")
    with pytest.raises(GptclfError, match="not a readable zip"):
        download_sms_spam()


# --- user tables: any columns, any labels, given validation/test files ----------------------


def _reviews(tmp_path: Path, name: str = "r.csv", n: int = 10, **kw) -> Path:
    from fixtures_tool import reviews, write_reviews

    return write_reviews(tmp_path / name, reviews(n, **kw))


def test_load_dataset_with_columns(tmp_path: Path) -> None:
    csv_data = load_dataset(_reviews(tmp_path), ["headline", "review_body"], "sentiment")
    assert csv_data.label_names == ["negative", "neutral", "positive"]
    assert len(csv_data) == 30 and "\n" in csv_data.texts[0]
    jsonl = load_dataset(_reviews(tmp_path, "r.jsonl"), ["HEADLINE", "review_body"], "Sentiment")
    assert jsonl == csv_data  # same reader, same result, case-insensitive column names
    (tmp_path / "stars.jsonl").write_text(
        '{"t": "a", "stars": 5}\n{"t": "b", "stars": 1.0}\n{"t": "c", "stars": 10}\n'
    )
    stars = load_dataset(tmp_path / "stars.jsonl", ["t"], "stars")
    assert stars.label_names == ["1", "5", "10"] and stars.labels == [1, 0, 2]  # numeric order
    with pytest.raises(GptclfError, match=r"missing column 'Text' \(columns: 'id', 'review_body'"):
        load_dataset(_reviews(tmp_path))


def test_auto_split_is_stratified_for_files(tmp_path: Path) -> None:
    data = _reviews(tmp_path)
    cols = dict(text_columns=["review_body"], label_column="sentiment")
    train, val, test = load_splits(data, seed=3, **cols)
    assert (len(train), len(val), len(test)) == (21, 3, 6)
    assert (train, val, test) == load_splits(data, "stratified", seed=3, **cols)
    assert load_splits(data, seed=4, **cols)[0] != train


def test_validation_and_test_files(tmp_path: Path) -> None:
    cols = dict(text_columns=["review_body"], label_column="sentiment")
    data, val_file = _reviews(tmp_path, "train.csv"), _reviews(tmp_path, "val.jsonl", n=2, seed=1)
    (tmp_path / "test.csv").write_text("review_body,sentiment\nfine,neutral\nbad,negative\n")
    train, val, test = load_splits(data, validation=val_file, test=tmp_path / "test.csv", **cols)
    assert (len(train), len(val), len(test)) == (30, 6, 2)
    assert test.label_names == train.label_names and test.labels == [1, 0]  # mapped by name
    train, val, test = load_splits(data, test=tmp_path / "test.csv", **cols)  # validation split off
    assert (len(train), len(val), len(test)) == (27, 3, 2)
    train, val, test = load_splits(data, validation=val_file, **cols)  # test split off
    assert (len(train), len(val), len(test)) == (24, 6, 6)
    (tmp_path / "test.csv").write_text("review_body,sentiment\nhm,mixed\n")
    with pytest.raises(
        GptclfError, match=r"test.csv: label\(s\) 'mixed' do not occur in the train"
    ):
        load_splits(data, test=tmp_path / "test.csv", **cols)


def test_bad_label_sets(tmp_path: Path) -> None:
    (tmp_path / "one.csv").write_text("Text,Label\n" + "".join(f"t{i},pos\n" for i in range(9)))
    with pytest.raises(GptclfError, match=r"single class \('pos'\); a classifier needs at least 2"):
        load_splits(tmp_path / "one.csv")
    (tmp_path / "tiny.csv").write_text("Text,Label\na,x\nb,y\n")
    with pytest.raises(GptclfError, match="the validation split is empty"):
        load_splits(tmp_path / "tiny.csv")
    with pytest.raises(GptclfError, match="unknown balance"):
        load_splits(tmp_path / "tiny.csv", balance="oversample")


def test_undersample_and_class_weights(caplog: pytest.LogCaptureFixture) -> None:
    from gptclf.balance import class_weights, undersample

    data = LabeledTexts([f"t{i}" for i in range(13)], [0] * 9 + [1] * 3 + [2] * 1, list("abc"))
    balanced = undersample(data, seed=1)
    assert sorted(balanced.labels) == [0, 1, 2]
    assert set(balanced.texts) <= set(data.texts) and balanced == undersample(data, seed=1)
    assert class_weights("none", data) is None
    assert class_weights("auto", data) == pytest.approx([13 / 27, 13 / 9, 13 / 3])
    assert class_weights("1,2,0.5", data) == [1.0, 2.0, 0.5]
    for spec, match in (("1,2", "3 classes"), ("x", "auto, none or numbers"), ("0,0,0", "one pos")):
        with pytest.raises(GptclfError, match=match):
            class_weights(spec, data)
    train, _, _ = load_splits("sms-spam", "stratified", balance="undersample")
    assert train.labels.count(0) == train.labels.count(1) == 523
