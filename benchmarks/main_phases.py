"""Where the main job's time goes: `gptclf train --recipe smollm2` split into its stages.

    python benchmarks/main_phases.py [--label NAME] [-- EXTRA TRAIN FLAGS]

Runs the job in this process under cProfile and reports the cumulative wall time of each stage
of `train.fit` (model load, tokenizing, the frozen-prefix pass, the epochs' training steps,
validation, checkpoint and resume-state saves, the final evaluation, the report). cProfile
slows Python-heavy code a little; the stages are large, so their shares are what to read.
Appends one JSON line per run to benchmarks/results/main_phases.jsonl (machine, flags, the
environment's ISA caps, e.g. ATEN_CPU_CAPABILITY=avx2 to imitate an AVX2-only CPU).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "main_phases.jsonl"
# (stage, module, function): cumulative time of each; nested stages are shown inside theirs.
STAGES = [
    ("load model (GGUF read)", "train.py", "load_model"),
    ("tokenize", "train.py", "encode_splits"),
    ("frozen-prefix pass", "train.py", "add_prefix_cache"),
    ("train epochs", "train.py", "train_epoch"),
    ("  of which: resume-state saves", "resume.py", "save"),
    ("validation", "train.py", "validate"),
    ("checkpoint saves", "train.py", "save_checkpoint"),
    ("finish: final evaluation, metrics", "train.py", "finish"),
    ("  of which: report and plots", "train.py", "write_report"),
    ("  of which: TF-IDF baseline", "baseline.py", "add_baseline"),
]
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    found: dict[str, float] = {}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, module, name in STAGES:
            if function == name and filename.endswith(f"gptclf/{module}"):
                found[stage] = found.get(stage, 0.0) + cumulative
    return found


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def read_results(path: Path = RESULTS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def section(path: Path = RESULTS) -> list[str]:
    """docs/BENCHMARKS.md's section (called by speed.py's report): one column per recorded run."""
    runs = read_results(path)
    if not runs:
        return []
    lines = [
        "",
        "## Where the main job's time goes (benchmarks/main_phases.py)",
        "",
        "`python benchmarks/main_phases.py [--label L] [-- FLAGS]`: `gptclf train --recipe smollm2`",
        "under cProfile (which slows the Python-heavy training steps somewhat: wall times here are",
        "above the unprofiled ones), cumulative seconds per stage of `train.fit`. Capped runs set",
        "`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` on the AVX-512",
        "machine: they use AVX2 kernels, as an AVX2-only CPU would, but this CPU's cores and memory,",
        "so they show shares, not an AVX2 machine's times.",
        "",
        "| stage | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    rows = [stage for stage, _, _ in STAGES]
    for stage in rows:
        cells = [
            f"{r['stages'][stage]:.1f} ({100 * r['stages'][stage] / r['wall_seconds']:.0f}%)"
            if stage in r["stages"]
            else "-"
            for r in runs
        ]
        lines.append(f"| {stage.strip()} | " + " | ".join(cells) + " |")
    lines += [
        "| **wall s** | " + " | ".join(f"**{r['wall_seconds']:.1f}**" for r in runs) + " |",
        "| test accuracy % | " + " | ".join(f"{100 * r['test_accuracy']:.2f}" for r in runs) + " |",
        "| peak RSS MiB | " + " | ".join(f"{r['peak_rss_mib']:,}" for r in runs) + " |",
        "| machine (load average at start), date | "
        + " | ".join(
            f"{r['cpu']}, {r['threads']} threads ({r['load_average_at_start']:.1f}), {r['date']}"
            for r in runs
        )
        + " |",
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--label", default="main job", help="what this run is (for the table)")
    p.add_argument("extra", nargs="*", help="extra `gptclf train` flags (after --)")
    args = p.parse_args()
    from gptclf.cli import main as gptclf_main

    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--recipe", "smollm2", "--out", out, "--overwrite", *args.extra]
        load_average = os.getloadavg()[0]
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        code = gptclf_main(argv)
        profile.disable()
        wall = time.perf_counter() - began
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    if code:
        sys.exit(code)
    stages = stage_seconds(pstats.Stats(profile))
    flags = set(Path("/proc/cpuinfo").read_text().split())
    record = {
        "label": args.label,
        "argv": argv[:3] + argv[6:],
        "wall_seconds": round(wall, 2),
        "stages": {k: round(v, 2) for k, v in stages.items()},
        "test_accuracy": metrics["test"]["accuracy"],
        "best_epoch": metrics["best_epoch"],
        "precision": metrics["config"]["train_config"]["precision"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu": cpu_name(),
        "avx512_bf16": "avx512_bf16" in flags,
        "isa_caps": {v: os.environ[v] for v in ISA_VARIABLES if v in os.environ},
        "threads": __import__("torch").get_num_threads(),
        "load_average_at_start": load_average,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a", encoding="utf-8") as f:  # one line per run: appending keeps older ones
        f.write(json.dumps(record) + "\n")
    print(f"{args.label}: {wall:.1f} s wall, test accuracy {100 * record['test_accuracy']:.2f}%")
    for stage, _, _ in STAGES:
        if stage in stages:
            print(f"  {stage:40s} {stages[stage]:7.1f} s  {100 * stages[stage] / wall:5.1f}%")


if __name__ == "__main__":
    main()
