"""Input builders and checks for tables.toml: the review table (``fixtures_tool.reviews``, 30
rows, 3 classes) written as spreadsheets, databases and scripts write tables."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from fixtures_tool import COLUMNS, reviews, write_reviews

ROWS = 30  # reviews(10): 10 per class
# Texts whose bytes differ between UTF-8 and cp1252 (’ and € are cp1252-only, not latin-1).
ACCENTED = ["Café was fine.", "A naïve délice, great.", "It’s 5 € — awful.", "Crème brûlée ok."]
MEGABYTES = 3


def rows_with(texts: list[str]) -> list[dict[str, str]]:
    """The review rows, the first ``len(texts)`` of them with these texts."""
    rows = reviews(10)
    for row, text in zip(rows, texts, strict=False):
        row["review_body"] = text
    return rows


def delimited(rows: list[dict], delimiter: str = ",", line_end: str = "\r\n") -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, COLUMNS, delimiter=delimiter, lineterminator=line_end)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def expect_texts(tmp: Path, rows: list[dict]) -> None:
    """What `predicted_texts_exact` compares the predictions' review_body column with."""
    (tmp / "expected.json").write_text(json.dumps([r["review_body"] for r in rows]))


# ---- BOM, line endings, quoting ----


def bom_csv(tmp: Path, run: Path) -> None:
    """Excel's "CSV UTF-8": a byte-order mark, CRLF line ends."""
    rows = rows_with(ACCENTED)
    (tmp / "bom.csv").write_bytes(b"\xef\xbb\xbf" + delimited(rows).encode("utf-8"))
    expect_texts(tmp, rows)


def bom_crlf_jsonl(tmp: Path, run: Path) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows_with(ACCENTED)]
    (tmp / "bom.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))


def crlf_csv(tmp: Path, run: Path) -> None:
    (tmp / "crlf.csv").write_bytes(delimited(reviews(10)).encode("utf-8"))


def lone_cr_csv(tmp: Path, run: Path) -> None:
    """Classic Mac OS line ends: CR alone (old Excel for Mac still writes them)."""
    rows = rows_with(["Two lines:\rin one field", 'said "great"\ragain'])
    (tmp / "cr.csv").write_bytes(delimited(rows, line_end="\r").encode("utf-8"))
    expect_texts(tmp, rows)


SPECIAL_TEXTS = [
    "line one\nline two, great",
    "windows\r\nline, awful",
    'quoted "word", then\ta tab',
    '"starts with a quote',
    "ends with a comma,",
    "\ttab first, okay",
]


def quoted_csv(tmp: Path, run: Path) -> None:
    rows = rows_with(SPECIAL_TEXTS)
    (tmp / "quoted.csv").write_bytes(delimited(rows).encode("utf-8"))
    expect_texts(tmp, rows)


# ---- sizes, blank lines, whitespace ----


def huge_field_csv(tmp: Path, run: Path) -> None:
    """One review of several megabytes (Python's csv refuses fields over 128 kB by default)."""
    rows = rows_with(["great " * (MEGABYTES * 2**20 // 6)])
    write_reviews(tmp / "huge.csv", rows)
    write_reviews(tmp / "huge.jsonl", rows)
    expect_texts(tmp, rows)


def blank_trailing_lines(tmp: Path, run: Path) -> None:
    text = delimited(reviews(10))
    (tmp / "blank.csv").write_bytes((text + "\r\n\r\n\n").encode("utf-8"))
    # Excel saves the formatted but empty rows below the data as rows of empty cells
    (tmp / "excel.csv").write_bytes((text + ",,,\r\n" * 3).encode("utf-8"))
    (tmp / "spaces.csv").write_bytes((text + "   \r\n\t\r\n").encode("utf-8"))
    expect_texts(tmp, reviews(10))


def whitespace_names_and_labels(tmp: Path, run: Path) -> None:
    rows = reviews(10)
    for i, row in enumerate(rows):
        row["sentiment"] = [f" {row['sentiment']}", f"{row['sentiment']}  ", row["sentiment"]][
            i % 3
        ]
    text = delimited(rows)
    header, rest = text.split("\r\n", 1)
    spaced = ", ".join(f" {name}" if name != "headline" else f"{name} " for name in COLUMNS)
    (tmp / "spaced.csv").write_bytes(f"{spaced}\r\n{rest}".encode())


# ---- encodings ----


def latin1_csv(tmp: Path, run: Path) -> None:
    rows = reviews(10)
    rows[3]["review_body"] = "Café was fine."
    write_reviews(tmp / "data.csv", rows)
    data = (tmp / "data.csv").read_text(encoding="utf-8")
    (tmp / "data.csv").write_bytes(data.encode("latin-1"))


def cp1252_csv(tmp: Path, run: Path) -> None:
    """Excel's plain "CSV" on an English Windows: cp1252, CRLF."""
    rows = rows_with(ACCENTED)
    (tmp / "cp1252.csv").write_bytes(delimited(rows).encode("cp1252"))
    expect_texts(tmp, rows)


def late_bad_utf8(tmp: Path, run: Path) -> None:
    """Valid UTF-8 for well over 64 kB, then one latin-1 byte on line 1,003."""
    rows = reviews(10)
    rows[0]["review_body"] = "Café " + "great " * 20
    text = delimited(rows * 34)  # 1,021 lines
    lines = text.split("\r\n")
    lines[1002] = lines[1002].replace("It was", "Caf\udce9 was")
    (tmp / "late.csv").write_bytes("\r\n".join(lines).encode("utf-8", "surrogateescape"))


def mixed_encodings(tmp: Path, run: Path) -> None:
    """Two exports pasted together: UTF-8 rows, then cp1252 rows."""
    rows = rows_with(ACCENTED)
    text = delimited(rows)
    (tmp / "mixed.csv").write_bytes(
        text.encode("utf-8") + delimited(rows).split("\r\n", 1)[1].encode("cp1252")
    )


def utf16_csv(tmp: Path, run: Path) -> None:
    """SQL Server Management Studio and Excel's "Unicode text" write UTF-16 with a BOM."""
    rows = rows_with(ACCENTED)
    (tmp / "utf16.csv").write_bytes(delimited(rows).encode("utf-16"))
    expect_texts(tmp, rows)


# ---- delimiters ----


def excel_semicolon(tmp: Path, run: Path) -> None:
    """Excel's "CSV" where the decimal separator is a comma (Germany, France, ...): semicolons,
    cp1252, CRLF."""
    rows = rows_with(ACCENTED)
    (tmp / "de.csv").write_bytes(delimited(rows, ";").encode("cp1252"))
    (tmp / "de_utf8.csv").write_bytes(delimited(rows, ";").encode("utf-8"))
    (tmp / "tabs.csv").write_bytes(delimited(rows, "\t").encode("utf-8"))
    expect_texts(tmp, rows)


def remember_table_options(tmp: Path, run: Path) -> None:
    """The run as if trained on de.csv with --encoding cp1252 --delimiter ';'."""
    excel_semicolon(tmp, run)
    config = json.loads((run / "config.json").read_text())
    config["train_config"].update(data=str(tmp / "de.csv"), encoding="cp1252", delimiter=";")
    config["train_config"].update(text_columns=["review_body"], label_column="sentiment")
    (run / "config.json").write_text(json.dumps(config))


def multilabel_semicolon(tmp: Path, run: Path) -> None:
    rows = rows_with(ACCENTED)
    for i, row in enumerate(rows):
        row["sentiment"] += "|short" if len(row["review_body"]) < 30 and i % 2 else ""
    (tmp / "ml.csv").write_bytes(delimited(rows, ";").encode("cp1252"))


# ---- JSON values, column names ----


def jsonl_values(tmp: Path, run: Path) -> None:
    rows: list[dict] = list(reviews(10))
    number, null = [dict(r) for r in rows], [dict(r) for r in rows]
    number[2]["review_body"] = 42
    null[3]["review_body"] = None
    for name, table in (("number", number), ("null", null)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table))


def duplicate_columns(tmp: Path, run: Path) -> None:
    text = delimited(reviews(10)).replace("headline", "review_body", 1)
    (tmp / "dup.csv").write_bytes(text.encode("utf-8"))
    header = (
        'review_body,Review_Body,headline,sentiment\r\n"a",b,c,positive\r\n"d",e,f,negative\r\n'
    )
    (tmp / "case.csv").write_bytes(header.encode("utf-8"))
    lines = [json.dumps(r) for r in reviews(10)]
    lines[4] = lines[4][:-1] + ', "review_body": "again"}'
    (tmp / "dup.jsonl").write_text("\n".join(lines) + "\n")


# ---- checks ----


def trained_on_every_row(tmp: Path, output: str) -> None:
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert sum(metrics[s]["n"] for s in ("train", "validation", "test")) == ROWS, metrics
    assert metrics["labels"] == ["negative", "neutral", "positive"], metrics["labels"]


def predicted_texts_exact(tmp: Path, output: str) -> None:
    """out.csv has one row per data row, texts exactly as written, the header's names clean."""
    with open(tmp / "out.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == COLUMNS, list(rows[0])
    assert [r["review_body"] for r in rows] == json.loads((tmp / "expected.json").read_text())
    assert all(r["predicted_label"] for r in rows)


def evaluated_every_split(tmp: Path, output: str) -> None:
    result = json.loads(output)
    assert sum(result[s]["n"] for s in ("train", "validation", "test")) == ROWS, result
