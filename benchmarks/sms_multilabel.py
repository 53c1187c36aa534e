"""A multi-label dataset derived from the bundled SMS Spam Collection, for the README's example.

    python benchmarks/sms_multilabel.py [--all] [--out benchmarks/.work/sms_multilabel.csv]

Each message gets zero or more of five labels. Only `spam` is the collection's own (human)
label; the other four are derived from the message's text by the rules below, so they are
exact functions of the text: the data shows the multi-label mechanics (label cells, iterative
stratification, sigmoid outputs, per-label thresholds and metrics), not a hard task.

    spam      the collection's label (ham otherwise; ham is not a label: no label at all is fine)
    money     a currency sign (£ $ €) or cash, prize, won/win/winner, reward, award, bonus, pound(s)
    question  a "?"
    url       www., http or a .com/.net/.org/.co.uk address
    number    a run of 5 or more digits (phone numbers, short codes)

By default the messages are the book's 1,494 (all 747 spam and as many ham, `--split book`'s
rows, the main job's data); `--all` takes all 5,572. Columns: `Text`, `Labels` (joined by "|").
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from gptclf.data import load_dataset, split_book
from gptclf.tables import TableWriter

ROOT = Path(__file__).resolve().parent.parent
RULES = {
    "money": re.compile(
        r"[£$€]|\b(cash|prizes?|won|win|winner|reward|award|bonus|pounds?)\b", re.IGNORECASE
    ),
    "question": re.compile(r"\?"),
    "url": re.compile(r"www\.|http|\.(com|net|org|co\.uk)\b", re.IGNORECASE),
    "number": re.compile(r"\d{5,}"),
}


def labels_of(text: str, spam: bool) -> list[str]:
    return (["spam"] if spam else []) + [name for name, rule in RULES.items() if rule.search(text)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="all 5,572 messages, not the book's")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / ".work" / "sms_multilabel.csv"))
    args = parser.parse_args()
    data = load_dataset("sms-spam")
    parts = [data] if args.all else split_book(data)
    rows = [
        {"Text": text, "Labels": "|".join(labels_of(text, y == 1))}
        for part in parts
        for text, y in zip(part.texts, part.labels, strict=True)
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with TableWriter(out, ["Text", "Labels"]) as writer:
        for row in rows:
            writer.write(row)
    counts = Counter(label for row in rows for label in row["Labels"].split("|") if label)
    per_text = Counter(len([x for x in row["Labels"].split("|") if x]) for row in rows)
    summary = {
        "out": str(out),
        "texts": len(rows),
        "label_counts": dict(sorted(counts.items())),
        "texts_by_label_count": dict(sorted(per_text.items())),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
