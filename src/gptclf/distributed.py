"""Multi-process training on PyTorch's own engine: torchrun + DistributedDataParallel or FSDP.

    torchrun --nproc-per-node N -m gptclf train <flags>      # DDP (gloo on CPU, nccl on CUDA)
    torchrun --nproc-per-node N -m gptclf train --fsdp ...   # parameters/grads/optimizer sharded

Without torchrun's environment (WORLD_SIZE unset or 1) every function here is the identity, so the
single-process path is the same code. How a run is split:
- training: every rank builds the same shuffled, length-bucketed *global* batches (same seed) and
  takes its own slice of each, so a run on N ranks with batch B sees exactly the batches of a
  single-process run with batch N*B; DDP/FSDP average the gradients;
- evaluation: each rank predicts a strided shard, padded to equal size (FSDP forwards are
  collectives: every rank must run as many); the logits are gathered and the padding dropped, so
  every example counts once;
- only rank 0 logs, shows progress and writes files; checkpoints are gathered to full tensors, in
  the single-process format.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gptclf.batching import Batch
from gptclf.errors import GptclfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device, fsdp: bool = False) -> tuple[Dist, torch.device]:
    """Join the torchrun job (if any); returns this rank's place and its device."""
    world_size = env_world_size()
    if world_size <= 1:
        if fsdp:
            log.warning("--fsdp has no effect in a single process (launch with torchrun)")
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise GptclfError(
                f"rank {rank}: local rank {local_rank} but only {torch.cuda.device_count()} GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=int(os.environ.get("GPTCLF_DIST_TIMEOUT", "1800")))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=timeout, device_id=device if backend == "nccl" else None
        )
    return Dist(rank, world_size, local_rank, fsdp), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, file writes), the others after it is done."""
    if d.enabled and not d.is_main:
        dist.barrier()
    yield
    if d.enabled and d.is_main:
        dist.barrier()


def check_global_batch(d: Dist, n_train: int, batch_size: int) -> int:
    """The global batch (per-rank batch x ranks); every rank needs a full slice of each."""
    global_batch = batch_size * d.world_size
    if d.enabled and n_train < global_batch:
        raise GptclfError(
            f"the training split has {n_train} examples, fewer than the global batch "
            f"({batch_size} per rank x {d.world_size} ranks)"
        )
    return global_batch


def rank_slice(batch: Batch, d: Dist) -> Batch:
    """This rank's rows of a global batch (padded as the whole batch, like a single process)."""
    if not d.enabled:
        return batch
    per_rank = len(batch.labels) // d.world_size
    rows = slice(d.rank * per_rank, (d.rank + 1) * per_rank)
    return Batch(
        batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows], batch.indices[rows]
    )


def shard(n: int, d: Dist) -> list[int]:
    """This rank's example indices: a strided shard, padded (with its first index) to equal size."""
    own = list(range(d.rank, n, d.world_size))
    size = -(-n // d.world_size)
    return own + (own[:1] or [0]) * (size - len(own))


def gather_shards(local: torch.Tensor, n: int, d: Dist) -> torch.Tensor:
    """Rows of every rank's `shard(n)` (same-sized on each rank) back in input order, padding dropped."""
    if not d.enabled:
        return local
    parts = [torch.empty_like(local) for _ in range(d.world_size)]
    dist.all_gather(parts, local.contiguous())
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for rank, part in enumerate(parts):
        count = len(range(rank, n, d.world_size))
        out[rank :: d.world_size] = part[:count]
    return out


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum of each value over ranks (the values themselves in a single process)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_lists(items: list, d: Dist) -> list[list]:
    """Every rank's list (Python objects, pickled between our own processes only)."""
    if not d.enabled:
        return [items]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, items)
    return out


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module to train through: DDP, or FSDP (`fully_shard`, in place, block by block)."""
    if not d.enabled:
        return model
    if d.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (d.world_size,))
        for block in model.backbone.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def reshard(model: nn.Module, d: Dist) -> None:
    """Return FSDP modules to their sharded parameters. After a forward the root keeps its own
    unsharded (plain tensors), so snapshots and restores must happen in this state."""
    if d.enabled and d.fsdp:
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()


def full_state_dict(model: nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on rank 0; a collective under FSDP (every rank calls it)."""
    if d.enabled and d.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    return model.state_dict()
