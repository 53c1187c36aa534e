"""gptclf.tables: one streaming reader for CSV/TSV/JSONL/Parquet, clear errors, atomic writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_tool import reviews, write_reviews
from gptclf.errors import GptclfError
from gptclf.tables import (
    TableWriter,
    open_table,
    read_labeled,
    resolve_columns,
    row_label,
    row_text,
)


def rows_of(path: Path) -> list[dict]:
    with open_table(path) as table:
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
    assert row_text({"a": "x", "b": " ", "c": 3}, ["a", "b", "c"], "r") == "x\n3"
    with pytest.raises(GptclfError, match="r: empty a \\+ b"):
        row_text({"a": "", "b": None}, ["a", "b"], "r")
    assert row_text({"a": ""}, ["a"], "r", empty_ok=True) == ""
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
def test_bad_utf8_names_the_line_past_the_first_chunk(tmp_path: Path, suffix: str) -> None:
    # The decoder works in 8 kB chunks; the line reported must still be the real one.
    path = tmp_path / f"bad{suffix}"
    if suffix == ".jsonl":
        good = b"".join(b'{"t": "row %d %s"}\n' % (i, b"x" * 50) for i in range(500))
        path.write_bytes(good + b'{"t": "caf\xe9"}\n')
        line = 501
    else:
        path.write_bytes(b"t\n" + b"".join(b"ok %d\n" % i for i in range(2000)) + b"caf\xe9\n")
        line = 2002
    with pytest.raises(GptclfError, match=f"not valid UTF-8 at line {line} "):
        rows_of(path)


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
