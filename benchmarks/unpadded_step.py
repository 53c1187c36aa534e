"""What skipping pads (`model.Unpadded`) saves in a training step, padded and unpadded side by side.

    python benchmarks/unpadded_step.py   # prints a JSON line, appends it to benchmarks/results/unpadded_step.jsonl

One process, random weights (the shapes are what matters): a batch of 8 texts, lengths drawn
between 20 and 120 tokens (one at 120), forward and backward in fp32 through
- `smollm2-2`: two SmolLM2-135M-shaped blocks (the recipe's trainable top, from the prefix cache);
- `minilm-6`: all six blocks of MiniLM-L6 (the `minilm-all` rows train every layer).
Each is timed through `run_blocks` (unpadded) and with its blocks called on the padded (B, T)
layout, every position computed, as `run_blocks` ran them before `Unpadded` (and as the tests'
oracle does), alternating, the best of two medians of 5 runs of 10 steps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jsonl  # benchmarks/jsonl.py: this script's folder is on sys.path
import torch

from gptclf.config import PRESETS, ModelConfig
from gptclf.encoder import Encoder, padding_mask_to_bias
from gptclf.model import GPT, attention_mask_to_bias, positions_from_mask

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "unpadded_step.jsonl"
BATCH, SHORTEST, LONGEST = 8, 20, 120
STEPS, RUNS = 10, 5


def models() -> dict[str, torch.nn.Module]:
    return {
        "smollm2-2": GPT(ModelConfig(**{**PRESETS["smollm2-135m"], "n_layer": 2})),
        "minilm-6": Encoder(ModelConfig.from_name("minilm-l6")),
    }


def padded_blocks(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every block on the padded (B, T) layout: every position computed, pad keys masked."""
    if isinstance(model, Encoder):
        bias = padding_mask_to_bias(mask)
        for block in model.h:
            x = block(x, bias)
        return x
    bias = attention_mask_to_bias(mask, model.config.causal)
    positions = positions_from_mask(mask)
    for block in model.h:
        x = block(x, bias, model.rope, positions)
    return x


def seconds_per_step(
    blocks: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
) -> float:
    def steps() -> float:
        start = time.perf_counter()
        for _ in range(STEPS):
            blocks(model, x, mask).sum().backward()
        return (time.perf_counter() - start) / STEPS

    steps()  # warm-up
    return statistics.median(steps() for _ in range(RUNS))


def main() -> None:
    torch.manual_seed(0)
    lengths = torch.randint(SHORTEST, LONGEST, (BATCH,))
    lengths[0] = LONGEST
    mask = (torch.arange(LONGEST)[None] < lengths[:, None]).long()
    record = {
        **jsonl.machine(),
        "batch": BATCH,
        "pads": round(1 - mask.float().mean().item(), 3),
    }
    ways = {"padded": padded_blocks, "unpadded": lambda model, x, mask: model.run_blocks(x, mask)}
    for name, model in models().items():
        x = torch.randn(BATCH, LONGEST, model.config.d_model, requires_grad=True)
        times = {}
        for mode in ("padded", "unpadded", "padded", "unpadded"):  # alternating: drift evens out
            times.setdefault(mode, []).append(seconds_per_step(ways[mode], model, x, mask))
        padded, unpadded = min(times["padded"]), min(times["unpadded"])
        record[name] = {
            "padded_s": round(padded, 4),
            "unpadded_s": round(unpadded, 4),
            "speedup": round(padded / unpadded, 2),
        }
    jsonl.append(RESULTS, record)


if __name__ == "__main__":
    main()
