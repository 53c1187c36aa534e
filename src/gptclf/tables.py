"""User tables, read and written row by row: CSV, TSV, JSONL, and Parquet when pyarrow is installed.

One reader serves training (``data.load_dataset``), ``gptclf evaluate`` and ``gptclf predict``:
``open_table`` streams rows as dicts, ``row_text`` joins the chosen text columns, ``row_label``
normalizes a label (``1``, ``1.0`` and ``"1"`` are the same class). ``TableWriter`` writes CSV or
JSONL to a temporary file and renames it into place when done.

Files as people have them: text is UTF-8 (a byte-order mark allowed) unless ``--encoding`` says
otherwise or the file shows it (``text_encoding``: a UTF-16/32 byte-order mark; bytes that are not
UTF-8 but are cp1252, Excel's "CSV" on Western Windows, read so with a warning). The delimiter is
the suffix's (``,`` for .csv, tab for .tsv) unless ``--delimiter`` says otherwise or the header
shows it (a .csv header that is one column split by commas but several split by ``;``: Excel's
"CSV" where the decimal separator is a comma). Line ends may be LF, CRLF or CR; blank rows (no
cell with more than whitespace: Excel's trailing ``,,,`` rows) are skipped; any field size.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gptclf.errors import GptclfError
from gptclf.fileio import commit, temp_beside

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
WRITE_FORMATS = ("csv", "tsv", "jsonl")
TEXT_SEPARATOR = "\n"  # between the values of several text columns
SUFFIX_DELIMITERS = {"csv": ",", "tsv": "\t"}
SNIFFED_DELIMITERS = (",", ";", "\t")  # what a header may show instead of the suffix's
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
SNIFF_BYTES = 2**16  # the start of a file that decides its encoding when none is given
# Python's csv refuses fields over 128 kB unless told otherwise, and a text may be a document of
# megabytes. The limit is per process; 2**31 - 1 is the most a C long holds on every platform.
csv.field_size_limit(2**31 - 1)
_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# A well-formed multi-byte UTF-8 sequence (RFC 3629, section 4): in a file that is otherwise not
# UTF-8 it means two encodings were mixed, and reading it all as cp1252 would mangle these.
_UTF8_SEQUENCE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
_UTF8_START = re.compile(rb"[\xc2-\xf4][\x80-\xbf]")  # where one may begin: a fast first pass
_LONE_CR = re.compile(rb"\r(?!\n)")


def table_format(path: str | Path, formats: Sequence[str] = tuple(FORMATS.values())) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet`` from the file's suffix (error if not in formats)."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind not in formats:
        known = ", ".join(s for s, k in FORMATS.items() if k in formats)
        raise GptclfError(f"{path}: unknown file type {Path(path).suffix!r}, expected {known}")
    return kind


def check_encoding(name: str) -> None:
    """``--encoding``: a text encoding Python knows (``utf-8``, ``cp1252``, ``latin-1``, ...)."""
    try:  # LookupError for unknown names and for bytes-to-bytes codecs (base64)
        "a".encode(codecs.lookup(name).name)
    except (LookupError, TypeError):
        raise GptclfError(
            f"--encoding must be a text encoding Python knows (e.g. utf-8, cp1252, latin-1), "
            f"got {name!r}"
        ) from None


def parse_delimiter(text: str) -> str:
    """``--delimiter``: ``tab`` and ``\\t`` spelled out are a tab; anything else as given."""
    return "\t" if text.strip().lower() in ("tab", "\\t") else text


def check_delimiter(value: str) -> None:
    if not isinstance(value, str) or len(value) != 1 or value in '"\r\n':
        raise GptclfError(
            f"--delimiter must be one character (or tab), not a quote or a line end, got {value!r}"
        )


class Table:
    """An open table: ``columns``, then iterate ``(where, row)``; ``where`` names the row for errors.

    Values are strings for CSV/TSV and JSON values (str, int, float, bool, None) otherwise.
    ``bytes_read`` tells how far into the file reading has got (for a progress bar).
    ``encoding``/``delimiter``: as ``--encoding``/``--delimiter`` (None: see the module docstring;
    the delimiter is for CSV/TSV only).
    """

    def __init__(self, path: str | Path, encoding: str | None = None, delimiter: str | None = None):
        self.path = Path(path)
        self.kind = table_format(self.path)
        if not self.path.is_file():
            raise GptclfError(f"file not found: {self.path}")
        self.size = self.path.stat().st_size
        self.given_encoding, self.delimiter = encoding, delimiter
        self.encoding: str | None = None  # the codec used (text formats)
        self._raw = None
        try:
            if self.kind == "parquet":
                self.columns, self._rows = self._open_parquet()
            else:
                self.encoding = text_encoding(self.path, encoding)
                self._raw = open(self.path, "rb")  # noqa: SIM115 (closed by close())
                text = io.TextIOWrapper(self._raw, encoding=self.encoding, newline="")
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
        leading = self._guard(lambda: _leading_lines(text))
        delimiter = self.delimiter or self._sniff_delimiter(leading[-1] if leading else "")
        # Strict: an unclosed quote is an error, not a text that swallows the rest of the file.
        reader = csv.reader(itertools.chain(leading, text), delimiter=delimiter, strict=True)
        header = self._guard(lambda: next((r for r in reader if not _blank(r)), None), reader)
        if header is None:
            raise GptclfError(f"{self.path}: empty file, expected a header row")
        _check_unique(header, self.path)

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            while (row := self._guard(lambda: next(reader, None), reader)) is not None:
                if _blank(row):
                    continue  # a blank line, or a row of empty cells
                n += 1
                where = f"{self.path}, row {n} (line {reader.line_num})"
                if len(row) != len(header):
                    raise GptclfError(f"{where}: expected {len(header)} fields, got {len(row)}")
                yield where, dict(zip(header, row, strict=True))

        return header, rows()

    def _sniff_delimiter(self, header_line: str) -> str:
        """The suffix's delimiter, unless the header is one column split by it but several split
        by exactly one other (then that one, with a warning)."""
        default = SUFFIX_DELIMITERS[self.kind]
        if _width(header_line, default) != 1:
            return default
        widths = {d: _width(header_line, d) for d in SNIFFED_DELIMITERS if d != default}
        best = max(widths, key=widths.__getitem__)
        if widths[best] < 2 or list(widths.values()).count(widths[best]) > 1:
            return default
        log.warning(
            "%s: read as %s-separated: its header is one column split by %r but %d split by "
            "%r (--delimiter sets the delimiter)",
            self.path, DELIMITER_NAMES[best], default, widths[best], best,
        )  # fmt: skip
        return best

    def _guard(self, read, reader=None):
        """``read()``, with decoding and CSV errors turned into one clear line."""
        try:
            return read()
        except UnicodeDecodeError:
            raise GptclfError(
                not_decodable(self.path, self.encoding, self.given_encoding)
            ) from None
        except csv.Error as e:
            where = f"{self.path}: malformed file near line {reader.line_num if reader else 1}"
            raise GptclfError(f"{where}: {e}") from None

    def _open_jsonl(self, text: io.TextIOWrapper):
        lines = enumerate(text, start=1)

        def parse() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            while (numbered := self._guard(lambda: next(lines, None))) is not None:
                line_no, line = numbered
                if not line.strip():
                    continue
                n += 1
                where = f"{self.path}, row {n} (line {line_no})"
                try:
                    row = json.loads(line, object_pairs_hook=_unique_keys)
                except _DuplicateKey as e:
                    raise GptclfError(f"{where}: duplicate key {e.args[0]!r}") from None
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
        names = list(parquet.schema_arrow.names)
        _check_unique(names, self.path)

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            n = 0
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{self.path}, row {n}", row

        return names, rows()


def open_table(
    path: str | Path, encoding: str | None = None, delimiter: str | None = None
) -> Table:
    """Open a CSV/TSV/JSONL/Parquet file for streaming; use as a context manager."""
    return Table(path, encoding, delimiter)


def resolve_columns(available: Sequence[str], wanted: Sequence[str], source: object) -> list[str]:
    """The names in ``available`` for ``wanted`` (exact match, else one match ignoring case and
    surrounding spaces)."""
    resolved = []
    for name in wanted:
        if name in available:
            resolved.append(name)
            continue
        matches = [c for c in available if c.strip().lower() == name.strip().lower()]
        if len(matches) > 1:
            raise GptclfError(
                f"{source}: column {name!r} matches {len(matches)} columns "
                f"({', '.join(repr(c) for c in matches)}), none exactly: name one as written"
            )
        if not matches:
            have = ", ".join(repr(c) for c in available)
            raise GptclfError(
                f"{source}: missing column {name!r} (columns: {have}){_hint(available)}"
            )
        resolved.append(matches[0])
    return resolved


def _hint(available: Sequence[str]) -> str:
    """Why a wanted column may be missing: the header was not split (a wrong delimiter)."""
    if len(available) == 1 and any(d in available[0] for d in SNIFFED_DELIMITERS):
        return "; one column only: is the delimiter right? (--delimiter)"
    return ""


def row_text(
    row: dict[str, Any], columns: Sequence[str], where: str, empty_ok: bool = False
) -> str:
    """The row's text: the non-empty values of ``columns`` joined by ``TEXT_SEPARATOR``.

    A number, boolean, list or object (JSONL, Parquet) is an error: not text. If every value is
    empty, null or missing: ``""`` with ``empty_ok``, else an error.
    """
    parts = []
    for column in columns:
        value = row.get(column)
        if isinstance(value, (dict, list)):
            raise GptclfError(f"{where}: column {column!r} holds {type(value).__name__}, not text")
        if isinstance(value, (bool, int, float)):
            kind = "a boolean" if isinstance(value, bool) else "a number"
            raise GptclfError(f"{where}: {column} is {json.dumps(value)} ({kind}), not text")
        if value is not None and str(value).strip():
            parts.append(str(value))
    if not parts and not empty_ok:
        if nulls := [c for c in columns if c in row and row[c] is None]:
            raise GptclfError(f"{where}: {' + '.join(nulls)} is null, not text")
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
        raise GptclfError(f"{where}: empty {column}" + (" (null)" if value is None else ""))
    return label


def read_labeled(
    path: str | Path,
    text_columns: Sequence[str],
    label_column: str,
    encoding: str | None = None,
    delimiter: str | None = None,
) -> tuple[list[str], list[str]]:
    """Texts and (string) labels of every row of a table."""
    texts: list[str] = []
    labels: list[str] = []
    with open_table(path, encoding, delimiter) as table:
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


def text_encoding(path: Path, encoding: str | None) -> str:
    """The codec to read ``path`` with: ``encoding`` if given (UTF-8: a byte-order mark allowed),
    else UTF-8, unless the file's first ``SNIFF_BYTES`` show otherwise: a UTF-16/32 byte-order
    mark, or bytes that are not UTF-8 (then cp1252, see ``_not_utf8``). Invalid UTF-8 further on
    is an error when read, never a silent change of encoding midway."""
    if encoding is not None:
        return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    try:  # not final unless whole: the window may cut a character in two
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return _not_utf8(path)
    return "utf-8-sig"


def _not_utf8(path: Path) -> str:
    """cp1252 for a file that is not UTF-8 but decodes as cp1252 (a superset of latin-1's
    letters) and holds no UTF-8 sequence, with a warning that shows a line read so; else an
    error that names ``--encoding``."""
    line, byte, around = _first_undecodable(path, "utf-8") or (0, 0, b"")
    if (utf8 := _first_byte(path, _utf8_sequence_at)) is not None:
        raise GptclfError(
            f"{path}: line {_line_at(path, utf8)} is UTF-8 but line {line} is not (byte {byte}): "
            "the file mixes encodings; fix it, or read all of it as one with --encoding (e.g. "
            "--encoding cp1252)"
        )
    if (bad := _first_byte(path, _cp1252_error_at)) is not None:
        raise GptclfError(
            f"{path}: neither UTF-8 (line {line}, byte {byte}) nor cp1252 (line "
            f"{_line_at(path, bad)}, byte {bad}): give the file's encoding with --encoding"
        )
    log.warning(
        "%s is not UTF-8 (line %d, byte %d); read as cp1252, Excel's Western European "
        "encoding: %r. Give --encoding cp1252 to say so, or the right --encoding if that "
        "text looks wrong",
        path, line, byte, around.decode("cp1252", "replace").strip(),
    )  # fmt: skip
    return "cp1252"


def not_decodable(path: Path, codec: str, given: str | None) -> str:
    """The error for bytes ``codec`` cannot decode: where, and what ``--encoding`` to give."""
    utf8 = codecs.lookup(codec).name in ("utf-8", "utf-8-sig")
    name, codec = ("UTF-8", "utf-8") if utf8 else (codec, codec)
    found = _first_undecodable(path, codec)
    where = f" at line {found[0]} (byte {found[1]})" if found else ""
    if given is not None:
        return f"{path}: not valid {name}{where}; is --encoding {given} right?"
    return (
        f"{path}: not valid {name}{where}; give the file's encoding with --encoding (e.g. "
        "--encoding cp1252)"
    )


def _physical_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each line of the file; a line ends at LF, CRLF or a
    lone CR, as the reader counts them (text mode with ``newline=""``)."""
    with open(path, "rb") as f:
        line_no, offset = 1, 0
        for block in f:  # ends at b"\n", so a CRLF is never split
            start = 0
            for cr in _LONE_CR.finditer(block):
                yield line_no, offset + start, block[start : cr.end()]
                line_no, start = line_no + 1, cr.end()
            if start < len(block):
                yield line_no, offset + start, block[start:]
                line_no += 1
            offset += len(block)


def _first_undecodable(path: Path, codec: str) -> tuple[int, int, bytes] | None:
    """(line, byte offset, the bytes around it) where ``codec`` first fails, or None. Decoded
    line by line, which only codecs that write "\\n" as that byte allow (not UTF-16/32: None)."""
    if "\n".encode(codec, "ignore") != b"\n":
        return None
    for line_no, offset, line in _physical_lines(path):
        try:
            line.decode(codec)
        except UnicodeDecodeError as e:
            return line_no, offset + e.start, line[max(0, e.start - 30) : e.start + 30]
    return None


def _first_byte(path: Path, find: Callable[[bytes], int | None]) -> int | None:
    """The file offset of the first byte ``find`` points at, or None. Read in 1 MiB blocks,
    each led by the last 3 bytes of the one before: a UTF-8 sequence may straddle two."""
    with open(path, "rb") as f:
        offset, tail = 0, b""
        while block := f.read(2**20):
            if (found := find(tail + block)) is not None:
                return offset - len(tail) + found
            offset, tail = offset + len(block), block[-3:]
    return None


def _utf8_sequence_at(data: bytes) -> int | None:
    start = 0
    while found := _UTF8_START.search(data, start):
        if _UTF8_SEQUENCE.match(data, found.start()):
            return found.start()
        start = found.start() + 1
    return None


def _cp1252_error_at(data: bytes) -> int | None:
    try:
        data.decode("cp1252")
    except UnicodeDecodeError as e:
        return e.start
    return None


def _line_at(path: Path, offset: int) -> int:
    """The line (as ``_physical_lines`` counts them) that holds the byte at ``offset``."""
    last = 0
    for line_no, start, line in _physical_lines(path):
        if offset < start + len(line):
            return line_no
        last = line_no
    return last


def _leading_lines(text: io.TextIOWrapper) -> list[str]:
    """The lines up to the first one that is not blank (the header's first line), read ahead."""
    lines = []
    for line in text:
        lines.append(line)
        if line.strip():
            break
    return lines


def _width(line: str, delimiter: str) -> int:
    """How many fields ``line`` has split by ``delimiter`` (0 if it does not parse alone)."""
    try:
        return len(next(csv.reader([line], delimiter=delimiter), []))
    except csv.Error:
        return 0


def _blank(row: list[str]) -> bool:
    return not any(cell.strip() for cell in row)


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict; a key given twice is an error (json keeps the last silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def _check_unique(header: list[str], source: Path) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise GptclfError(f"{source}: duplicate column {name!r} in the header")
        seen.add(name)
