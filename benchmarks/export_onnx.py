"""The exported ONNX model (fp32 and int8) in onnxruntime vs gptclf's own `predict`.

    python benchmarks/export_onnx.py run [--run runs/main] [--reps 3]  # appends a JSON line to
                                                 # benchmarks/results/export_onnx.jsonl
    python benchmarks/speed.py report            # its section of docs/BENCHMARKS.md

Exports RUN (default: the main job's SmolLM2-135M classifier) with `gptclf export --format onnx
--int8`, then classifies the test split it was trained on, in one process, the same texts in
batches of 32 sorted by length, tokenization included, with: gptclf predict in fp32, bf16
(where the CPU has it natively) and int8 (`--precision int8`: per-channel weights, per-token
activation scales), and onnxruntime with
model.onnx and model_int8.onnx. Each repetition runs every system once, in turn, after a
warm-up pass; a system's speed is its best repetition (the least disturbed by other work on
the machine), its median beside it. Agreement is measured against gptclf fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "export_onnx.jsonl"
WORK = ROOT / "benchmarks" / ".work" / "export_onnx"
BATCH = 32


def ort_classifier(directory: Path, model_file: str, threads: int) -> Callable:
    """texts -> logits with onnxruntime and the export's own tokenizer.json + config.json, as
    a deployment without gptclf would: length-sorted batches padded to their longest row."""
    import onnxruntime
    from tokenizers import Tokenizer

    config = json.loads((directory / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()  # padded per batch below, after sorting by length
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(directory / model_file), options)

    def logits(texts: list[str]) -> np.ndarray:
        ids = [e.ids for e in tokenizer.encode_batch(texts, config["add_special_tokens"])]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), len(config["id2label"])), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            T = max(len(ids[i]) for i in rows)
            feed = np.full((len(rows), T), config["pad_token_id"], dtype=np.int64)
            mask = np.zeros((len(rows), T), dtype=np.int64)
            for r, i in enumerate(rows):
                feed[r, : len(ids[i])], mask[r, : len(ids[i])] = ids[i], 1
            out[rows] = session.run(["logits"], {"input_ids": feed, "attention_mask": mask})[0]
        return out

    return logits


def gptclf_classifier(run: Path, precision: str) -> Callable:
    from gptclf.api import Classifier

    clf = Classifier.load(run, precision=precision)
    return lambda texts: clf._logits(texts, BATCH).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def export_timed(run: Path) -> dict:
    from gptclf.export import export

    start = time.perf_counter()
    export(run, WORK, "onnx", int8=True, force=True)
    seconds = time.perf_counter() - start
    sizes = {f: (WORK / f).stat().st_size / 2**20 for f in ("model.onnx", "model_int8.onnx")}
    return {"export_seconds": seconds, "size_mib": sizes}


def systems(run: Path, threads: int) -> dict[str, Callable]:
    from gptclf.inference import native_bf16

    found = {"gptclf fp32": gptclf_classifier(run, "fp32")}
    if native_bf16("cpu"):
        found["gptclf bf16"] = gptclf_classifier(run, "bf16")
    found["gptclf int8 (per-token)"] = gptclf_classifier(run, "int8")
    found["onnxruntime fp32"] = ort_classifier(WORK, "model.onnx", threads)
    found["onnxruntime int8 (dynamic)"] = ort_classifier(WORK, "model_int8.onnx", threads)
    return found


def test_split(run: Path) -> tuple[list[str], np.ndarray, str]:
    from gptclf.api import Classifier
    from gptclf.checkpoint import read_info
    from gptclf.data import splits_from_config

    info = read_info(run)
    test = splits_from_config(info.train_config)[2]
    index = {name: i for i, name in enumerate(info.labels)}
    labels = np.array([index[test.label_names[y]] for y in test.labels])
    default = Classifier.load(run).precision  # what `gptclf predict RUN` runs in here
    return test.texts, labels, default


def measure(run: Path, reps: int) -> dict:
    import onnxruntime
    import torch

    from gptclf.experiments.runner import hardware

    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    texts, labels, default = test_split(run)
    record = {"run": str(run), "n": len(texts), "batch_size": BATCH, **export_timed(run)}
    found = systems(run, threads)
    logits = {name: classify(texts) for name, classify in found.items()}  # warm-up pass
    seconds: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(reps):
        for name, classify in found.items():
            start = time.perf_counter()
            classify(texts)
            seconds[name].append(time.perf_counter() - start)
    reference = softmax(logits["gptclf fp32"])
    record["systems"] = {
        name: {
            "accuracy": float((logits[name].argmax(1) == labels).mean()),
            "max_abs_dprob_vs_gptclf_fp32": float(np.abs(softmax(logits[name]) - reference).max()),
            "labels_differing_vs_gptclf_fp32": int(
                (logits[name].argmax(1) != reference.argmax(1)).sum()
            ),
            "seconds": seconds[name],
            "messages_per_second": len(texts) / min(seconds[name]),
            "median_messages_per_second": len(texts) / statistics.median(seconds[name]),
        }
        for name in found
    }
    record.update(
        default_precision=default,
        threads=threads,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        hardware=hardware()["summary"],
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return record


def section(path: Path = RESULTS) -> list[str]:
    """docs/BENCHMARKS.md's section (called by speed.py's report): the latest run's table."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    r = records[-1]
    default = f"gptclf {r['default_precision']}"
    base = r["systems"][default]["messages_per_second"]
    lines = [
        "",
        "## ONNX Runtime vs gptclf predict (the main job's SmolLM2-135M classifier)",
        "",
        f"`python benchmarks/export_onnx.py run --reps {len(next(iter(r['systems'].values()))['seconds'])}`"
        f" ({r['finished'][:10]}): `gptclf export --format onnx --int8` of `{r['run']}`, then its",
        f"test split ({r['n']} SMS) in one process, batches of {r['batch_size']} sorted by length,",
        "tokenization included. Speed: the best repetition (median in brackets); accuracy and",
        "agreement from the same logits.",
        "",
        f"Machine: {r['hardware']}; torch {r['torch']}, onnxruntime {r['onnxruntime']}, "
        f"{r['threads']} threads each. Load average before/after: "
        f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f}"
        + (
            " (other jobs shared the 2 cores: compare rows of one run, not runs)."
            if r["load_average_before"][0] > 0.5
            else " (nothing else running)."
        ),
        "",
        f"| system | test acc | max abs Δp vs gptclf fp32 | labels differing | messages/s | vs {default} (default) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["systems"].items():
        lines.append(
            f"| {name} | {100 * s['accuracy']:.2f} | {s['max_abs_dprob_vs_gptclf_fp32']:.1e} | "
            f"{s['labels_differing_vs_gptclf_fp32']} | {s['messages_per_second']:.1f} "
            f"({s['median_messages_per_second']:.1f}) | {s['messages_per_second'] / base:.2f}x |"
        )
    sizes = r["size_mib"]
    lines += [
        "",
        f"Export (fp32 + check + int8): {r['export_seconds']:.0f} s; model.onnx "
        f"{sizes['model.onnx']:.0f} MiB, model_int8.onnx {sizes['model_int8.onnx']:.0f} MiB.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="export, measure, append a JSON line")
    p.add_argument("--run", default=str(ROOT / "runs" / "main"), help="classifier checkpoint")
    p.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    record = measure(Path(args.run), args.reps)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print("\n".join(section()))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
