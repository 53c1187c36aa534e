"""Training at scale: wall time, peak memory and accuracy of `gptclf train` on 1,494, 15,000 and
50,000 texts, with the frozen-prefix cache in memory or spilled to disk.

    python benchmarks/scale.py run [--sizes 1494,15000,50000] [--budget-mb MIB]
    python benchmarks/speed.py report      # the recorded runs: a section of docs/BENCHMARKS.md

Tables. N texts, half spam and half ham, from the bundled SMS Spam Collection (747 spam, 4,827
ham): each class's own messages first (in a seeded order), then, as many as needed, new texts
made by joining the first half (in words) of one message of the class to the second half of
another. N = 1,494 is the book's balanced set itself (747 + 747 real messages). The recombined
texts have the real messages' lengths and vocabulary, so tokens per text stay about the same and
time and memory grow with N alone.

Run. `gptclf train --recipe smollm2 --layers 8 --epochs 1 --no-baseline`, in its own process
per size: the main recipe cut to SmolLM2's first 8 of 30 blocks (the last two trained, the six
below cached) and one epoch, to fit a 2-core machine. The cache holds the states entering block
6, d = 576 values per token whatever the depth, so its memory is exercised in full; the time of
the full recipe is about 30/8 x the prefix pass plus 5 epochs of the two trained blocks. The
TF-IDF baseline is left out: it is not what is measured. `--budget-mb` passes
`--cache-budget-mb` (default: gptclf's, 1,024 MiB), to force a spill.

Measured: wall time (process start to exit), CPU time (user + system, of the training process:
on a machine shared with other jobs, wall time stretches with their load, CPU time much less;
linearity is judged on it), peak resident memory of the training process
(`os.wait4`'s ru_maxrss: the kernel's high-water mark of that process alone), tokens (the
prefix cache's count from the run's log: every text of every split, as padded: dynamic padding
keeps the real tokens), seconds per 1,000 texts and per 1M tokens, test accuracy, and where the
cache was (metrics.json `prefix_cache_storage`: memory or spilled). Each result is appended to
benchmarks/results/scale.jsonl (the file rewritten atomically); a size already recorded with the
same settings is skipped, so an interrupted run continues where it stopped. The machine and its
load average (before and after) are recorded beside each result.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
WORK = ROOT / "benchmarks" / ".work" / "scale"
SIZES = (1494, 15000, 50000)
RECIPE = ["--recipe", "smollm2", "--layers", "8", "--epochs", "1", "--no-baseline"]
SEED = 0
TOKENS = re.compile(r"cached the inputs of block \d+: (\d+) tokens|spilled (\d+) tokens")


def table(n: int) -> tuple[list[str], list[str]]:
    """N texts and their labels: each class's real messages, then recombined ones, n/2 each."""
    from gptclf.data import read_sms_spam

    data = read_sms_spam()
    texts, labels = [], []
    rng = random.Random(SEED)
    for c, name in enumerate(data.label_names):
        own = [t for t, label in zip(data.texts, data.labels, strict=True) if label == c]
        rng.shuffle(own)
        want = n // 2 + (n % 2 if c == 0 else 0)
        made = own[:want]
        while len(made) < want:
            a, b = rng.sample(own, 2)
            first, second = a.split(), b.split()
            made.append(" ".join(first[: len(first) // 2] + second[len(second) // 2 :]))
        texts += made
        labels += [name] * want
    return texts, labels


def write_table(n: int) -> Path:
    path = WORK / f"sms-{n}.csv"
    if not path.is_file():
        from gptclf.fileio import atomic_write

        texts, labels = table(n)

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["Text", "Label"])
                w.writerows(zip(texts, labels, strict=True))

        atomic_write(path, write)
    return path


def measure(n: int, budget_mb: float | None) -> dict[str, Any]:
    """One `gptclf train` on N texts in its own process: time, peak RSS, tokens, accuracy."""
    from gptclf.experiments.runner import hardware

    data = write_table(n)
    out = WORK / (f"run-{n}" + ("" if budget_mb is None else f"-budget{budget_mb:g}"))
    budget = [] if budget_mb is None else ["--cache-budget-mb", f"{budget_mb:g}"]
    cmd = [sys.executable, "-m", "gptclf", "train", *RECIPE, *budget]
    cmd += ["--data", str(data), "--out", str(out), "--overwrite", "--no-report", "--no-progress"]
    load_before = os.getloadavg()
    log_path = WORK / f"{out.name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    began = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - began
    cpu_seconds = usage.ru_utime + usage.ru_stime  # what the load of other jobs barely changes
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"size {n}: gptclf train exited {proc.returncode}:\n{text[-3000:]}")
    found = TOKENS.search(text)
    tokens = int(found.group(1) or found.group(2)) if found else None
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "texts": n,
        "budget_mb": budget_mb,
        "command": " ".join(["gptclf train", *RECIPE, *budget, "--data", data.name]),
        "wall_seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "tokens": tokens,
        "seconds_per_1k_texts": 1000 * seconds / n,
        "seconds_per_1m_tokens": 1e6 * seconds / tokens if tokens else None,
        "cpu_seconds": cpu_seconds,
        "cpu_seconds_per_1m_tokens": 1e6 * cpu_seconds / tokens if tokens else None,
        "train_seconds": metrics["train_seconds"],
        "cache_seconds": metrics["cache_seconds"],
        "test_accuracy": metrics["test"]["accuracy"],
        "cache": metrics.get("prefix_cache_storage"),
        "cache_dtype": metrics.get("prefix_cache_dtype"),
        "hardware": hardware()["summary"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def read_results(path: Path = RESULTS) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record(result: dict[str, Any]) -> None:
    from gptclf.fileio import write_bytes

    kept = [r for r in read_results() if key(r) != key(result)] + [result]
    write_bytes(RESULTS, "".join(json.dumps(r) + "\n" for r in kept).encode())


def key(r: dict[str, Any]) -> tuple:
    return r["texts"], r["budget_mb"], r["command"].split(" --data")[0]


def run(sizes: list[int], budget_mb: float | None) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in read_results()}
    for n in sizes:
        budget = [] if budget_mb is None else ["--cache-budget-mb", f"{budget_mb:g}"]
        if (n, budget_mb, " ".join(["gptclf train", *RECIPE, *budget])) in done:
            print(f"{n:>7,} texts: recorded, skipped")
            continue
        print(f"{n:>7,} texts: running", flush=True)
        result = measure(n, budget_mb)
        record(result)
        print(format_row(result), flush=True)


def format_row(r: dict[str, Any]) -> str:
    per_m = r["seconds_per_1m_tokens"]
    return (
        f"{r['texts']:>7,} texts {r['tokens'] or 0:>10,} tokens {r['wall_seconds']:>8.0f} s "
        f"{r['seconds_per_1k_texts']:>6.1f} s/1k texts {per_m or 0:>7.0f} s/1M tokens "
        f"CPU {r['cpu_seconds']:>7.0f} s = {r['cpu_seconds_per_1m_tokens'] or 0:>6.0f} s/1M tokens "
        f"{r['peak_rss_mib']:>7.0f} MiB peak  acc {100 * r['test_accuracy']:.2f}%  "
        f"cache {r['cache']} ({r['cache_dtype']})"
    )


def section(path: Path = RESULTS) -> list[str]:
    """docs/BENCHMARKS.md's section (called by speed.py's report)."""
    results = sorted(read_results(path), key=lambda r: (r["texts"], r["budget_mb"] or 1e12))
    if not results:
        return []
    lines = [
        "",
        "## Training at scale: time and memory by number of texts (benchmarks/scale.py)",
        "",
        "`python benchmarks/scale.py run` (the rows with a cache budget: `--budget-mb MIB`, which",
        "passes `--cache-budget-mb` to force a spill): `gptclf train --recipe smollm2 --layers 8",
        "--epochs 1 --no-baseline` on N texts recombined from the SMS messages (half spam; 1,494 =",
        "the book's balanced set itself), each size in its own process. The recipe is cut to",
        "SmolLM2's first 8 blocks and one epoch to fit a 2-core machine; the frozen-prefix cache",
        "holds d = 576 values per token whatever the depth, so its memory is exercised in full.",
        "Peak RSS: the training process's high-water mark (`ru_maxrss`). Tokens: every text of",
        "every split (dynamic padding: real tokens only). CPU s: user + system time of the",
        "training process; the machine was shared with other jobs (load average in the last",
        "column, on 2 cores), which stretches wall time far more than CPU time, so linearity in",
        "tokens is read from CPU s / 1M tokens. The cache is kept in memory up to",
        "`--cache-budget-mb` (default 1,024 MiB, 2,048 before 2026-12-03; fp32, else bf16), else",
        "spilled to a bf16 file",
        "read batch by batch. Targets (issue #17): peak RSS <= 3 GiB at 50,000 texts; time linear",
        "in tokens.",
        "",
        "| texts | tokens | cache budget MiB | cache | wall s | s / 1k texts | CPU s | "
        "CPU s / 1M tokens | peak RSS MiB | test acc % | machine (load average before/after) | "
        "date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['texts']:,} | {r['tokens'] or 0:,} | "
            f"{'2048 (the default then)' if r['budget_mb'] is None else format(r['budget_mb'], 'g')} | "
            f"{r['cache']} ({r['cache_dtype']}) | {r['wall_seconds']:.0f} | "
            f"{r['seconds_per_1k_texts']:.1f} | {r['cpu_seconds']:.0f} | "
            f"{r['cpu_seconds_per_1m_tokens'] or 0:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {100 * r['test_accuracy']:.2f} | {r['hardware']} "
            f"({r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}) | "
            f"{r['finished'][:10]} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure the sizes not recorded yet")
    r.add_argument("--sizes", default=",".join(map(str, SIZES)))
    r.add_argument("--budget-mb", type=float, help="--cache-budget-mb for these runs")
    sub.add_parser("table", help="print the recorded results")
    args = p.parse_args()
    if args.cmd == "run":
        from gptclf.train_config import CACHE_BUDGET_MB

        # Always passed, so every row records the budget it ran with (defaults change).
        run([int(s) for s in args.sizes.split(",")], args.budget_mb or CACHE_BUDGET_MB)
    for result in read_results():
        print(format_row(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
