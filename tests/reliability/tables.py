"""Input builders for tables.toml."""

from __future__ import annotations

from pathlib import Path

from fixtures_tool import reviews, write_reviews


def latin1_csv(tmp: Path, run: Path) -> None:
    rows = reviews(10)
    rows[3]["review_body"] = "Café was fine."
    write_reviews(tmp / "data.csv", rows)
    data = (tmp / "data.csv").read_text(encoding="utf-8")
    (tmp / "data.csv").write_bytes(data.encode("latin-1"))
