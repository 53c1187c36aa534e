"""Labelled text datasets and their train/validation/test splits (no tokenization here).

Sources: the bundled SMS Spam Collection v.1, the same file from UCI, or a user table (CSV, TSV,
JSONL, Parquet; read by ``tables.py``) with any text column(s) and label column (default ``Text``
and ``Label``). ``split_book`` reproduces the split of Raschka, *Build a Large Language Model (From
Scratch)*, ch. 6 row for row; ``write_split`` writes it as the book's ``train.csv``,
``validation.csv`` and ``test.csv`` (byte-identical to pandas' ``to_csv``). ``split_stratified``
keeps class ratios; ``undersample`` and ``class_weights`` handle imbalanced training data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gptclf import multilabel, tables
from gptclf.choices import BALANCE_MODES, SPLIT_MODES
from gptclf.errors import GptclfError
from gptclf.fileio import atomic_write_many, write_bytes

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

logger = logging.getLogger(__name__)

SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_FILE = "SMSSpamCollection"
SMS_SPAM_LABELS = ["ham", "spam"]
BUNDLED_DATASETS = ("sms-spam", "sms-spam-uci")
KNOWN_DATASETS = "sms-spam, sms-spam-uci, or a path to a .csv/.tsv/.jsonl/.parquet file"
SPLIT_NAMES = ("train", "validation", "test")
# auto: book on the SMS data, else stratified. book_full: the book's validation and test, and
# every other row trains (see split_book_full).
LABEL_NAMES_FILE = "label_names.json"  # beside the split CSVs, whose labels are 0/1
DEFAULT_TEXT_COLUMNS = ("Text",)
DEFAULT_LABEL_COLUMN = "Label"
_MAX_MEMBER_BYTES = 50 * 2**20  # the real member is 478 kB; refuse zip bombs


@dataclass
class LabeledTexts:
    """Texts with integer labels; ``label_names[i]`` names label ``i``.

    ``multi_label``: each text has zero or more labels, and ``labels`` holds a 0/1 row per text
    (one column per label name; ``targets`` as an (N, L) array)."""

    texts: list[str]
    labels: list[int] | list[list[int]]
    label_names: list[str]
    multi_label: bool = False

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise GptclfError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.multi_label:
            width = len(self.label_names)
            if any(len(row) != width or not set(row) <= {0, 1} for row in self.labels):
                raise GptclfError(f"multi-label rows must be {width} zeros and ones")
            return
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise GptclfError(f"label {bad[0]} is outside label_names {self.label_names}")

    @property
    def targets(self) -> np.ndarray:
        """Multi-label: the (N, L) 0/1 matrix of the labels."""
        return np.asarray(self.labels, dtype=np.int64).reshape(len(self.labels), -1)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledTexts:
        """The rows at ``indices``, in that order (same ``label_names``)."""
        idx = [int(i) for i in indices]
        return LabeledTexts(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            list(self.label_names),
            self.multi_label,
        )


def normalized_text(text: str) -> str:
    """A text as duplicate checks compare it: runs of whitespace made one space, the ends
    stripped, the case folded (the SMS data repeats messages, some with a trailing space)."""
    return " ".join(text.split()).casefold()


def unseen_indices(train_texts: Sequence[str], texts: Sequence[str]) -> list[int]:
    """Indices of the `texts` that have no copy among `train_texts` (by `normalized_text`): the
    texts a classifier cannot get right by recalling a training example."""
    seen = {normalized_text(t) for t in train_texts}
    return [i for i, text in enumerate(texts) if normalized_text(text) not in seen]


def read_sms_spam(path: Path | None = None, verify: bool = True) -> LabeledTexts:
    """Read the SMS Spam Collection (``label<TAB>text`` lines; ham → 0, spam → 1).

    ``path=None`` reads the bundled copy. With ``verify``, the file's sha256 must equal the bundled
    ``SHA256SUMS`` entry. Parsed as ``pandas.read_csv(path, sep="\\t", header=None)`` does, quotes
    included: a ``"`` opening a text spans lines until it closes, so 5,574 lines give 5,572 rows.
    """
    source = str(path) if path is not None else f"bundled {SMS_SPAM_FILE}"
    raw = _read_bytes(Path(path)) if path is not None else _bundled(SMS_SPAM_FILE).read_bytes()
    if verify:
        _check_sha256(raw, _bundled_sha256(SMS_SPAM_FILE), source)
    names, texts = _parse(raw, source, "\t", header=["Label", "Text"])
    if bad := [i for i, y in enumerate(names) if y not in SMS_SPAM_LABELS]:
        raise GptclfError(f"{source}, row {bad[0] + 1}: label {names[bad[0]]!r} is not ham/spam")
    return LabeledTexts(texts, [SMS_SPAM_LABELS.index(y) for y in names], list(SMS_SPAM_LABELS))


def download_sms_spam() -> Path:
    """Download the UCI zip (the book's source) into ``cache_dir()/datasets`` and extract it.

    Only the ``SMSSpamCollection`` member is read, and it must match the bundled sha256. Returns
    the extracted file; a later call reuses it without downloading.
    """
    from gptclf.download import cache_dir, download_file

    directory = cache_dir() / "datasets"
    target = directory / SMS_SPAM_FILE
    expected = _bundled_sha256(SMS_SPAM_FILE)
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return target
    archive = download_file(SMS_SPAM_URL, directory / "sms_spam_collection.zip")
    try:
        raw = _zip_member(archive, SMS_SPAM_FILE)
        _check_sha256(raw, expected, f"{archive.name}:{SMS_SPAM_FILE}")
    except GptclfError:
        archive.unlink(missing_ok=True)  # download_file would otherwise reuse the bad zip
        raise
    write_bytes(target, raw)
    logger.info("extracted %s", target)
    return target


def load_dataset(
    name: str | Path,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    label_sep: str | None = None,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> LabeledTexts:
    """Load ``"sms-spam"`` (bundled), ``"sms-spam-uci"`` (downloaded) or a table file.

    A file (CSV, TSV, JSONL, Parquet) needs a header with the label column (default ``Label``) and
    the text column(s) (default ``Text``; several are joined by a newline); names match exactly,
    else case-insensitively. Integer labels (``1``, ``1.0``) are named by their value and ordered
    numerically, or, with a ``label_names.json`` list beside the file (``write_split``), are class
    indices into it; other labels are names, numbered in sorted order.

    ``label_sep``: multi-label data, each label cell holding zero or more labels separated by it
    (``multilabel.py``); the label names are then every label seen, sorted.
    ``encoding``, ``delimiter``: the file's, if not UTF-8 and the suffix's (``tables.py``).
    """
    dialect = {"encoding": encoding, "delimiter": delimiter}
    if label_sep is not None:
        return _read_multilabel_table(name, text_columns, label_column, label_sep, **dialect)
    if name == "sms-spam":
        return read_sms_spam()
    if name == "sms-spam-uci":
        return read_sms_spam(download_sms_spam())
    path = Path(name)
    if path.suffix.lower() not in tables.FORMATS:
        raise GptclfError(f"unknown dataset {str(name)!r}, known: {KNOWN_DATASETS}")
    return _read_table(path, text_columns, label_column, **dialect)


def read_split_file(path: Path, label_sep: str | None = None) -> LabeledTexts:
    """Read a file written by ``write_split`` (label names from its ``label_names.json``), or
    with ``label_sep`` a multi-label ``Label,Text`` file."""
    if label_sep is not None:
        return _read_multilabel_table(path, None, None, label_sep)
    return _read_table(Path(path))


def load_splits(
    data: str | Path,
    split: str = "auto",
    seed: int = 123,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    balance: str = "none",
    label_sep: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """Train, validation and test sets from ``data``.

    A directory written by ``write_split`` is read back as is. Otherwise ``data`` is loaded with
    ``load_dataset`` and split by ``split`` with ``seed``: ``book``, ``stratified``, or ``auto``
    (book on the SMS data, else stratified). Given ``validation`` and/or ``test`` files, those are
    used instead and only what is missing is split off ``data`` (stratified); their labels must
    all occur in ``data``. ``balance="undersample"`` then undersamples the training set only.
    ``label_sep``: multi-label data (``load_dataset``), split by iterative stratification.
    ``encoding``, ``delimiter``: of ``data`` and the given files (``load_dataset``).
    """
    if balance not in BALANCE_MODES:
        raise GptclfError(f"unknown balance {balance!r}, known: {', '.join(BALANCE_MODES)}")
    if label_sep is not None:
        check_multilabel_options(data, split, balance)
    path = Path(data)
    dialect = {"encoding": encoding, "delimiter": delimiter}  # of user tables, not split dirs
    if str(data) not in BUNDLED_DATASETS and path.is_dir():
        splits = [read_split_file(path / f"{name}.csv", label_sep) for name in SPLIT_NAMES]
    elif validation is not None or test is not None:
        full = load_dataset(data, text_columns, label_column, label_sep, **dialect)
        given = [
            None
            if f is None
            else align_labels(
                load_dataset(f, text_columns, label_column, label_sep, **dialect),
                full.label_names,
                str(f),
            )
            for f in (validation, test)
        ]
        if given[0] is None:  # only a test file: split validation off, 7:1
            fractions = (0.7 / 0.8, 0.1 / 0.8, 0.0)
        elif given[1] is None:  # only a validation file: split test off, 7:2
            fractions = (0.7 / 0.9, 0.0, 0.2 / 0.9)
        else:
            fractions = (1.0, 0.0, 0.0)
        splits = list(split_stratified(full, fractions, seed=seed))
        splits[1:] = [g if g is not None else s for g, s in zip(given, splits[1:], strict=True)]
    else:
        split = resolve_split(split, data)
        splitters = {
            "book": split_book,
            "book_full": split_book_full,
            "stratified": split_stratified,
        }
        if split not in splitters:
            raise GptclfError(f"unknown split {split!r}, known: {', '.join(SPLIT_MODES)}")
        full = load_dataset(data, text_columns, label_column, label_sep, **dialect)
        splitter = splitters[split]
        splits = list(splitter(full, seed=seed))
    splits[1:] = [
        align_labels(s, splits[0].label_names, name)
        for s, name in zip(splits[1:], SPLIT_NAMES[1:], strict=True)
    ]
    check_splits(*splits)
    if label_sep is not None:
        multilabel.warn_if_single(splits[0].targets, label_sep, data)
    if balance == "undersample":
        from gptclf.balance import undersample

        splits[0] = undersample(splits[0], seed=seed)
    return splits[0], splits[1], splits[2]


def check_multilabel_options(data: str | Path, split: str, balance: str) -> None:
    """What multi-label data cannot do (`TrainConfig` checks the same before anything loads)."""
    if str(data) in BUNDLED_DATASETS:
        raise GptclfError(
            f"--multi-label needs a table whose label column holds several labels; {data} has "
            "one label per text (benchmarks/sms_multilabel.py writes a multi-label version)"
        )
    if split in ("book", "book_full"):
        raise GptclfError(
            f"--split {split} is single-label (spam/ham); with --multi-label use "
            "stratified (iterative stratification)"
        )
    if balance == "undersample":
        raise GptclfError(
            "--balance undersample is single-label only; with --multi-label use "
            "--class-weights auto (positive weights per label)"
        )


def resolve_split(split: str, data: str | Path) -> str:
    """`auto` → the book's split on the bundled SMS data, else stratified; others unchanged."""
    if split != "auto":
        return split
    return "book" if str(data) in BUNDLED_DATASETS else "stratified"


def splits_from_config(cfg: dict[str, Any]) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """The splits a training config describes (`TrainConfig` as a dict, e.g. a checkpoint's)."""
    return load_splits(
        cfg["data"],
        cfg.get("split", "book"),  # checkpoints from before "auto" always name their split
        seed=cfg.get("split_seed") if cfg.get("split_seed") is not None else cfg.get("seed", 123),
        text_columns=cfg.get("text_columns"),
        label_column=cfg.get("label_column"),
        validation=cfg.get("validation"),
        test=cfg.get("test"),
        balance=cfg.get("balance", "none"),
        label_sep=cfg.get("label_sep", "|") if cfg.get("multi_label") else None,
        encoding=cfg.get("encoding"),  # runs from before --encoding/--delimiter: None
        delimiter=cfg.get("delimiter"),
    )


def align_labels(
    data: LabeledTexts, names: list[str], source: str, integer_indices: bool = False
) -> LabeledTexts:
    """``data`` with its labels renumbered by ``names``; a label not in ``names`` is an error.

    integer_indices: a label "0", "1", ... that is not a name is that class's index (the integer
    labels of `gptclf data split` files)."""
    if data.label_names == names:
        return data
    if data.multi_label:
        return _align_multilabel(data, names, source)
    index = {name: i for i, name in enumerate(names)}
    if integer_indices:
        index.update({str(i): i for i in range(len(names)) if str(i) not in index})
    unknown = sorted({data.label_names[y] for y in data.labels} - set(index))
    if unknown:
        raise GptclfError(
            f"{source}: label(s) {', '.join(map(repr, unknown))} do not occur in the training data "
            f"(they are not among its labels: {', '.join(names)})"
        )
    return LabeledTexts(data.texts, [index[data.label_names[y]] for y in data.labels], list(names))


def _align_multilabel(data: LabeledTexts, names: list[str], source: str) -> LabeledTexts:
    """``align_labels`` for multi-label data: its columns moved to the positions of ``names``."""
    targets = data.targets
    present = [n for n, used in zip(data.label_names, targets.any(axis=0), strict=True) if used]
    if unknown := sorted(set(present) - set(names)):
        raise GptclfError(
            f"{source}: label(s) {', '.join(map(repr, unknown))} do not occur in the training data "
            f"(they are not among its labels: {', '.join(names)})"
        )
    aligned = np.zeros((len(data), len(names)), dtype=np.int64)
    for c, name in enumerate(data.label_names):
        if name in names:
            aligned[:, names.index(name)] = targets[:, c]
    return LabeledTexts(data.texts, aligned.tolist(), list(names), multi_label=True)


def check_splits(train: LabeledTexts, val: LabeledTexts, test: LabeledTexts) -> None:
    """Errors for splits no classifier can be trained or chosen on; warnings for weak ones."""
    for name, split in zip(SPLIT_NAMES, (train, val, test), strict=True):
        if not len(split):
            raise GptclfError(f"the {name} split is empty: give more rows or a --{name} file")
    if train.multi_label:
        counts = train.targets.sum(axis=0)
        if not counts.any():
            raise GptclfError("no training text has a label; a classifier needs some")
        _warn_rare(train.label_names, counts, "labels")
        return
    counts = np.bincount(train.labels, minlength=len(train.label_names))
    present = [train.label_names[c] for c in np.flatnonzero(counts)]
    if len(present) < 2:
        raise GptclfError(
            f"the training data has a single class ({present[0]!r}); a classifier needs at least 2"
        )
    _warn_rare(train.label_names, counts, "classes")


def _warn_rare(names: list[str], counts: np.ndarray, what: str) -> None:
    if missing := [names[c] for c in np.flatnonzero(counts == 0)]:
        logger.warning("%s with no training example (never predicted well): %s", what, missing)
    if rare := [names[c] for c in np.flatnonzero((counts > 0) & (counts < 5))]:
        logger.warning("%s with fewer than 5 training examples: %s", what, rare)


def split_book(
    data: LabeledTexts, seed: int = 123
) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """The book's split: undersample the larger class, shuffle, cut 70/10/20.

    Same rows in the same order as the book's pandas code on the SMS data (1,045/149/300): the
    larger class (label 0 on a tie, like ``ham``) is sampled down to the smaller one's size, the
    smaller class is appended in file order, and the whole is shuffled, both with ``seed``.
    """
    parts = _book_indices(data, seed)
    return data.subset(parts[0]), data.subset(parts[1]), data.subset(parts[2])


def split_book_full(
    data: LabeledTexts, seed: int = 123
) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """The book's validation and test rows exactly; every other row of ``data`` trains.

    The book undersamples the larger class before it splits, so on the SMS data 4,078 ham
    messages never reach any split. Here they join the book's 1,045 training rows (after them,
    shuffled with ``seed``), except any whose text equals a validation or test text (the SMS
    data repeats messages; a copy in training would let test texts leak in). The training set is
    then imbalanced: pair it with class weights (``--class-weights auto``).
    """
    train, val, test = _book_indices(data, seed)
    held_out = {data.texts[i] for i in (*val, *test)}
    used = {int(i) for i in (*train, *val, *test)}
    rest = [i for i in range(len(data)) if i not in used and data.texts[i] not in held_out]
    rest = np.asarray(rest, dtype=np.int64)[np.random.RandomState(seed).permutation(len(rest))]
    logger.info(
        "split_book_full: %d rows the book leaves out join its %d training rows (%d dropped as "
        "copies of validation/test texts)",
        len(rest), len(train), len(data) - len(used) - len(rest),
    )  # fmt: skip
    full_train = np.concatenate([train, rest])
    return data.subset(full_train), data.subset(val), data.subset(test)


def _book_indices(data: LabeledTexts, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the book's train, validation and test splits (see ``split_book``)."""
    if len(data.label_names) != 2:
        raise GptclfError(f"--split book/book_full needs 2 classes, not {len(data.label_names)}")
    labels = np.asarray(data.labels)
    counts = np.bincount(labels, minlength=2)
    if counts.min() == 0:
        raise GptclfError(
            f"--split book/book_full needs both classes present, got counts {counts.tolist()}"
        )
    major = 0 if counts[0] >= counts[1] else 1
    major_idx = np.flatnonzero(labels == major)
    minor_idx = np.flatnonzero(labels != major)
    # pandas' DataFrame.sample(n, random_state=s) is RandomState(s).choice(len, n, replace=False).
    pick = np.random.RandomState(seed).choice(len(major_idx), len(minor_idx), replace=False)
    balanced = np.concatenate([major_idx[pick], minor_idx])
    n = len(balanced)
    order = balanced[np.random.RandomState(seed).choice(n, n, replace=False)]  # sample(frac=1)
    train_end = int(n * 0.7)
    val_end = train_end + int(n * 0.1)
    parts = order[:train_end], order[train_end:val_end], order[val_end:]
    logger.debug("split_book sizes: %s", [len(p) for p in parts])
    return parts


def split_stratified(
    data: LabeledTexts,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 123,
) -> tuple[LabeledTexts, LabeledTexts, LabeledTexts]:
    """Split each class by ``fractions`` (train, validation, test), keeping class ratios.

    Every split with a positive fraction gets at least one row of each class that has enough rows.
    Deterministic for a ``seed``; rows within each split are shuffled. Multi-label data is split
    by iterative stratification (``multilabel.iterative_split``): each label keeps its share.
    """
    train, val, test = (data.subset(p) for p in stratified_indices(data, fractions, seed))
    return train, val, test


def stratified_indices(
    data: LabeledTexts, fractions: tuple[float, float, float], seed: int = 123
) -> list[np.ndarray]:
    """The row indices of each part of ``split_stratified`` (cross-validation gathers by index)."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise GptclfError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    if data.multi_label:
        return multilabel.iterative_split(data.targets, fractions, seed)
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels, dtype=np.int64)
    parts: list[list[int]] = [[], [], []]
    for c in range(len(data.label_names)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for part, n in zip(parts, _allocate(len(idx), fractions), strict=True):
            part.extend(idx[start : start + n].tolist())
            start += n
    return [rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts]


def write_split(
    out_dir: Path, train: LabeledTexts, val: LabeledTexts, test: LabeledTexts
) -> tuple[Path, Path, Path]:
    """Write ``train.csv``, ``validation.csv``, ``test.csv`` (``Label,Text``, integer labels).

    The bytes equal pandas' ``df.to_csv(path, index=None)`` with ``\\n`` line ends. The label
    names go to ``label_names.json``, which reading an integer-labelled file beside it picks up.
    The four files are written to temporary files first, then moved into place together.
    Returns the three CSV paths.
    """
    if not train.label_names == val.label_names == test.label_names:
        raise GptclfError("train, validation and test have different label_names")
    out_dir = Path(out_dir)
    files = {out_dir / LABEL_NAMES_FILE: json.dumps(train.label_names).encode("utf-8")}
    for name, data in zip(SPLIT_NAMES, (train, val, test), strict=True):
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")  # pandas' to_csv uses this writer
        writer.writerow(["Label", "Text"])
        writer.writerows(zip(data.labels, data.texts, strict=True))
        files[out_dir / f"{name}.csv"] = buffer.getvalue().encode("utf-8")
    # written together: a kill leaves the previous split whole, not one file of each
    atomic_write_many({path: lambda tmp, b=b: tmp.write_bytes(b) for path, b in files.items()})
    paths = list(files)[1:]
    return paths[0], paths[1], paths[2]


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Counts for ``n`` rows by largest remainder; each positive fraction gets ≥ 1 if n allows."""
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _read_table(
    path: Path,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> LabeledTexts:
    """Read a headed table with a label column and text column(s) (other columns are ignored)."""
    texts, raw_labels = tables.read_labeled(
        path,
        text_columns or DEFAULT_TEXT_COLUMNS,
        label_column or DEFAULT_LABEL_COLUMN,
        encoding,
        delimiter,
    )
    try:
        labels = [int(y) for y in raw_labels]
    except ValueError:
        label_names = sorted(set(raw_labels))
        index = {name: i for i, name in enumerate(label_names)}
        return LabeledTexts(texts, [index[y] for y in raw_labels], label_names)
    names_file = path.parent / LABEL_NAMES_FILE
    if not names_file.is_file():  # integers name the classes, in numeric order
        values = sorted(set(labels))
        index = {v: i for i, v in enumerate(values)}
        return LabeledTexts(texts, [index[y] for y in labels], [str(v) for v in values])
    if min(labels) < 0:
        raise GptclfError(f"{path}: negative integer label {min(labels)}")
    try:
        names = json.loads(names_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptclfError(f"{names_file}: not a readable JSON list of label names ({e})") from e
    if not isinstance(names, list) or max(labels) >= len(names):
        raise GptclfError(f"{names_file}: needs a list of {max(labels) + 1}+ label names")
    return LabeledTexts(texts, labels, [str(n) for n in names])


def _read_multilabel_table(
    path: str | Path,
    text_columns: Sequence[str] | None,
    label_column: str | None,
    label_sep: str,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> LabeledTexts:
    """A table whose label cells hold zero or more labels (``multilabel.py``)."""
    if str(path) in BUNDLED_DATASETS:
        check_multilabel_options(path, "stratified", "none")
    if Path(path).suffix.lower() not in tables.FORMATS:
        raise GptclfError(f"unknown dataset {str(path)!r}, known: {KNOWN_DATASETS}")
    texts, label_lists = multilabel.read_labeled(
        path,
        text_columns or DEFAULT_TEXT_COLUMNS,
        label_column or DEFAULT_LABEL_COLUMN,
        label_sep,
        encoding=encoding,
        delimiter=delimiter,
    )
    names = sorted({label for labels in label_lists for label in labels})
    return LabeledTexts(texts, multilabel.multi_hot(label_lists, names), names, multi_label=True)


def _parse(
    raw: bytes, source: str, delimiter: str, header: list[str]
) -> tuple[list[str], list[str]]:
    """Labels and texts of the SMS file (``header`` names its two columns).

    Quotes and blank lines are handled like pandas' ``read_csv`` defaults (lenient quoting).
    """
    reader = csv.reader(io.StringIO(_decode(raw, source), newline=""), delimiter=delimiter)
    try:
        return _rows(reader, source, header)
    except csv.Error as e:
        raise GptclfError(f"{source}: malformed file near line {reader.line_num}: {e}") from None


def _rows(reader, source: str, header: list[str]) -> tuple[list[str], list[str]]:
    label_col, text_col = header.index("Label"), header.index("Text")
    labels: list[str] = []
    texts: list[str] = []
    for row in reader:
        if not row:
            continue
        where = f"{source}, row {len(texts) + 1} (line {reader.line_num})"
        if len(row) != len(header):
            raise GptclfError(f"{where}: expected {len(header)} fields, got {len(row)}")
        if not row[label_col].strip():
            raise GptclfError(f"{where}: empty Label")
        if not row[text_col].strip():
            raise GptclfError(f"{where}: empty Text")
        labels.append(row[label_col].strip())
        texts.append(row[text_col])
    if not texts:
        raise GptclfError(f"{source}: no data rows")
    return labels, texts


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise GptclfError(f"dataset file not found: {path}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise GptclfError(f"cannot read {path}: {e.strerror}") from e


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GptclfError(f"{source}: not valid UTF-8 at line {line} (byte {e.start})") from e


def _bundled(name: str) -> Traversable:
    return resources.files("gptclf") / "datasets" / "sms_spam" / name


def _bundled_sha256(name: str) -> str:
    for line in _bundled("SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, file = line.partition("  ")
        if file.strip() == name:
            return digest.strip().lower()
    raise GptclfError(f"no sha256 for {name} in the bundled SHA256SUMS")  # broken install


def _check_sha256(raw: bytes, expected: str, source: str) -> None:
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise GptclfError(f"{source}: sha256 {actual} is not SMS Spam Collection v.1's {expected}")


def _zip_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` (exact name) from ``archive``; nothing is extracted to disk."""
    try:
        with zipfile.ZipFile(archive) as zf:
            info = next((i for i in zf.infolist() if i.filename == member), None)
            if info is None:
                raise GptclfError(f"{archive}: no member {member!r} in the zip")
            if info.file_size > _MAX_MEMBER_BYTES:
                raise GptclfError(f"{archive}: {member} is {info.file_size} bytes, too big")
            return zf.read(info)
    except (zipfile.BadZipFile, OSError) as e:
        raise GptclfError(f"{archive}: not a readable zip file ({e})") from e
