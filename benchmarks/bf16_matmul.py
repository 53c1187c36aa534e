"""Is bf16 faster than fp32 on this machine? The measurement behind `--precision auto`.

    python benchmarks/bf16_matmul.py   # prints a JSON line, appends it to benchmarks/results/bf16_matmul.jsonl

Times the shape SmolLM2's MLP runs most (tokens x 576 -> 1536) in fp32 and in bf16, on the CPU
(and on the GPU, if there is one), and records what `gptclf.inference.native_bf16` says. bf16
pays off only where the hardware has it (AVX-512/AMX on x86, Arm BF16, CUDA); elsewhere oneDNN
emulates it and it is several times slower than fp32. One line per machine and run: the
results file keeps every machine this was run on.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import jsonl  # benchmarks/jsonl.py: this script's folder is on sys.path
import torch

from gptclf.inference import native_bf16

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bf16_matmul.jsonl"
TOKENS, D_IN, D_OUT = 1024, 576, 1536  # SmolLM2-135M's up/gate projection, a batch of tokens
REPEATS = 20


def gflops(device: str, dtype: torch.dtype) -> float:
    """Best-of-3 throughput of REPEATS matmuls (after a warm-up call)."""
    x = torch.randn(TOKENS, D_IN, device=device, dtype=dtype)
    w = torch.randn(D_OUT, D_IN, device=device, dtype=dtype)
    torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(REPEATS):
            torch.nn.functional.linear(x, w)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return REPEATS * 2 * TOKENS * D_IN * D_OUT / best / 1e9


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    record = {
        **jsonl.machine(),
        "machine": platform.machine(),
        "shape": [TOKENS, D_IN, D_OUT],
    }
    for device in devices:
        fp32, bf16 = gflops(device, torch.float32), gflops(device, torch.bfloat16)
        record[device] = {
            "fp32_gflops": round(fp32, 1),
            "bf16_gflops": round(bf16, 1),
            "bf16_speedup": round(bf16 / fp32, 2),
            "native_bf16": native_bf16(device),
        }
    jsonl.append(RESULTS, record)


if __name__ == "__main__":
    main()
