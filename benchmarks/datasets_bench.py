"""The recipes on several datasets (benchmarks/datasets.py): the fixed recipe (`--recipe
smollm2`), `--recipe auto` (with a time budget), the TF-IDF baseline (from the fixed run's
metrics.json) and MiniLM-L6 ([CLS], last block: the `minilm-cls` row of docs/RESULTS.md), each
`gptclf train` in its own process, timed from outside. One JSON per (dataset, system) in
benchmarks/results/datasets/, written when the run ends: a rerun skips what is there.

    python benchmarks/datasets_bench.py run [--datasets sentiment genre sotu] [--systems ...]
    python benchmarks/datasets_bench.py report      # docs/DATASETS.md from the cached results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import BUILDERS, build  # noqa: E402

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results" / "datasets"
RUNS = ROOT / ".work" / "runs"
DOC = REPO / "docs" / "DATASETS.md"
COMMON = ["--max-length", "192", "--no-report", "--no-progress"]
AUTO_BUDGET = "6m"
SYSTEMS = {
    "fixed": ["--recipe", "smollm2"],
    "auto": ["--recipe", "auto", "--time-budget", AUTO_BUDGET],
    "minilm": ["--model", "minilm-l6", "--pool", "cls", "--padding", "dynamic"],
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run_one(dataset: str, system: str) -> dict:
    path = RESULTS / f"{dataset}__{system}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = RUNS / dataset / system
    cmd = [
        sys.executable,
        "-m",
        "gptclf",
        "train",
        "--data",
        str(build(dataset)),
        "--out",
        str(out),
        "--overwrite",  # no cached result: a run left there before is redone
    ]
    cmd += SYSTEMS[system] + COMMON
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (RUNS / dataset).mkdir(parents=True, exist_ok=True)
    (RUNS / dataset / f"{system}.log").write_text(done.stderr)
    if done.returncode != 0:
        print(f"{dataset}/{system} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {}
    metrics = json.loads((out / "metrics.json").read_text())
    result = {
        "dataset": dataset,
        "system": system,
        "command": "gptclf train --data DIR " + " ".join(SYSTEMS[system] + COMMON),
        "wall_seconds": wall,
        "machine": {"cpu": cpu_model(), "threads": os.cpu_count(), "note": "shared, loaded"},
        "metrics": {
            split: {k: metrics[split].get(k) for k in ("accuracy", "f1", "macro_f1", "n")}
            for split in ("train", "validation", "test")
        },
        "baseline": {
            split: metrics[split].get("baseline") for split in ("train", "validation", "test")
        },
        "auto": metrics.get("auto"),
        "train_seconds": metrics["train_seconds"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def table(results: dict[tuple[str, str], dict]) -> list[str]:
    lines = [
        "| dataset | system | test accuracy | test F1 (macro) | validation accuracy | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in BUILDERS:
        fixed = results.get((dataset, "fixed"))
        if fixed:
            base = fixed["baseline"]
            seconds = base["test"]["seconds"]
            lines.append(
                f"| {dataset} | TF-IDF baseline | {pct(base['test']['accuracy'])} | "
                f"{pct(base['test'].get('macro_f1'))} | {pct(base['validation']['accuracy'])} | "
                f"{seconds:.1f} ({100 * seconds / fixed['wall_seconds']:.1f}% of fixed) |"
            )
        for system in SYSTEMS:
            r = results.get((dataset, system))
            if not r:
                lines.append(f"| {dataset} | {system} | not run | | | |")
                continue
            m = r["metrics"]
            label = system
            if system == "auto" and r["auto"] and "winner" in r["auto"]:
                label = f"auto → {r['auto']['winner']}"
            lines.append(
                f"| {dataset} | {label} | {pct(m['test']['accuracy'])} | "
                f"{pct(m['test']['macro_f1'])} | {pct(m['validation']['accuracy'])} | "
                f"{r['wall_seconds']:.0f} |"
            )
    return lines


def auto_lines(results: dict[tuple[str, str], dict]) -> list[str]:
    lines = []
    for dataset in BUILDERS:
        r = results.get((dataset, "auto"))
        if not r or not r["auto"]:
            continue
        lines.append(f"- **{dataset}**: {r['auto'].get('why') or r['auto'].get('fallback')}.")
        for c in r["auto"].get("candidates", []):
            if c["status"] == "run":
                lines.append(
                    f"  - {c['name']}: validation {pct(c['validation_accuracy'])}% (loss "
                    f"{c['validation_loss']:.4f}), {c['epochs_run']} epochs, "
                    f"{c['total_seconds']:.0f} s, prefix cache {c['prefix_cache']}"
                )
            else:
                lines.append(
                    f"  - {c['name']}: {c['status']} (about {c['estimated_seconds']:.0f} s)"
                )
    return lines


def report() -> None:
    results = {}
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        results[(r["dataset"], r["system"])] = r
    machine = next(iter(results.values()))["machine"] if results else {}
    text = [
        "# Datasets beyond SMS",
        "",
        "Generated by `python benchmarks/datasets_bench.py report` from the cached results of "
        "`python benchmarks/datasets_bench.py run` (datasets: `benchmarks/datasets.py`, which "
        "says where each comes from and its licence; 700/100/200 texts per dataset, cut to 192 "
        f"tokens; `auto` with `--time-budget {AUTO_BUDGET}`; one seed, 123).",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, "
        "**shared with other jobs and heavily loaded: wall times are inflated** and only "
        "roughly comparable between rows.",
        "",
        *table(results),
        "",
        "## What `auto` tried",
        "",
        *auto_lines(results),
        "",
    ]
    DOC.write_text("\n".join(text))
    print(DOC)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--datasets", nargs="+", default=list(BUILDERS))
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    args = p.parse_args()
    if args.action == "report":
        return report()
    for system in args.systems:  # every dataset's fixed run first: the baseline comes with it
        for dataset in args.datasets:
            print(
                dataset, system, json.dumps(run_one(dataset, system).get("metrics", {}).get("test"))
            )
            sys.stdout.flush()
    report()


if __name__ == "__main__":
    main()
