"""Frozen-prefix caching: run the frozen lower blocks once per example, train only the suffix.

When the embeddings and blocks[:k] are frozen and deterministic (no dropout), the hidden states
entering block k are a fixed function of the input. Computing them once and reusing them every
epoch (and for every evaluation) removes most of the work of `--trainable last_block` runs.

Where that would be wrong, `cache_start` returns None and training runs uncached:
- anything trainable below block k (embeddings, or adapters inside frozen blocks — their
  parameters have requires_grad, so they count as trainable);
- dropout > 0 (frozen blocks would still be random);
- `last` pooling with dynamic padding: pads are then ordinary tokens and their number depends on
  the batch, so an example's states depend on its batch-mates.

With `store_dir`, the states are also kept on disk (safetensors, written atomically), under a key
hashing everything they depend on: the frozen weights' bytes, the model config, the mask mode,
the autocast, the blocks run in int8 (`--int8-prefix`), the batching and every token id. Seeds
and rows that share a frozen prefix (the experiment runner's) then compute it once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.nn.utils.rnn import pad_sequence

from gptclf import distributed
from gptclf.batching import Batch, sorted_batches
from gptclf.classifier import SequenceClassifier, first_trainable_block
from gptclf.fileio import atomic_write
from gptclf.quantize import int8_blocks

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 2 * 1024**3


def cache_start(model: SequenceClassifier, fixed_length: bool) -> int | None:
    """First block with trainable parameters, if caching the blocks below it is exact."""
    backbone = model.backbone
    if backbone.config.dropout > 0:
        return None
    if not fixed_length and model.pool_mode == "last":
        return None
    return first_trainable_block(model) or None


class PrefixCache:
    """Hidden states entering block `start` for each example, stored at its (padded) length."""

    def __init__(
        self,
        states: list[torch.Tensor],
        start: int,
        read_from: Path | None = None,
        build_seconds: float | None = None,
    ):
        self.states, self.start = states, start
        self.read_from = read_from  # the store file it came from; None = computed by this run
        self.build_seconds = build_seconds  # what computing every split took (where it was)

    def gather(self, batch: Batch) -> torch.Tensor:
        """(B, T, d) states for a batch, zero-filled beyond each stored length (masked pads)."""
        x = pad_sequence([self.states[i] for i in batch.indices.tolist()], batch_first=True)
        T = batch.input_ids.shape[1]
        return (
            x[:, :T] if x.shape[1] >= T else torch.nn.functional.pad(x, (0, 0, 0, T - x.shape[1]))
        )

    def logits(self, model: SequenceClassifier, batch: Batch) -> torch.Tensor:
        # `model` may be wrapped (DDP) and have no `.head`; its parameters tell the dtype.
        x = self.gather(batch).to(batch.input_ids.device, next(model.parameters()).dtype)
        return model(batch.input_ids, batch.attention_mask, prefix=x, start=self.start)


@torch.inference_mode()
def build_caches(
    model: SequenceClassifier,
    splits: dict[str, list[list[int]]],
    start: int,
    *,
    pad_id: int,
    length: int | None,
    batch_size: int = 32,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    precision: str = "fp32",
    store_dir: Path | None = None,
) -> dict[str, PrefixCache] | None:
    """States entering block `start` for every example of every split, or None over budget.

    Fixed-length padding keeps every position (pads included: `last` pooling may read them);
    dynamic padding keeps only the real tokens. Stored in float32 when all splits fit the budget,
    else bfloat16, else not at all. `precision` names what `autocast` does (it is part of the
    store's key); with `store_dir`, states are read from there when present, else saved there.
    """
    d = model.backbone.config.d_model
    n_tokens = sum(length or len(seq) for ids in splits.values() for seq in ids)
    dtype = next(
        (t for t in (torch.float32, torch.bfloat16) if n_tokens * d * t.itemsize <= budget_bytes),
        None,
    )
    if dtype is None:
        log.info("prefix cache would need %.1f GiB; running uncached", n_tokens * d * 2 / 1024**3)
        return None
    path = None
    if store_dir is not None:
        key = store_key(
            model, splits, start, pad_id=pad_id, length=length, batch_size=batch_size,
            precision=precision, dtype=dtype,
        )  # fmt: skip
        path = Path(store_dir) / f"prefix-{key}.safetensors"
        stored = load_store(path, splits, start)
        if stored is not None:
            log.info("prefix cache: read the inputs of block %d from %s", start, path)
            return stored
    began = time.perf_counter()
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    caches = {}
    for name, ids in splits.items():
        states: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        for batch in sorted_batches(ids, batch_size, pad_id, length):
            batch = batch.to(device)
            with autocast():
                x = model.prefix_states(batch.input_ids, batch.attention_mask, start)
            for row, i in enumerate(batch.indices.tolist()):
                states[i] = x[row, : length or len(ids[i])].to("cpu", dtype).clone()
        caches[name] = PrefixCache(states, start)
    model.train(was_training)
    seconds = time.perf_counter() - began
    for cache in caches.values():
        cache.build_seconds = seconds
    if path is not None:
        save_store(path, caches)
    log.info(
        "cached the inputs of block %d: %d tokens (%s, %.0f MiB)",
        start,
        n_tokens,
        str(dtype).removeprefix("torch."),
        n_tokens * d * dtype.itemsize / 1024**2,
    )
    return caches


def store_key(
    model: SequenceClassifier,
    splits: dict[str, list[list[int]]],
    start: int,
    **settings: object,
) -> str:
    """A hash of everything the states entering block `start` depend on."""
    h = hashlib.sha256()
    h.update(repr((type(model.backbone).__name__, model.backbone.config)).encode())
    # `last` pooling runs the backbone without a mask (classifier.backbone_mask).
    h.update(repr((start, model.pool_mode == "last")).encode())
    h.update(repr(sorted(settings.items())).encode())
    if blocks := int8_blocks(model):  # --int8-prefix: what they compute is not the fp32 states
        h.update(repr(("int8_prefix", blocks)).encode())
    h.update(torch.__version__.encode())
    frozen = dict(model.backbone.named_parameters()) | dict(model.backbone.named_buffers())
    for name, tensor in sorted(frozen.items()):
        if name.startswith("ln_f.") or (name.startswith("h.") and int(name.split(".")[1]) >= start):
            continue  # blocks from `start` on (and the final norm) do not feed the states
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for name in sorted(splits):
        h.update(name.encode())
        for seq in splits[name]:
            h.update(repr(seq).encode())
    return h.hexdigest()[:32]


def save_store(path: Path, caches: dict[str, PrefixCache]) -> None:
    """One flat (tokens, d) tensor and the lengths per split, written atomically."""
    tensors = {}
    for name, cache in caches.items():
        tensors[f"{name}.states"] = torch.cat(cache.states).contiguous()
        tensors[f"{name}.lengths"] = torch.tensor([len(s) for s in cache.states])
    seconds = next(iter(caches.values())).build_seconds
    metadata = {"format": "1", "build_seconds": f"{seconds or 0.0:.3f}"}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except OSError as e:  # an optimisation only: training goes on with the states in memory
        log.warning("prefix cache: could not save %s (%s); training goes on", path, e)
        return
    log.info("prefix cache: saved %s", path)


def load_store(
    path: Path, splits: dict[str, list[list[int]]], start: int
) -> dict[str, PrefixCache] | None:
    """The caches saved at `path`, or None when absent or unreadable (then they are rebuilt)."""
    if not path.is_file():
        return None
    try:
        caches = {}
        with safe_open(str(path), "pt") as f:  # one read: the metadata and the tensors
            build_seconds = float((f.metadata() or {})["build_seconds"])
            for name, ids in splits.items():
                lengths = f.get_tensor(f"{name}.lengths").tolist()
                if len(lengths) != len(ids):
                    raise ValueError(f"{len(lengths)} stored examples for {len(ids)} in {name}")
                states = list(f.get_tensor(f"{name}.states").split(lengths))
                caches[name] = PrefixCache(
                    states, start, read_from=path, build_seconds=build_seconds
                )
    except (SafetensorError, KeyError, ValueError, RuntimeError, OSError) as e:
        log.warning("prefix cache %s is unreadable (%s); recomputing it", path, e)
        return None
    return caches


def gather_cache(cache: PrefixCache, n: int, d: distributed.Dist) -> PrefixCache:
    """The prefix cache of all n examples from each rank's cache of its `shard(n)`: computed once,
    by one rank each, then exchanged; this rank's own states stay as they are."""
    if not d.enabled:
        return cache
    own = len(range(d.rank, n, d.world_size))
    states: list[torch.Tensor] = [torch.empty(0)] * n
    for rank, part in enumerate(distributed.gather_lists(cache.states[:own], d)):
        if rank == d.rank:
            part = cache.states[:own]
        states[rank :: d.world_size] = part
    return type(cache)(states, cache.start)
