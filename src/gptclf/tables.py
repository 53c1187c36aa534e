"""User tables, read and written row by row: CSV, TSV, JSONL, and Parquet when pyarrow is installed.

One reader serves training (``data.load_dataset``), ``gptclf evaluate`` and ``gptclf predict``:
``open_table`` streams rows as dicts, ``row_text`` joins the chosen text columns, ``row_label``
normalizes a label (``1``, ``1.0`` and ``"1"`` are the same class). ``TableWriter`` writes CSV or
JSONL to a temporary file and renames it into place when done.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gptclf.errors import GptclfError
from gptclf.fileio import commit, temp_beside

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
WRITE_FORMATS = ("csv", "tsv", "jsonl")
TEXT_SEPARATOR = "\n"  # between the values of several text columns


def table_format(path: str | Path, formats: Sequence[str] = tuple(FORMATS.values())) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet`` from the file's suffix (error if not in formats)."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind not in formats:
        known = ", ".join(s for s, k in FORMATS.items() if k in formats)
        raise GptclfError(f"{path}: unknown file type {Path(path).suffix!r}, expected {known}")
    return kind


class Table:
    """An open table: ``columns``, then iterate ``(where, row)``; ``where`` names the row for errors.

    Values are strings for CSV/TSV and JSON values (str, int, float, bool, None) otherwise.
    ``bytes_read`` tells how far into the file reading has got (for a progress bar).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.kind = table_format(self.path)
        if not self.path.is_file():
            raise GptclfError(f"file not found: {self.path}")
        self.size = self.path.stat().st_size
        self._raw = None
        try:
            if self.kind == "parquet":
                self.columns, self._rows = self._open_parquet()
            else:
                self._raw = open(self.path, "rb")  # noqa: SIM115 (closed by close())
                text = io.TextIOWrapper(self._raw, encoding="utf-8-sig", newline="")
                opener = self._open_jsonl if self.kind == "jsonl" else self._open_delimited
                self.columns, self._rows = opener(text)
        except BaseException:
            self.close()
            raise

    @property
    def bytes_read(self) -> int:
        return self._raw.tell() if self._raw is not None and not self._raw.closed else self.size

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self._rows

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_delimited(self, text: io.TextIOWrapper):
        # Strict: an unclosed quote is an error, not a text that swallows the rest of the file.
        reader = csv.reader(text, delimiter="\t" if self.kind == "tsv" else ",", strict=True)
        header = self._guard(lambda: next((row for row in reader if row), None), reader)
        if header is None:
            raise GptclfError(f"{self.path}: empty file, expected a header row")
        _check_unique(header, self.path)

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            while (row := self._guard(lambda: next(reader, None), reader)) is not None:
                if not row:
                    continue  # blank line
                n += 1
                where = f"{self.path}, row {n} (line {reader.line_num})"
                if len(row) != len(header):
                    raise GptclfError(f"{where}: expected {len(header)} fields, got {len(row)}")
                yield where, dict(zip(header, row, strict=True))

        return header, rows()

    def _guard(self, read, reader):
        """``read()``, with decoding and CSV errors turned into one clear line."""
        try:
            return read()
        except UnicodeDecodeError:
            raise GptclfError(_bad_utf8(self.path)) from None
        except csv.Error as e:
            where = f"{self.path}: malformed file near line {reader.line_num}"
            raise GptclfError(f"{where}: {e}") from None

    def _open_jsonl(self, text: io.TextIOWrapper):
        lines = enumerate(text, start=1)

        def parse() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            while True:
                try:
                    line_no, line = next(lines, (0, None))
                except UnicodeDecodeError:
                    raise GptclfError(_bad_utf8(self.path)) from None
                if line is None:
                    return
                if not line.strip():
                    continue
                n += 1
                where = f"{self.path}, row {n} (line {line_no})"
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise GptclfError(f"{where}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise GptclfError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row

        rows = parse()
        first = next(rows, None)
        if first is None:
            raise GptclfError(f"{self.path}: empty file, expected one JSON object per line")

        def chained() -> Iterator[tuple[str, dict[str, Any]]]:
            yield first
            yield from rows

        return list(first[1]), chained()

    def _open_parquet(self):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise GptclfError(
                f"{self.path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from None
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid, OSError, ...
            raise GptclfError(f"{self.path}: not a readable Parquet file ({e})") from None

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{self.path}, row {n}", row

        return list(parquet.schema_arrow.names), rows()


def open_table(path: str | Path) -> Table:
    """Open a CSV/TSV/JSONL/Parquet file for streaming; use as a context manager."""
    return Table(path)


def resolve_columns(available: Sequence[str], wanted: Sequence[str], source: object) -> list[str]:
    """The names in ``available`` for ``wanted`` (exact match, else one case-insensitive match)."""
    resolved = []
    for name in wanted:
        if name in available:
            resolved.append(name)
            continue
        matches = [c for c in available if c.strip().lower() == name.strip().lower()]
        if len(matches) != 1:
            have = ", ".join(repr(c) for c in available)
            raise GptclfError(f"{source}: missing column {name!r} (columns: {have})")
        resolved.append(matches[0])
    return resolved


def row_text(
    row: dict[str, Any], columns: Sequence[str], where: str, empty_ok: bool = False
) -> str:
    """The row's text: the non-empty values of ``columns`` joined by ``TEXT_SEPARATOR``.

    If every one is empty (or missing, in JSONL): ``""`` with ``empty_ok``, else an error.
    """
    parts = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, (dict, list)):
            raise GptclfError(f"{where}: column {column!r} holds {type(value).__name__}, not text")
        if value is not None and str(value).strip():
            parts.append(str(value))
    if not parts and not empty_ok:
        raise GptclfError(f"{where}: empty {' + '.join(columns)}")
    return TEXT_SEPARATOR.join(parts)


def row_label(row: dict[str, Any], column: str, where: str) -> str:
    """The row's label as a string; integral numbers are written as integers (1.0 → "1")."""
    value = row.get(column)
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise GptclfError(f"{where}: {column} {value!r} is not a class label")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    label = "" if value is None else str(value).strip()
    if not label:
        raise GptclfError(f"{where}: empty {column}")
    return label


def read_labeled(
    path: str | Path, text_columns: Sequence[str], label_column: str
) -> tuple[list[str], list[str]]:
    """Texts and (string) labels of every row of a table."""
    texts: list[str] = []
    labels: list[str] = []
    with open_table(path) as table:
        text_cols = resolve_columns(table.columns, text_columns, path)
        (label_col,) = resolve_columns(table.columns, [label_column], path)
        for where, row in table:
            if label_col not in row:  # JSONL rows need not share keys
                raise GptclfError(f"{where}: missing column {label_col!r}")
            labels.append(row_label(row, label_col, where))
            texts.append(row_text(row, text_cols, where))
    if not texts:
        raise GptclfError(f"{path}: no data rows")
    return texts, labels


class TableWriter:
    """Write rows (dicts) to a CSV/TSV/JSONL file: a temporary file renamed over ``path`` on success.

    CSV/TSV columns are fixed by ``columns``; nested values (dicts) are written as JSON.
    """

    def __init__(self, path: str | Path, columns: Sequence[str]):
        self.path = Path(path)
        self.kind = table_format(self.path, WRITE_FORMATS)
        self.columns = list(columns)
        fd, self._tmp = temp_beside(self.path)
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.kind != "jsonl":
            self._csv = csv.writer(self._file, delimiter="\t" if self.kind == "tsv" else ",")
            self._csv.writerow(self.columns)

    def write(self, row: dict[str, Any]) -> None:
        if self.kind == "jsonl":
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._csv.writerow([_cell(row.get(c)) for c in self.columns])

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self._file.close()
        if exc_type is None:
            commit(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _bad_utf8(path: Path) -> str:
    """Where a file stops being UTF-8. Text is decoded in chunks, so the decoder's own position
    is not the line; splitting at b"\\n" is safe because no UTF-8 sequence contains that byte."""
    with open(path, "rb") as f:
        offset = 0
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"{path}: not valid UTF-8 at line {line_no} (byte {offset + e.start})"
            offset += len(line)
    return f"{path}: not valid UTF-8"


def _check_unique(header: list[str], source: Path) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise GptclfError(f"{source}: duplicate column {name!r} in the header")
        seen.add(name)
