"""gptclf.tables: one streaming reader for CSV/TSV/JSONL/Parquet, clear errors, atomic writer."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fixtures_tool import reviews, write_reviews
from gptclf import multilabel
from gptclf.cli import main
from gptclf.errors import GptclfError
from gptclf.tables import (
    SNIFF_BYTES,
    TableWriter,
    check_delimiter,
    check_encoding,
    open_table,
    parse_delimiter,
    read_labeled,
    resolve_columns,
    row_label,
    row_text,
)
from gptclf.train_config import TrainConfig


def rows_of(path: Path, **options) -> list[dict]:
    with open_table(path, **options) as table:
        return [row for _, row in table]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    expected = reviews(5)
    path = tmp_path / f"r{suffix}"
    if suffix == ".parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(expected), path)
    else:
        write_reviews(path, expected)
    with open_table(path) as table:
        assert table.columns == ["id", "review_body", "headline", "sentiment"]
    assert rows_of(path) == expected
    texts, labels = read_labeled(path, ["headline", "review_body"], "sentiment")
    assert texts[0] == f"{expected[0]['headline']}\n{expected[0]['review_body']}"
    assert labels == [r["sentiment"] for r in expected]


def test_streaming_and_progress(tmp_path: Path) -> None:
    path = write_reviews(tmp_path / "big.csv", reviews(400))
    with open_table(path) as table:
        rows = iter(table)
        next(rows)
        assert 0 < table.bytes_read < table.size  # read lazily, not all at once
        assert sum(1 for _ in rows) == 3 * 400 - 1
        assert table.bytes_read == table.size


def test_columns_values_and_labels() -> None:
    assert resolve_columns(["Review", "Stars"], ["review", "Stars"], "f") == ["Review", "Stars"]
    with pytest.raises(
        GptclfError, match=r"f: missing column 'body' \(columns: 'Review', 'Stars'\)"
    ):
        resolve_columns(["Review", "Stars"], ["body"], "f")
    assert row_text({"a": "x", "b": " ", "c": None}, ["a", "b", "c"], "r") == "x"
    with pytest.raises(GptclfError, match="r: empty a \\+ b"):
        row_text({"a": "", "b": " "}, ["a", "b"], "r")
    with pytest.raises(GptclfError, match="r: b is null, not text"):
        row_text({"a": "", "b": None}, ["a", "b"], "r")
    for value, shown in ((3, "3 \\(a number\\)"), (2.5, "2.5 \\(a number\\)"), (True, "true")):
        with pytest.raises(GptclfError, match=f"r: c is {shown}"):
            row_text({"a": "x", "c": value}, ["a", "c"], "r", empty_ok=True)
    assert row_text({"a": ""}, ["a"], "r", empty_ok=True) == ""
    assert row_text({"a": None}, ["a"], "r", empty_ok=True) == ""
    assert [row_label({"y": v}, "y", "r") for v in (1, 2.0, " pos ", "01")] == [
        "1",
        "2",
        "pos",
        "01",
    ]
    for bad, match in ((None, "empty y"), ("", "empty y"), (True, "not a class label")):
        with pytest.raises(GptclfError, match=match):
            row_label({"y": bad}, "y", "r")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("a.csv", b"", "empty file"),
        ("a.csv", b"x,x\n1,2\n", "duplicate column 'x'"),
        ("a.csv", b'x,y\n1,"open\n', "malformed file"),
        ("a.csv", b"x,y\n1,2,3\n", r"row 1 \(line 2\): expected 2 fields, got 3"),
        ("a.jsonl", b'{"x": 1}\n{"x": \n', r"row 2 \(line 2\): not valid JSON"),
        ("a.jsonl", b"[1, 2]\n", "expected a JSON object, got list"),
        ("a.jsonl", b"\n\n", "empty file"),
        ("a.xlsx", b"", "unknown file type '.xlsx'"),
        ("a.parquet", b"not parquet", "not a readable Parquet file"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(GptclfError, match=match):
        rows_of(tmp_path / name)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("encoding", ["utf-8", None])
def test_bad_utf8_names_the_line_past_the_first_chunk(
    tmp_path: Path, suffix: str, encoding: str | None
) -> None:
    # The decoder works in 8 kB chunks; the line reported must still be the real one. Without
    # --encoding, past the 64 kB that decide the encoding: an error that names --encoding.
    path = tmp_path / f"bad{suffix}"
    if suffix == ".jsonl":
        good = b"".join(b'{"t": "row %d %s"}\n' % (i, b"x" * 150) for i in range(500))
        path.write_bytes(good + b'{"t": "caf\xe9"}\n')
        line = 501
    else:
        path.write_bytes(b"t\n" + b"".join(b"ok %07d\n" % i for i in range(8000)) + b"caf\xe9\n")
        line = 8002
    assert path.stat().st_size > SNIFF_BYTES
    hint = "is --encoding utf-8 right" if encoding else "give the file's encoding with --encoding"
    with pytest.raises(GptclfError, match=f"not valid UTF-8 at line {line} .*; {hint}"):
        rows_of(path, encoding=encoding)


def test_missing_label_in_a_jsonl_row(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "y": "p"}\n{"text": "b"}\n')
    with pytest.raises(GptclfError, match=r"row 2 \(line 2\): missing column 'y'"):
        read_labeled(path, ["text"], "y")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_writer_is_atomic(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    with TableWriter(path, ["a", "b"]) as writer:
        writer.write({"a": 'x,"y"\nz', "b": {"k": 1}})
        assert not path.exists()  # only a temporary file so far
    assert rows_of(path) == [{"a": 'x,"y"\nz', "b": {"k": 1} if suffix == ".jsonl" else '{"k": 1}'}]
    with pytest.raises(RuntimeError), TableWriter(tmp_path / f"fail{suffix}", ["a"]) as writer:
        writer.write({"a": 1})
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]  # no partial file
    with pytest.raises(GptclfError, match="unknown file type"):
        TableWriter(tmp_path / "out.parquet", ["a"])


# ---- files as people have them: encodings, delimiters, line ends, blank rows ----

CAFE = [{"text": "Café, naïve", "label": "a"}, {"text": "It’s 5 €", "label": "b"}]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_cp1252_is_read_with_a_warning_that_names_the_flag(tmp_path: Path, caplog) -> None:
    path = write(
        tmp_path / "a.csv", '"text","label"\r\n"Café, naïve",a\r\nIt’s 5 €,b\r\n', "cp1252"
    )
    assert rows_of(path) == CAFE
    assert "read as cp1252" in caplog.text and "--encoding cp1252" in caplog.text
    assert "'\"Café, naïve\",a'" in caplog.text  # shows the line as read
    caplog.clear()
    assert rows_of(path, encoding="cp1252") == CAFE
    assert not caplog.text  # said so: no warning
    with pytest.raises(GptclfError, match=r"not valid UTF-8 at line 2 \(byte 20\); is --encoding"):
        rows_of(path, encoding="utf-8")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("text\r\nCafé\r\n".encode() + "Café\r\n".encode("cp1252"), "line 2 is UTF-8 but line 3"),
        (
            b"text\nok\n\xe9 \x81\n",
            r"neither UTF-8 \(line 3, byte 8\) nor cp1252 \(line 3, byte 10",
        ),
    ],
)
def test_undecidable_encodings_are_errors(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "a.csv").write_bytes(content)
    with pytest.raises(GptclfError, match=match + ".*--encoding"):
        rows_of(tmp_path / "a.csv")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_byte_order_marks_decide_the_encoding(tmp_path: Path, encoding: str, caplog) -> None:
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"a{suffix}"
        if suffix == ".csv":
            write(path, '"text",label\r\n"Café, naïve",a\nIt’s 5 €,b\r', encoding)
        else:
            write(path, "".join(json.dumps(r) + "\r\n" for r in CAFE), encoding)
        assert rows_of(path) == CAFE
        assert rows_of(path, encoding="utf-8" if encoding == "utf-8-sig" else encoding) == CAFE
    assert "WARNING" not in caplog.text


def test_line_numbers_count_every_line_end(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", 'text,label\r"two\rlines",a\nok,b\r\nx,y,z\r')
    with pytest.raises(GptclfError, match=r"row 3 \(line 5\): expected 2 fields, got 3"):
        rows_of(path)
    (tmp_path / "b.csv").write_bytes(b"text,label\rok,a\r\r\xe9\x81,b\r")
    with pytest.raises(
        GptclfError, match=r"UTF-8 \(line 4, byte 17\) nor cp1252 \(line 4, byte 18\)"
    ):
        rows_of(tmp_path / "b.csv")


@pytest.mark.parametrize(
    ("name", "header", "delimiter", "warned"),
    [
        ("a.csv", "text;label", ";", True),
        ("a.csv", "text\tlabel", "\t", True),
        ("a.tsv", "text,label", ",", True),
        ("a.tsv", "text;label", ";", True),
        ("a.csv", '"te;xt",label', ",", False),  # a comma outside quotes: CSV as it says
        ("a.csv", "text;label\tx", ",", False),  # 2 by ';', 2 by tab: no guess
        ("a.csv", "text", ",", False),
    ],
)
def test_delimiter_sniffed_from_the_header(
    tmp_path: Path, caplog, name: str, header: str, delimiter: str, warned: bool
) -> None:
    width = len(next(csv.reader([header], delimiter=delimiter)))
    body = delimiter.join(["x y"] * width)
    path = write(tmp_path / name, f"\r\n\r\n{header}\r\n{body}\r\n")
    with open_table(path) as table:
        assert len(table.columns) == width
    assert ("--delimiter" in caplog.text) == warned


def test_delimiter_given_and_spelled_out(tmp_path: Path, caplog) -> None:
    path = write(tmp_path / "a.csv", "text|label\nx,y|a\n")
    assert rows_of(path, delimiter="|") == [{"text": "x,y", "label": "a"}]
    path = write(tmp_path / "b.csv", "text;label\nx;a\n")
    assert rows_of(path, delimiter=",") == [{"text;label": "x;a"}]
    assert not caplog.text
    with pytest.raises(GptclfError, match=r"missing column 'text' .*--delimiter"):
        read_labeled(path, ["text"], "label", delimiter=",")
    assert parse_delimiter("tab") == parse_delimiter("\\t") == parse_delimiter(" TAB") == "\t"
    for bad in (";;", "", '"', "\n", 5):
        with pytest.raises(GptclfError, match="--delimiter must be one character"):
            check_delimiter(bad)
    for bad in ("klingon", "base64", "rot13"):
        with pytest.raises(GptclfError, match="--encoding must be a text encoding"):
            check_encoding(bad)


@pytest.mark.parametrize(
    ("field", "text", "value"), [("encoding", "klingon", "klingon"), ("delimiter", "ab", "ab")]
)
def test_train_flags_and_api_reject_a_bad_value_alike(field, text, value, capsys) -> None:
    with pytest.raises(GptclfError) as api_error:
        TrainConfig(**{field: value})
    code = main(["train", f"--{field}", text, "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"gptclf: error: {api_error.value}"
    assert TrainConfig(delimiter="tab", encoding="latin-1").delimiter == "\t"


def test_blank_rows_and_huge_fields(tmp_path: Path) -> None:
    huge = "word " * 400_000  # 2 MB: Python's csv refuses fields over 128 kB by default
    text = f'\r\n,\r\ntext,label\r\n"{huge}",a\r\n,\r\n ,\t\r\n\r\nok,b\r\n;\r\n'
    with pytest.raises(GptclfError, match=r"row 3 \(line 9\): expected 2 fields, got 1"):
        rows_of(write(tmp_path / "a.csv", text))
    path = write(tmp_path / "a.csv", text.replace(";\r\n", "\r\n\r\n"))
    assert rows_of(path) == [{"text": huge, "label": "a"}, {"text": "ok", "label": "b"}]
    path = write(tmp_path / "a.jsonl", json.dumps({"text": huge}) + "\n \n\r\n")
    assert rows_of(path) == [{"text": huge}]


def test_duplicate_and_ambiguous_names(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", '{"t": "x", "y": 1}\n{"t": "x", "y": {"a": 1, "a": 2}}\n')
    with pytest.raises(GptclfError, match=r"row 2 \(line 2\): duplicate key 'a'"):
        rows_of(path)
    with pytest.raises(GptclfError, match="'TEXT' matches 2 columns .* none exactly"):
        resolve_columns(["text", " Text "], ["TEXT"], "f")
    assert resolve_columns(["text", " Text "], ["text"], "f") == ["text"]
    assert resolve_columns([" Text ", "label"], ["text"], "f") == [" Text "]


def test_parquet_duplicate_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table([pa.array(["a"]), pa.array(["b"])], names=["x", "x"]), tmp_path / "a.parquet"
    )
    with pytest.raises(GptclfError, match="duplicate column 'x'"):
        rows_of(tmp_path / "a.parquet")


def test_multilabel_reader_takes_encoding_and_delimiter(tmp_path: Path, caplog) -> None:
    path = write(tmp_path / "a.csv", "text;label\r\nCafé;a|b\r\nIt’s;\r\n", "cp1252")
    for options in ({}, {"encoding": "cp1252", "delimiter": ";"}):
        texts, labels = multilabel.read_labeled(path, ["text"], "label", "|", **options)
        assert texts == ["Café", "It’s"] and labels == [["a", "b"], []]
    assert caplog.text.count("WARNING") == 2  # encoding and delimiter, the first time only


# ---- properties: whatever the writers write, the reader reads back ----

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# Column names: no U+FEFF (at the start of a file it is a byte-order mark) and no NUL (after a
# UTF-16 mark it would read as UTF-32's): real headers start with neither.
NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufeff\x00"),
    min_size=1,
    max_size=6,
)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def tables_of_text(draw, min_columns: int = 1, names=NAME) -> tuple[list[str], list[list[str]]]:
    names = draw(st.lists(names, min_size=min_columns, max_size=4, unique=True))
    assume(any(name.strip() for name in names))  # a blank header row is no header
    row = st.lists(TEXT, min_size=len(names), max_size=len(names))
    rows = draw(st.lists(row.filter(lambda r: any(v.strip() for v in r)), min_size=1, max_size=6))
    return names, rows


def delimited_text(names, rows, delimiter: str, line_end: str, quote_all: bool = False) -> str:
    """The table as Python's csv writer writes it. Its minimal quoting quotes only the line end's
    own characters, so a CR in a cell of an LF file (or an LF in a CR file) would stay bare,
    which no reader that takes LF, CRLF and CR line ends can tell from a line end (nor can
    Python's csv.reader): such tables are written with every cell quoted."""
    stray = {"\r", "\n"} - set(line_end)
    if any(c in cell for c in stray for cell in itertools.chain(names, *rows)):
        quote_all = True
    buffer = io.StringIO(newline="")
    quoting = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=line_end, quoting=quoting)
    writer.writerows([names, *rows])
    return buffer.getvalue()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=tables_of_text(),
    kind=st.sampled_from(["csv", "jsonl"]),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    line_end=LINE_ENDS,
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
    ascii_only=st.booleans(),
)
def test_any_table_round_trips(
    tmp_path: Path, table, kind, delimiter, line_end, encoding, ascii_only
) -> None:
    """Any table of Unicode text (no blank rows), written by Python's csv writer (any delimiter,
    line end, quoting) or json (escaped or not), with or without a BOM, reads back exactly."""
    names, rows = table
    path = tmp_path / f"t.{kind}"
    if kind == "csv":
        text = delimited_text(names, rows, delimiter, line_end, quote_all=ascii_only)
        write(path, text, encoding)
        assert rows_of(path, delimiter=delimiter) == [
            dict(zip(names, r, strict=True)) for r in rows
        ]
    else:
        lines = [
            json.dumps(dict(zip(names, r, strict=True)), ensure_ascii=ascii_only) for r in rows
        ]
        write(path, line_end.join(lines) + line_end, encoding)
        assert rows_of(path) == [dict(zip(names, r, strict=True)) for r in rows]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=tables_of_text(min_columns=2),
    suffix=st.sampled_from([".csv", ".tsv"]),
    line_end=LINE_ENDS,
)
def test_the_suffix_delimiter_is_never_second_guessed(
    tmp_path: Path, table, suffix, line_end
) -> None:
    """A table of 2+ columns written with its suffix's delimiter reads back without --delimiter."""
    names, rows = table
    path = write(
        tmp_path / f"t{suffix}",
        delimited_text(names, rows, {".csv": ",", ".tsv": "\t"}[suffix], line_end),
    )
    assert rows_of(path) == [dict(zip(names, r, strict=True)) for r in rows]


PLAIN_NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters='\ufeff\x00,\t"\r\n'),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=tables_of_text(min_columns=2, names=PLAIN_NAME), line_end=LINE_ENDS)
def test_semicolon_csv_is_sniffed(tmp_path: Path, table, line_end) -> None:
    """Excel's ';'-separated .csv, column names without commas: read as ';' without --delimiter."""
    names, rows = table
    path = write(tmp_path / "t.csv", delimited_text(names, rows, ";", line_end))
    assert rows_of(path) == [dict(zip(names, r, strict=True)) for r in rows]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=tables_of_text(
        names=st.text(
            st.characters(codec="cp1252", blacklist_characters="\ufeff\x00"), min_size=1, max_size=6
        )
    ),
    line_end=LINE_ENDS,
)
def test_cp1252_is_read_exactly_or_refused(tmp_path: Path, table, line_end) -> None:
    """A cp1252 file reads back exactly with --encoding cp1252; without it, exactly, or as the
    UTF-8 its bytes happen to be (then they are all valid UTF-8), or a clear error. Never a mix."""
    names, rows = table
    rows = [[v.encode("cp1252", "ignore").decode("cp1252") for v in r] for r in rows]
    assume(all(any(v.strip() for v in r) for r in rows))
    raw = delimited_text(names, rows, ",", line_end).encode("cp1252")
    (tmp_path / "t.csv").write_bytes(raw)
    expected = [dict(zip(names, r, strict=True)) for r in rows]
    assert rows_of(tmp_path / "t.csv", encoding="cp1252", delimiter=",") == expected
    try:
        got = rows_of(tmp_path / "t.csv", delimiter=",")
    except GptclfError as e:
        assert "--encoding" in str(e)
        return
    if got != expected:
        raw.decode("utf-8")  # read as UTF-8 because it is UTF-8
        assert got == rows_of(tmp_path / "t.csv", encoding="utf-8", delimiter=",")


def test_api_reads_files_with_encoding_and_delimiter(reviews_run: Path, tmp_path: Path) -> None:
    from gptclf import Classifier

    rows = reviews(4)
    rows[0]["review_body"] = "Café, naïve – it’s fine"
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, list(rows[0]), delimiter=";", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path = write(tmp_path / "de.csv", buffer.getvalue(), "cp1252")
    clf = Classifier.load(reviews_run)
    metrics = clf.evaluate(path, encoding="cp1252", delimiter=";")
    assert metrics["n"] == len(rows)
    summary = clf.predict_file(path, tmp_path / "out.jsonl", encoding="cp1252", delimiter=";")
    assert summary["rows"] == len(rows)
    assert rows_of(tmp_path / "out.jsonl")[0]["review_body"] == rows[0]["review_body"]
    with pytest.raises(GptclfError, match="encoding and delimiter are for a file"):
        clf.evaluate(clf.load_data(path, encoding="cp1252", delimiter=";"), encoding="cp1252")


def test_mixed_encodings_found_across_read_blocks(tmp_path: Path) -> None:
    # é in UTF-8 (2 bytes) straddling the 1 MiB blocks the file is scanned in, far past the
    # 64 kB that decided it was not UTF-8
    head = b"text\nd\xe9j\xe0\n"
    filler = b"x" * (2**20 - 1 - len(head) - 1) + b"\n"
    (tmp_path / "a.csv").write_bytes(head + filler + "é\n".encode())
    assert len(head + filler) == 2**20 - 1  # é's first byte ends the first block
    with pytest.raises(GptclfError, match="line 4 is UTF-8 but line 2 is not .* mixes encodings"):
        rows_of(tmp_path / "a.csv")
