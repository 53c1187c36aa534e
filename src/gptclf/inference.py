"""Forward passes shared by training, evaluation and prediction: precision, device, prefix cache."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal

import torch

from gptclf.batching import Batch, sorted_batches
from gptclf.classifier import SequenceClassifier

if TYPE_CHECKING:
    from gptclf.prefix_cache import PrefixCache

Precision = Literal["fp32", "bf16"]


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 matmuls run natively on `device`: a CUDA GPU that supports them, or a CPU
    that oneDNN runs bf16 on (AVX-512 or AMX on x86, the BF16 extension on Arm). Elsewhere bf16
    is emulated and slow: on an AVX2-only AMD EPYC a (1024x576)·(576x1536) matmul ran at
    15 GFLOP/s in bf16 against 108 in fp32, 7x slower (`python benchmarks/bf16_matmul.py`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return torch.backends.cpu.get_cpu_capability() == "AVX512"


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """`auto` → bf16 where `native_bf16(device)`, else fp32; fp32 and bf16 stay as they are."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}")
    return precision  # type: ignore[return-value]


def autocast(device: torch.device | str, precision: Precision) -> AbstractContextManager:
    """bf16 autocast (fp32 master weights stay fp32) or a no-op for fp32."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def batch_logits(
    model: SequenceClassifier, batch: Batch, cache: PrefixCache | None = None
) -> torch.Tensor:
    """Class logits (B, C) for a batch already on the model's device."""
    if cache is not None:
        return cache.logits(model, batch)
    return model(batch.input_ids, batch.attention_mask)


@torch.inference_mode()
def predict_logits(
    model: SequenceClassifier,
    ids: list[list[int]],
    *,
    batch_size: int,
    pad_id: int,
    length: int | None,
    cache: PrefixCache | None = None,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Class logits (N, C) for already-encoded texts, in input order (fp32, on the CPU)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # not head.weight: int8 heads have none
    out = torch.empty(len(ids), model.head.out_features)
    for batch in sorted_batches(ids, batch_size, pad_id, length):
        with autocast(device, precision):
            logits = batch_logits(model, batch.to(device), cache)
        out[batch.indices] = logits.float().cpu()
    model.train(was_training)
    return out
