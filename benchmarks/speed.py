"""Speed and memory, side by side with the peers, each system in its own process.

    python benchmarks/speed.py run [--reps 3] [--only NAME ...]   # runs what is missing (cached)
    python benchmarks/speed.py report                             # writes docs/BENCHMARKS.md

Every (benchmark, repetition) runs as `python benchmarks/speed.py worker NAME OUT.json` in a fresh
process, so its peak RSS is its own; results are cached as JSON under benchmarks/results/speed/ and
an interrupted run resumes. The report shows medians over repetitions and ratios to the peers.

Benchmarks:
- ch6_book: the book's chapter-6 recipe with the book's own code (PyPI `llms-from-scratch`,
  `ch04.GPTModel` + `ch06.train_classifier_simple`, eval_freq 50 / eval_iter 5, then full
  train/validation/test accuracy), GPT-2-small shape with random weights, 5 epochs, batch 8, last
  block + final norm + head trainable, fed token ids from our tokenizer (its tiktoken would download).
- ch6_ours: the same recipe with gptclf's defaults for speed (last real token, dynamic padding,
  bf16 autocast, frozen-prefix cache, best epoch by validation); ch6_ours_book_recipe: gptclf
  with the book's math (last position, padding to the longest training text, the last epoch) and
  only the speed-ups that keep it (bf16 autocast, frozen-prefix cache). Both start from exactly the
  book's random weights and class head (converted by `gptclf.weights.book`).
  benchmarks/ch6_gap.py separates the differences between the two (its table is in the report).
- ch6_book_smollm2 / ch6_ours_smollm2: the same recipe on pretrained SmolLM2-135M, where pooling
  choices are judged on real features: the book's Llama code (`llms_from_scratch.llama3`, loaded
  with the same weights by benchmarks/book_llama.py; tests/test_weights_book.py checks the key
  mapping gives equal logits) and loop, against
  gptclf's defaults with the same hyperparameters and the book side's class head.
- main_smollm2: the README's main job (SmolLM2-135M).
- infer_*: messages/s classifying the SMS test set (300 messages) with GPT-2-small-shaped random
  weights, identical in every system: ours (bf16, fp32, int8 dynamic quantization) vs transformers'
  GPT2ForSequenceClassification (fp32 and bf16 autocast) and its `pipeline`.
- infer_smollm2_*: messages/s of the main job's classifier (SmolLM2-135M, `--recipe smollm2`,
  trained once into benchmarks/.work/main_smollm2) on the same 300 messages: ours is
  `Classifier.predict`, what `gptclf predict` runs (`_ours`: the precision the CLI picks, bf16
  where it is native, else fp32; `_ours_fp32`; `_ours_int8`: `--precision int8`), against transformers' LlamaForSequenceClassification
  in fp32 from `gptclf export --format hf` of that run (the same weights: the GGUF backbone as
  gptclf dequantizes it + the trained blocks and head), called as a user writes it: batches of 32
  in file order, `tok(batch, padding=True)`, `model(**enc)`. Both keep their probabilities, so the
  report also shows how far the two agree. `*_avx2cap`: the same in a process whose kernels are
  capped to AVX2 (`AVX2_CAP`), an approximation of an AVX2-only CPU on this one.
- flops_ours: achieved GFLOP/s of steady-state training and inference vs the matmul peak measured
  in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ch6_gap  # noqa: E402
import ch6_setup  # noqa: E402
import export_onnx  # noqa: E402
import main_phases  # noqa: E402
import scale  # noqa: E402
import serve_load  # noqa: E402
from ch6_setup import EPOCHS, WORK, book_gpt2_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "speed"
REPORT = ROOT / "docs" / "BENCHMARKS.md"
# Seed of the chapter-6 runs (random weights, head, shuffling): 123 + the repetition, on both
# sides, so repetitions measure seed-to-seed accuracy noise as well as timing noise.
SEED = 123


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def book_split_dir() -> Path:
    from gptclf.data import load_splits, write_split

    out = WORK / "book_split"
    if not (out / "test.csv").exists():
        write_split(out, *load_splits("sms-spam", "book"))
    return out


def encoded_book_split(tok=None):
    from gptclf.data import load_splits
    from gptclf.weights.registry import gpt2_tokenizer

    tok = tok or gpt2_tokenizer()
    return tok, [(tok.encode_batch(s.texts), s.labels) for s in load_splits("sms-spam", "book")]


# ---------------------------------------------------------------- training recipes


def book_ch6_loop(model, tok, trainable) -> dict:
    """The book's chapter-6 training and evaluation of `model` (its out_head already the class
    head): `trainable` modules + the head train, texts padded to the longest training text."""
    import torch
    from llms_from_scratch.ch06 import calc_accuracy_loader, train_classifier_simple
    from torch.utils.data import DataLoader, TensorDataset

    tok, splits = encoded_book_split(tok)
    max_len = max(len(s) for s in splits[0][0])  # the book pads to the longest training text

    def loader(ids, labels, train):
        padded = [s[:max_len] + [tok.pad_id] * (max_len - len(s[:max_len])) for s in ids]
        ds = TensorDataset(torch.tensor(padded), torch.tensor(labels))
        return DataLoader(ds, batch_size=8, shuffle=train, drop_last=train)

    start = time.perf_counter()
    train_loader, val_loader, test_loader = (
        loader(ids, labels, i == 0) for i, (ids, labels) in enumerate(splits)
    )
    for p in model.parameters():
        p.requires_grad = False
    for module in [*trainable, model.out_head]:
        for p in module.parameters():
            p.requires_grad = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    train_classifier_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        num_epochs=EPOCHS,
        eval_freq=50,
        eval_iter=5,
    )
    accuracy = {
        name: calc_accuracy_loader(dl, model, "cpu")
        for name, dl in (("train", train_loader), ("validation", val_loader), ("test", test_loader))
    }
    return {
        "seconds": time.perf_counter() - start,
        "test_accuracy": accuracy["test"],
        "validation_accuracy": accuracy["validation"],
    }


def bench_ch6_book() -> dict:
    model = book_gpt2_classifier(SEED)  # seeds SEED; building the loaders draws no random numbers
    return book_ch6_loop(model, None, [model.trf_blocks[-1], model.final_norm])


def bench_ch6_book_smollm2() -> dict:
    import book_llama

    model, tok = book_llama.book_smollm2_classifier(SEED)
    return book_ch6_loop(model, tok, [model.trf_blocks[-1], model.final_norm])


def bench_ch6_ours() -> dict:
    return ch6_setup.ours_from_book_weights(
        SEED, pool="last_real", padding="dynamic", precision="bf16"
    )


def bench_ch6_ours_book_recipe() -> dict:
    return ch6_setup.ours_from_book_weights(
        SEED, pool="last", padding="longest", precision="bf16", select="last"
    )


def bench_ch6_ours_smollm2() -> dict:
    """The chapter-6 hyperparameters on SmolLM2 with gptclf's defaults, from the book side's head."""
    import book_llama

    model, _ = book_llama.book_smollm2_classifier(SEED)
    head = {k: v.clone() for k, v in model.out_head.state_dict().items()}
    del model
    return ch6_setup.ours_with_head(
        head,
        None,
        model="smollm2-135m",
        seed=SEED,
        pool="last_real",
        padding="dynamic",
        precision="bf16",
    )


def bench_main_smollm2() -> dict:
    from gptclf.train import RECIPES

    return ch6_setup.ours(**RECIPES["smollm2"])


# ---------------------------------------------------------------- inference


def shared_gpt2_weights() -> Path:
    """GPT-2-small-shaped random weights + a 2-class head, saved in the HF layout once."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from gptclf.tokenizer import installed_gpt2_bpe_files

    out = WORK / "gpt2-small-random-cls"
    if not (out / "model.safetensors").exists():
        torch.manual_seed(123)
        config = GPT2Config(num_labels=2, pad_token_id=50256)
        GPT2ForSequenceClassification(config).save_pretrained(out)
        encoder, merges = installed_gpt2_bpe_files()  # GPT-2's own files, as the hub names them
        shutil.copy(encoder, out / "vocab.json")
        shutil.copy(merges, out / "merges.txt")
    return out


def _texts() -> list[str]:
    from gptclf.data import load_splits

    return load_splits("sms-spam", "book")[2].texts


def _time_messages(classify, texts, reps: int = 3, keep: bool = False) -> dict:
    """Messages/s of `classify(texts)`, median of `reps` passes after a warm-up batch; `keep`:
    also the last pass's output (an (N, C) tensor of probabilities) to compare systems."""
    classify(texts[:32])  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = classify(texts)
        times.append(time.perf_counter() - start)
    result = {"messages_per_second": len(texts) / statistics.median(times), "n": len(texts)}
    if keep:
        result["probabilities"] = out.tolist()
    return result


def _our_classifier(precision: str, int8: bool = False):
    import torch
    from safetensors.torch import load_file

    from gptclf.classifier import SequenceClassifier
    from gptclf.inference import predict_logits
    from gptclf.model import GPT
    from gptclf.weights.hf_gpt2 import config_from_hf_gpt2, convert_hf_gpt2
    from gptclf.weights.registry import gpt2_tokenizer

    directory = shared_gpt2_weights()
    state = load_file(directory / "model.safetensors")
    score = state.pop("score.weight")
    config = config_from_hf_gpt2(json.loads((directory / "config.json").read_text()))
    model = SequenceClassifier(
        GPT.from_state_dict(config, convert_hf_gpt2(state, config)), 2, "last_real"
    )
    with torch.no_grad():  # HF's score head has no bias
        model.head.weight.copy_(score)
        model.head.bias.zero_()
    model.eval()
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    tok = gpt2_tokenizer()

    def classify(texts):
        ids = [seq[:1024] for seq in tok.encode_batch(texts)]
        return predict_logits(
            model, ids, batch_size=32, pad_id=tok.pad_id, length=None, precision=precision
        ).argmax(-1)

    return classify


def bench_infer_ours_bf16() -> dict:
    return _time_messages(_our_classifier("bf16"), _texts())


def bench_infer_ours_fp32() -> dict:
    return _time_messages(_our_classifier("fp32"), _texts())


def bench_infer_ours_int8() -> dict:
    return _time_messages(_our_classifier("fp32", int8=True), _texts())


def _hf_model_and_tokenizer():
    from transformers import GPT2ForSequenceClassification, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(shared_gpt2_weights())
    tok.pad_token = tok.eos_token
    model = GPT2ForSequenceClassification.from_pretrained(shared_gpt2_weights()).eval()
    return model, tok


def _hf_classify(bf16: bool):
    import torch

    model, tok = _hf_model_and_tokenizer()

    @torch.inference_mode()
    def classify(texts):
        out = []
        for i in range(0, len(texts), 32):
            enc = tok(
                texts[i : i + 32],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=1024,
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out.append(model(**enc).logits.argmax(-1))
        return torch.cat(out)

    return classify


def bench_infer_hf_fp32() -> dict:
    return _time_messages(_hf_classify(False), _texts())


def bench_infer_hf_bf16() -> dict:
    return _time_messages(_hf_classify(True), _texts())


def bench_infer_hf_pipeline() -> dict:
    from transformers import pipeline

    model, tok = _hf_model_and_tokenizer()
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
    return _time_messages(lambda texts: pipe(texts, batch_size=32, truncation=True), _texts())


# ---------------------------------------------------------------- inference: the main job

MAIN_RUN = WORK / "main_smollm2"
MAIN_HF = WORK / "main_smollm2_hf"
# One timed pass per process: a pass of the 300 messages takes 30 s or more on SmolLM2.
SMOLLM2_REPS = 1
# An AVX2-only CPU approximated on an AVX-512 one: ATen, oneDNN and MKL capped to AVX2 kernels.
AVX2_CAP = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}
CAPPED = "_avx2cap"  # a benchmark name + this: run with AVX2_CAP


def gptclf_cli(*args: str) -> None:
    """`gptclf ARGS` in a child process (its memory is not the benchmark's peak RSS)."""
    subprocess.run([sys.executable, "-m", "gptclf", *args], check=True)


def main_smollm2_run() -> Path:
    """The main job's classifier, trained once (`gptclf train --recipe smollm2`)."""
    if not (MAIN_RUN / "metrics.json").exists():
        gptclf_cli("train", "--recipe", "smollm2", "--out", str(MAIN_RUN), "--overwrite")
    return MAIN_RUN


def main_smollm2_hf() -> Path:
    """`gptclf export --format hf` of the main job: a LlamaForSequenceClassification directory."""
    if not (MAIN_HF / "model.safetensors").exists():
        gptclf_cli("export", str(main_smollm2_run()), "--format", "hf", "--out", str(MAIN_HF))
    return MAIN_HF


def _smollm2_ours(precision: str | None) -> dict:
    import torch

    from gptclf.api import Classifier

    clf = Classifier.load(main_smollm2_run(), precision=precision)

    def classify(texts):  # what `gptclf predict` runs, its Prediction objects included
        return torch.tensor(
            [[p.probabilities[label] for label in clf.labels] for p in clf.predict(texts)]
        )

    result = _time_messages(classify, _texts(), SMOLLM2_REPS, keep=True)
    return {**result, "precision": clf.precision}


def bench_infer_smollm2_ours() -> dict:
    return _smollm2_ours(None)  # the precision `gptclf predict` picks on this machine


def bench_infer_smollm2_ours_fp32() -> dict:
    return _smollm2_ours("fp32")


def bench_infer_smollm2_ours_int8() -> dict:
    return _smollm2_ours("int8")  # `--precision int8`: every linear in int8, per-token scales


def bench_infer_smollm2_hf_fp32() -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(main_smollm2_hf())  # pads on the right: the export's
    model = AutoModelForSequenceClassification.from_pretrained(
        main_smollm2_hf(), dtype=torch.float32
    ).eval()

    @torch.inference_mode()
    def classify(texts):
        out = []
        for i in range(0, len(texts), 32):
            enc = tok(texts[i : i + 32], return_tensors="pt", padding=True, truncation=True)
            out.append(model(**enc).logits.softmax(-1))
        return torch.cat(out)

    return {**_time_messages(classify, _texts(), SMOLLM2_REPS, keep=True), "precision": "fp32"}


# ---------------------------------------------------------------- achieved FLOP/s


def matmul_peak() -> dict:
    import torch

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(2048, 2048, dtype=dtype)
        b = torch.randn(2048, 2048, dtype=dtype)
        a @ b
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[str(dtype).removeprefix("torch.")] = 2 * 2048**3 / min(times) / 1e9
    return out


def bench_flops_ours() -> dict:
    """Steady state on GPT-2-small shape, batch 8 x 128 tokens, bf16 autocast.

    The FLOPs are those the step performs, counted by FlopCounterMode while it runs: with
    `last_real` pooling the last block computes only keys/values at the other positions, so a
    training step from the prefix cache is mostly the K/V projection. Not counted: SDPA on the
    CPU (torch has no FLOP formula for its CPU kernel; under 3% of the inference step), so the
    shares are slight underestimates. The optimizer is `fit`'s (`train.make_optimizer`).
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from gptclf.classifier import SequenceClassifier, set_trainable
    from gptclf.config import ModelConfig
    from gptclf.model import GPT
    from gptclf.train import TrainConfig, make_optimizer

    torch.manual_seed(0)
    model = SequenceClassifier(GPT(ModelConfig.from_name("gpt2-small")), 2, "last_real")
    set_trainable(model, "last_block")
    optimizer = make_optimizer(model, TrainConfig())
    ids = torch.randint(0, 50257, (8, 128))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (8,))
    x = model.prefix_states(ids, mask, 11).detach()  # what the prefix cache holds

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model.forward_from(x, mask, 11).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    @torch.inference_mode()
    def infer_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(ids.repeat(4, 1), mask.repeat(4, 1))

    result = {"peak_gflops": matmul_peak()}
    for name, step in (("train_step", train_step), ("inference_step", infer_step)):
        step()
        with FlopCounterMode(display=False) as counter:
            step()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        result[name] = {
            "gflop": counter.get_total_flops() / 1e9,
            "gflops": counter.get_total_flops() / statistics.median(times) / 1e9,
            "ms": 1000 * statistics.median(times),
        }
    result["train_step"]["profile"] = profile_ops(train_step)
    return result


def profile_ops(step, steps: int = 5, top: int = 10) -> list[dict]:
    """Where a step's time goes: torch.profiler's ops by self CPU time, per step."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        return [
            {
                "op": e.key,
                "ms_per_step": e.self_cpu_time_total / 1000 / steps,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
            for e in ops[:top]
        ]
    except Exception as exc:  # the profile is commentary: never lose the measurement for it
        return [{"op": f"profiling failed: {exc!r}", "ms_per_step": 0.0, "share": 0.0}]


def bench_load_smollm2() -> dict:
    """GGUF file -> ready model + tokenizer (the import of torch and gptclf not included)."""
    from gptclf.lm import load_lm

    start = time.perf_counter()
    load_lm("smollm2-135m")
    return {"seconds": time.perf_counter() - start}


# Cheap ones first: an interrupted `run` has then measured as much as possible.
ORDER = [
    "flops_ours",
    "load_smollm2",
    "infer_ours_bf16",
    "infer_ours_fp32",
    "infer_ours_int8",
    "infer_hf_fp32",
    "infer_hf_bf16",
    "infer_hf_pipeline",
    "infer_smollm2_ours",
    "infer_smollm2_ours_fp32",
    "infer_smollm2_ours_int8",
    "infer_smollm2_hf_fp32",
    "infer_smollm2_ours" + CAPPED,
    "infer_smollm2_ours_fp32" + CAPPED,
    "infer_smollm2_ours_int8" + CAPPED,
    "infer_smollm2_hf_fp32" + CAPPED,
    "main_smollm2",
    "ch6_ours",
    "ch6_ours_book_recipe",
    "ch6_ours_smollm2",
    "ch6_book",
    "ch6_book_smollm2",
]
BENCHMARKS = {name: globals()[f"bench_{name.removesuffix(CAPPED)}"] for name in ORDER}


# ---------------------------------------------------------------- driver


def worker(name: str, out: Path) -> None:
    import re

    import torch

    global SEED
    SEED = (
        123 + int(re.search(r"-rep(\d+)\.json$", out.name).group(1)) if "-rep" in out.name else 123
    )
    if name.endswith(CAPPED) and torch.backends.cpu.get_cpu_capability() != "AVX2":
        raise SystemExit(f"{name}: run it through `speed.py run` (it sets {', '.join(AVX2_CAP)})")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = BENCHMARKS[name]()
    result.update(
        name=name,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        load_average=[load_before, os.getloadavg()[0]],
        seed=SEED,
        wall_seconds=time.perf_counter() - start,
        peak_rss_mib=peak_rss_mib(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


def run(reps: int, only: list[str] | None) -> None:
    for rep in range(reps):
        for name in only or BENCHMARKS:
            out = RESULTS / f"{name}-rep{rep}.json"
            if out.exists():
                continue
            print(f"running {name} (repetition {rep + 1}/{reps})", flush=True)
            env = {**os.environ, **AVX2_CAP} if name.endswith(CAPPED) else None
            subprocess.run(
                [sys.executable, __file__, "worker", name, str(out)], check=True, env=env
            )


def load() -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["name"], []).append(record)
    return results


def med(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def book_peer(name: str, results: dict[str, list[dict]]) -> list[dict] | None:
    """The book-code run a chapter-6 row of ours is compared with (same model and weights)."""
    if name.startswith("ch6_ours"):
        return results.get("ch6_book_smollm2" if name.endswith("_smollm2") else "ch6_book")
    return None


def targets(results: dict[str, list[dict]]) -> list[str]:
    """The speed issue's targets, each with the measured value and met / MISSED."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = ["", "## Targets", "", "| target | measured | status |", "|---|---|---|"]
    for name, what in (
        ("ch6_ours", "gptclf's defaults"),
        ("ch6_ours_book_recipe", "the book's pooling, padding and epoch choice"),
        ("ch6_ours_smollm2", "pretrained SmolLM2-135M, gptclf's defaults vs the book's code"),
    ):
        ours, book = results.get(name), book_peer(name, results)
        if not (book and ours):
            continue
        ratio = med(book, "seconds") / med(ours, "seconds")
        acc = {
            k: [100 * r["test_accuracy"] for r in v] for k, v in (("book", book), ("ours", ours))
        }
        gap = statistics.mean(acc["ours"]) - statistics.mean(acc["book"])
        # Noise: the seed-to-seed spread of either side (repetition k runs seed 123 + k).
        spread = max((statistics.stdev(a) for a in acc.values() if len(a) > 1), default=0.0)
        lines.append(
            f"| chapter-6 recipe >= 15x faster than the book's code ({name}: {what}) | "
            f"{ratio:.1f}x | {verdict(ratio >= 15)} |"
        )
        lines.append(
            f"| ... without losing accuracy (mean test accuracy over seeds; ours at most 1.5 "
            f"points or the seed-to-seed std below the book's) | {gap:+.2f} points (book "
            f"{statistics.mean(acc['book']):.2f} over {len(acc['book'])} seeds, ours "
            f"{statistics.mean(acc['ours']):.2f} over {len(acc['ours'])}; std up to {spread:.2f})"
            f" | {verdict(gap >= -max(1.5, spread))} |"
        )
    main = results.get("main_smollm2")
    if main:
        lines.append(
            f"| main job <= 3 min | {med(main, 'seconds'):.0f} s | "
            f"{verdict(med(main, 'seconds') <= 180)} |"
        )
    hf = results.get("infer_hf_fp32")
    for name in ("infer_ours_bf16", "infer_ours_int8"):
        if hf and results.get(name):
            r = med(results[name], "messages_per_second") / med(hf, "messages_per_second")
            lines.append(
                f"| inference >= 3x transformers ({name}) | {r:.2f}x | {verdict(r >= 3)} |"
            )
    for capped in ("", CAPPED):
        hf = results.get(f"{SMOLLM2}hf_fp32{capped}")
        for ours in ("ours", "ours_fp32", "ours_int8"):
            name = f"{SMOLLM2}{ours}{capped}"
            if hf and results.get(name):
                r = med(results[name], "messages_per_second") / med(hf, "messages_per_second")
                kernels = "capped to AVX2" if capped else "native"
                lines.append(
                    f"| predict vs transformers, SmolLM2 backbone >= 3x ({name}, "
                    f"{kernels} kernels) | {r:.2f}x | {verdict(r >= 3)} |"
                )
    flops = results.get("flops_ours")
    if flops:
        peak = statistics.median(r["peak_gflops"]["bfloat16"] for r in flops)
        # The 60% target sits in its inference bullet; training is reported beside it.
        for step, target in (("inference_step", True), ("train_step", False)):
            share = statistics.median(r[step]["gflops"] for r in flops) / peak
            lines.append(
                f"| {step} >= 60% of the bf16 matmul peak"
                f"{'' if target else ' (not a target: reported)'} | {100 * share:.0f}% | "
                f"{verdict(share >= 0.6) if target else '-'} |"
            )
    reps = min((len(v) for v in results.values()), default=0)
    lines += [
        "",
        f"Repetitions so far: at least {reps} per benchmark (3 asked for); rerun "
        "`python benchmarks/speed.py run --reps 3` to complete them.",
    ]
    return lines


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


SMOLLM2 = "infer_smollm2_"


def agreement(a: list[dict], b: list[dict]) -> str:
    """Labels differing and the largest probability difference between two systems' outputs
    (their first repetitions: each repetition's output is the same up to timing)."""
    import torch

    pa, pb = (torch.tensor(r[0]["probabilities"]) for r in (a, b))
    differ = int((pa.argmax(-1) != pb.argmax(-1)).sum())
    return f"{differ} of {len(pa)} labels differ, max abs Δp {(pa - pb).abs().max():.1e}"


def smollm2_inference_section(results: dict[str, list[dict]]) -> list[str]:
    """The main job's classifier: gptclf `predict` against transformers in fp32."""
    names = [n for n in ORDER if n.startswith(SMOLLM2)]
    if not any(results.get(n) for n in names):
        return []
    lines = [
        "",
        "## Inference: the main job's classifier (SmolLM2-135M), SMS test set (300 messages)",
        "",
        "gptclf: `Classifier.predict`, what `gptclf predict RUN` runs (tokenization, batches of 32",
        "sorted by length, softmax and Prediction objects included), on the run of",
        "`gptclf train --recipe smollm2` (benchmarks/.work/main_smollm2); `ours` is the precision the",
        "CLI picks (bf16 where it is native, else fp32); `ours_int8` is `--precision int8` (every",
        "linear in int8 with per-token activation scales). transformers: `gptclf export RUN --format",
        "hf` of that run (the GGUF backbone as gptclf dequantizes it, the trained blocks and head)",
        "loaded by `AutoModelForSequenceClassification` in fp32 and called as a user writes it:",
        "batches of 32 in file order, `tok(batch, padding=True, truncation=True)`, `model(**enc)`,",
        "softmax. One timed pass after a 32-message warm-up per process. Kernels: native",
        "(AVX-512, native bf16) or capped to AVX2 in that process (`ATEN_CPU_CAPABILITY=avx2",
        "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`): an AVX512 machine capped to AVX2",
        "kernels, an approximation of an AVX2-only CPU, not one's figures. Load average: the",
        "1-minute one before and after each process, the range over repetitions (the machine's",
        "2 cores were shared with other jobs where it is above ~1).",
        "",
        "| system | kernels | precision | reps | messages/s | vs transformers fp32 (same kernels) "
        "| peak RSS MiB | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        recs = results.get(name)
        capped = name.endswith(CAPPED)
        kernels = "capped to AVX2" if capped else "native"
        if not recs:
            lines.append(f"| {name} | {kernels} | not run | | | | | |")
            continue
        hf = results.get(f"{SMOLLM2}hf_fp32{CAPPED if capped else ''}")
        ratio = med(recs, "messages_per_second") / med(hf, "messages_per_second") if hf else None
        loads = [x for r in recs for x in r.get("load_average", [])]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    kernels,
                    "/".join(sorted({r["precision"] for r in recs})),
                    str(len(recs)),
                    fmt(med(recs, "messages_per_second")),
                    f"{ratio:.2f}x" if ratio else "-",
                    fmt(med(recs, "peak_rss_mib"), 0),
                    f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
                ]
            )
            + " |"
        )
    pairs = [
        (f"{SMOLLM2}{ours}{c}", f"{SMOLLM2}hf_fp32{c}")
        for ours in ("ours_fp32", "ours", "ours_int8")
        for c in ("", CAPPED)
    ]
    compared = [(a, b) for a, b in pairs if results.get(a) and results.get(b)]
    if compared:
        lines += ["", "Do both compute the same thing? Predictions on the 300 messages:", ""]
        lines += [f"- {a} vs {b}: {agreement(results[a], results[b])}" for a, b in compared]
    return lines


def render(results: dict[str, list[dict]]) -> str:
    import torch

    def row(name: str, *cells: str) -> str:
        return "| " + " | ".join([name, *cells]) + " |"

    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/speed.py report` from the cached results of",
        "`python benchmarks/speed.py run --reps 3` (each benchmark and repetition in its own process;",
        "medians over repetitions; delete benchmarks/results/speed/ to measure again).",
        "",
        f"Machine: {platform.machine()}, {cpu_model()}, "
        f"{torch.get_num_threads()} threads; Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        "",
        "## Training (chapter-6 recipe: GPT-2-small shape, random weights, 5 epochs, last block",
        "trainable; *_smollm2: the same recipe on pretrained SmolLM2-135M, the book's Llama code",
        "vs ours; main job: SmolLM2-135M; load: GGUF file to a ready model)",
        "",
        "| system | reps | wall s | speed-up vs book | test acc | val acc | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    training = [
        "ch6_book", "ch6_ours", "ch6_ours_book_recipe", "ch6_book_smollm2", "ch6_ours_smollm2",
        "main_smollm2", "load_smollm2",
    ]  # fmt: skip
    for name in training:
        recs = results.get(name)
        if not recs:
            lines.append(row(name, "not run", "", "", "", "", ""))
            continue
        if name == "load_smollm2":
            lines.append(
                row(
                    name,
                    str(len(recs)),
                    fmt(med(recs, "seconds")),
                    "-",
                    "-",
                    "-",
                    fmt(med(recs, "peak_rss_mib"), 0),
                )
            )
            continue
        peer = book_peer(name, results)
        ratio = med(peer, "seconds") / med(recs, "seconds") if peer else None
        lines.append(
            row(
                name,
                str(len(recs)),
                fmt(med(recs, "seconds")),
                f"{ratio:.1f}x" if ratio else "-",
                f"{100 * med(recs, 'test_accuracy'):.2f}",
                f"{100 * med(recs, 'validation_accuracy'):.2f}",
                fmt(med(recs, "peak_rss_mib"), 0),
            )
        )
    lines += [
        "",
        "## Inference: SMS test set (300 messages), identical GPT-2-small-shaped weights",
        "",
        "| system | reps | messages/s | vs transformers fp32 | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    hf = results.get("infer_hf_fp32")
    for name in (n for n in ORDER if n.startswith("infer_") and not n.startswith(SMOLLM2)):
        recs = results.get(name)
        if not recs:
            lines.append(row(name, "not run", "", "", ""))
            continue
        ratio = med(recs, "messages_per_second") / med(hf, "messages_per_second") if hf else None
        lines.append(
            row(
                name,
                str(len(recs)),
                fmt(med(recs, "messages_per_second")),
                f"{ratio:.2f}x" if ratio else "-",
                fmt(med(recs, "peak_rss_mib"), 0),
            )
        )
    lines += smollm2_inference_section(results)
    flops = results.get("flops_ours")
    if flops:
        peak_bf16 = statistics.median(r["peak_gflops"]["bfloat16"] for r in flops)
        peak_fp32 = statistics.median(r["peak_gflops"]["float32"] for r in flops)
        lines += [
            "",
            "## Achieved FLOP/s (steady state, bf16 autocast, GPT-2-small shape)",
            "",
            "FLOPs counted as performed (the last block computes only the pooled position; SDPA's",
            "CPU kernel is not counted), per step: training from the prefix cache, batch 8 x 128",
            "tokens, last block trainable, with `fit`'s optimizer; inference 32 x 128 tokens.",
            "",
            f"Matmul peak measured in the same process: bf16 {fmt(peak_bf16)} GFLOP/s, "
            f"fp32 {fmt(peak_fp32)} GFLOP/s (2048^3 GEMM).",
            "",
            "| step | GFLOP per step (done) | ms per step | GFLOP/s | share of bf16 peak |",
            "|---|---|---|---|---|",
        ]
        for step in ("train_step", "inference_step"):
            gflops = statistics.median(r[step]["gflops"] for r in flops)
            lines.append(
                row(
                    step,
                    fmt(flops[0][step]["gflop"]),
                    fmt(
                        statistics.median(r[step]["gflop"] / r[step]["gflops"] for r in flops) * 1e3
                    ),
                    fmt(gflops),
                    f"{100 * gflops / peak_bf16:.0f}%",
                )
            )
        profiled = [r["train_step"]["profile"] for r in flops if "profile" in r["train_step"]]
        if profiled:
            lines += [
                "",
                "Where the train step's time goes (torch.profiler, self CPU time; the first",
                "profiled repetition):",
                "",
                "| op | ms per step | share | calls per step |",
                "|---|---|---|---|",
            ]
            for op in profiled[0]:
                lines.append(
                    row(
                        f"`{op['op']}`",
                        f"{op['ms_per_step']:.2f}",
                        f"{100 * op['share']:.0f}%",
                        fmt(op.get("calls_per_step", 0.0)),
                    )
                )
    lines += targets(results)
    lines += ch6_gap.section(results)
    lines += export_onnx.section()
    lines += serve_load.section()
    lines += scale.section()
    lines += main_phases.section()
    return "\n".join(lines) + "\n"


def report() -> None:
    REPORT.write_text(render(load()))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    sub.add_parser("report")
    p = sub.add_parser("worker")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.reps, args.only)
        report()
    elif args.cmd == "report":
        report()
    else:
        worker(args.name, args.out)
