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

Memory: the states are kept in float32 when every split's fit the budget (`--cache-budget-mb`,
default 1 GiB), else in bfloat16; when not even those fit, they are computed once into a bf16 file
(prefix_store.py) and each batch's rows are read from it when needed (`SpilledCache`): in
`store_dir` when given, else in `spill_dir` (`spill_space`: the run's `OUT/.prefix-spill/`,
removed when the run ends). Only where neither can be written, or under torchrun (each rank would
need every other rank's training rows in its own file), does training run uncached.

With `store_dir`, the states are also kept on disk (safetensors, written atomically), under a key
hashing everything they depend on: the frozen weights' bytes, the model config, the mask mode,
the autocast, the blocks run in int8 (`--int8-prefix`), the batching and every token id. Seeds
and rows that share a frozen prefix (the experiment runner's) then compute it once; a stored
cache over the budget is opened lazily, as a spilled one.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch.nn.utils.rnn import pad_sequence

from gptclf import distributed
from gptclf.batching import Batch, sorted_batches
from gptclf.classifier import SequenceClassifier, first_trainable_block
from gptclf.prefix_store import StoredRows, StoreWriter, open_rows
from gptclf.quantize import int8_blocks
from gptclf.train_config import CACHE_BUDGET_MB

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = CACHE_BUDGET_MB * 1024**2
SPILL_DIR = ".prefix-spill"  # in the run's --out


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

    spilled = False  # the states are in memory

    def __init__(
        self,
        states: Sequence[torch.Tensor],
        start: int,
        read_from: Path | None = None,
        build_seconds: float | None = None,
    ):
        self.states, self.start = states, start
        self.read_from = read_from  # the store file it came from; None = computed by this run
        self.build_seconds = build_seconds  # what computing every split took (where it was)

    @property
    def dtype(self) -> torch.dtype | None:
        return self.states[0].dtype if len(self.states) else None

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

    def subset(self, indices: Sequence[int]) -> PrefixCache:
        """The cache of the examples `indices` (a cross-validation fold's)."""
        return PrefixCache([self.states[i] for i in indices], *self._same())

    def close(self) -> None:
        """Release the file a spilled cache reads from (nothing to do in memory)."""

    def _same(self) -> tuple[int, Path | None, float | None]:
        return self.start, self.read_from, self.build_seconds


class SpilledCache(PrefixCache):
    """A `PrefixCache` whose states stay in a file (prefix_store.py): each batch's rows are read
    when it needs them, so memory holds one batch, not every example's states."""

    spilled = True
    states: StoredRows

    @property
    def dtype(self) -> torch.dtype:
        return self.states.dtype

    def gather(self, batch: Batch) -> torch.Tensor:
        return self.states.read_batch(batch.indices.tolist(), batch.input_ids.shape[1])

    def subset(self, indices: Sequence[int]) -> SpilledCache:
        return SpilledCache(self.states.subset(indices), *self._same())

    def close(self) -> None:
        self.states.close()


@contextmanager
def spill_space(out: str | Path | None) -> Iterator[Path]:
    """Where a cache over the memory budget may spill: `OUT/.prefix-spill/` (what a killed run
    left there removed first), or a new temporary directory when there is no --out. Created by
    the first write only; removed when the block ends, however it ends."""
    if out is not None:
        path = Path(out) / SPILL_DIR
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="gptclf-prefix-spill-"))
    try:
        yield path
    finally:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def close_caches(caches: dict[str, PrefixCache]) -> None:
    for cache in caches.values():
        cache.close()


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
    spill_dir: Path | None = None,
) -> dict[str, PrefixCache] | None:
    """States entering block `start` for every example of every split, or None (uncached).

    Fixed-length padding keeps every position (pads included: `last` pooling may read them);
    dynamic padding keeps only the real tokens. Stored in float32 when all splits fit
    `budget_bytes`, else bfloat16, else, given a `spill_dir`, spilled to a bfloat16 file (in
    `store_dir` when given, else in `spill_dir`); else uncached. `precision` names what `autocast` does (it is part of the
    store's key); with `store_dir`, states are read from there when present, else saved there.
    """
    d = model.backbone.config.d_model
    lengths = {name: [length or len(seq) for seq in ids] for name, ids in splits.items()}
    n_tokens = sum(map(sum, lengths.values()))
    dtype = next(
        (t for t in (torch.float32, torch.bfloat16) if n_tokens * d * t.itemsize <= budget_bytes),
        None,
    )
    spill = dtype is None
    gib = n_tokens * d * 2 / 1024**3
    if spill and spill_dir is None:
        log.info("prefix cache would need %.2f GiB and has nowhere to spill: running uncached", gib)
        return None
    dtype = dtype or torch.bfloat16
    path = None
    if store_dir is not None:
        key = store_key(
            model, splits, start, pad_id=pad_id, length=length, batch_size=batch_size,
            precision=precision, dtype=dtype,
        )  # fmt: skip
        path = Path(store_dir) / f"prefix-{key}.safetensors"
        stored = load_store(path, splits, start, length=length, lazy=spill)
        if stored is not None:
            log.info("prefix cache: read the inputs of block %d from %s", start, path)
            return stored
    rows = prefix_rows(model, splits, start, pad_id, length, batch_size, autocast)
    if spill:
        log.info("prefix cache would need %.2f GiB (bf16), over the budget: spilling it", gib)
        targets = [p for p in (path, Path(spill_dir) / "prefix.safetensors") if p is not None]
        return spill_caches(rows, lengths, d, start, targets)
    began = time.perf_counter()
    states = {name: [torch.empty(0)] * len(ids) for name, ids in splits.items()}
    for name, i, x in rows:
        states[name][i] = x.to("cpu", dtype).clone()
    seconds = time.perf_counter() - began
    caches = {name: PrefixCache(s, start, build_seconds=seconds) for name, s in states.items()}
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


def prefix_rows(
    model: SequenceClassifier,
    splits: dict[str, list[list[int]]],
    start: int,
    pad_id: int,
    length: int | None,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager],
) -> Iterator[tuple[str, int, torch.Tensor]]:
    """(split, index, its (length, d) states on the model's device) for every example, computed
    batch by batch in eval mode (a consumer that stops early must `close()` it: that restores
    the mode). No context manager stays open across a `yield`."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    try:
        for name, ids in splits.items():
            for batch in sorted_batches(ids, batch_size, pad_id, length):
                batch = batch.to(device)
                with autocast():
                    x = model.prefix_states(batch.input_ids, batch.attention_mask, start)
                for row, i in enumerate(batch.indices.tolist()):
                    yield name, i, x[row, : length or len(ids[i])]
    finally:
        model.train(was_training)


def spill_caches(
    rows: Iterator[tuple[str, int, torch.Tensor]],
    lengths: dict[str, list[int]],
    d: int,
    start: int,
    targets: list[Path],
) -> dict[str, PrefixCache] | None:
    """The states written to the first of `targets` that can be written, then read back from
    it batch by batch; None (uncached, with a warning) where none can be or the disk fills."""
    for path in targets:
        try:
            writer = StoreWriter(path, lengths, d, torch.bfloat16)
            break
        except OSError as e:
            log.warning("prefix cache: cannot write %s (%s)", path, e)
    else:
        log.warning("prefix cache: nowhere to spill it; running uncached")
        return None
    began = time.perf_counter()
    try:
        for name, i, x in rows:
            writer.write(name, i, x.to("cpu", torch.bfloat16))
        writer.commit(time.perf_counter() - began)
        stored, seconds = open_rows(path, lengths, d)
    except OSError as e:
        writer.abort()
        log.warning("prefix cache: writing %s failed (%s); running uncached", path, e)
        return None
    finally:
        rows.close()
    log.info("prefix cache: spilled %d tokens (bf16) to %s", sum(map(sum, lengths.values())), path)
    return {name: SpilledCache(s, start, build_seconds=seconds) for name, s in stored.items()}


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
    """The caches in memory written to a store (prefix_store.py) row by row, atomically."""
    first = next(iter(caches.values()))
    lengths = {name: [len(s) for s in cache.states] for name, cache in caches.items()}
    try:
        writer = StoreWriter(path, lengths, first.states[0].shape[-1], first.dtype)
        for name, cache in caches.items():
            for i, s in enumerate(cache.states):
                writer.write(name, i, s)
        writer.commit(first.build_seconds or 0.0)
    except OSError as e:  # an optimisation only: training goes on with the states in memory
        log.warning("prefix cache: could not save %s (%s); training goes on", path, e)
        return
    log.info("prefix cache: saved %s", path)


def load_store(
    path: Path,
    splits: dict[str, list[list[int]]],
    start: int,
    *,
    length: int | None = None,
    lazy: bool = False,
) -> dict[str, PrefixCache] | None:
    """The caches saved at `path`, or None when absent or damaged (then they are rebuilt, with a
    warning). `lazy`: opened as `SpilledCache`s, read batch by batch (over the memory budget)."""
    if not path.is_file():
        return None
    lengths = {name: [length or len(seq) for seq in ids] for name, ids in splits.items()}
    try:
        if lazy:
            stored, seconds = open_rows(path, lengths)
            return {name: SpilledCache(s, start, path, seconds) for name, s in stored.items()}
        caches = {}
        with safe_open(str(path), "pt") as f:  # one read: the metadata and the tensors
            build_seconds = float((f.metadata() or {})["build_seconds"])
            for name in splits:
                if f.get_tensor(f"{name}.lengths").tolist() != lengths[name]:
                    raise ValueError(f"the stored lengths of {name} are not those of its texts")
                states = list(f.get_tensor(f"{name}.states").split(lengths[name]))
                caches[name] = PrefixCache(states, start, path, build_seconds)
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
        log.warning("prefix cache %s is unreadable (%s); recomputing it", path, e)
        return None
    return caches


def gather_cache(cache: PrefixCache, n: int, d: distributed.Dist) -> PrefixCache:
    """The prefix cache of all n examples from each rank's cache of its `shard(n)`: computed once,
    by one rank each, then exchanged; this rank's own states stay as they are (in memory: under
    torchrun a cache is never spilled)."""
    if not d.enabled:
        return cache
    assert not cache.spilled
    own = len(range(d.rank, n, d.world_size))
    states: list[torch.Tensor] = [torch.empty(0)] * n
    for rank, part in enumerate(distributed.gather_lists(list(cache.states[:own]), d)):
        if rank == d.rank:
            part = cache.states[:own]
        states[rank :: d.world_size] = part
    return PrefixCache(states, cache.start)
