"""The resumable training state: `OUT/train_state.safetensors`, so a killed run continues.

One safetensors file (written atomically; never pickle) holds the trainable weights, the weights
of the best epoch so far, the optimizer's moments, the batch-order generator's state at the start
of the current epoch and every rank's torch RNG state; its metadata holds, as JSON, the position
(epoch, optimizer steps done in it), the epoch's running totals, the history, the per-batch curve,
the best-so-far record, the optimizer's settings, the run's settings and a hash of its training
token ids. `gptclf train ... --resume` rebuilds the run exactly as before (same seed: same
initialisation, the prefix cache recomputed or read from --cache-dir), then overwrites it from the
state: the batches of the current epoch are drawn again in the same order and the steps already
done are skipped, so the resumed run ends with the metrics of an uninterrupted one, bit for bit.

The state is written at every epoch end and every `--save-every` optimizer steps (default: about
once a minute), only where the optimizer has just stepped (no gradients pending), and removed
when the run finishes. SIGINT/SIGTERM stop the run at the next step boundary with the state saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptclf import distributed
from gptclf.errors import GptclfError, Interrupted
from gptclf.fileio import atomic_write

if TYPE_CHECKING:
    from gptclf.train import Run

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
FORMAT = "gptclf-train-state"
VERSION = 1
SAVE_SECONDS = 60.0  # default interval between saves when --save-every is not given
# Settings a resumed run may change: they do not change what is computed.
FREE_SETTINGS = {"resume", "overwrite", "save_every", "progress", "report", "cache_dir"}


def state_path(out: str | Path) -> Path:
    return Path(out) / STATE_FILE


def enabled(run: Run) -> bool:
    """Whether this run keeps a state: it has an --out; FSDP's sharded optimizer is not saved."""
    return run.cfg.out is not None and not run.d.fsdp


def due(run: Run, step: int) -> bool:
    """Whether to save after this optimizer step (rank 0 decides; the step's all-reduce tells
    the others, so every rank saves together)."""
    if not enabled(run) or not run.d.is_main:
        return False
    if run.cfg.save_every is not None:
        return step % (run.cfg.save_every * run.cfg.grad_accum) == 0
    return time.perf_counter() - run.last_save >= SAVE_SECONDS


def data_hash(run: Run) -> str:
    h = hashlib.sha256()
    h.update(repr(run.enc.ids["train"]).encode())
    h.update(repr(run.data["train"].labels).encode())
    return h.hexdigest()[:32]


def save(run: Run, epoch: int, step: int) -> None:
    """Write the state as of `step` optimizer steps into `epoch` (a collective under torchrun)."""
    if not enabled(run):
        return
    rng = distributed.gather_lists([torch.get_rng_state()], run.d)  # every rank's own
    run.last_save = time.perf_counter()
    if not run.d.is_main:
        return
    tensors = {
        f"param.{k}": v.detach().cpu().contiguous()
        for k, v in run.model.named_parameters()
        if v.requires_grad
    }
    tensors |= {f"best.{k}": v.cpu().contiguous() for k, v in run.best_state.items()}
    optimizer = run.optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.batches"] = run.epoch_rng.clone()
    for rank, (state,) in enumerate(rng):
        tensors[f"rng.torch.{rank}"] = state
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "step": step,
        "tally": {"loss": run.tally.loss, "correct": run.tally.correct},
        "examples_seen": run.examples_seen,
        "epoch_seen_before": run.tally.seen_before,
        "history": run.history,
        "steps": run.steps,
        "best_key": run.best_key,
        "best_epoch": run.best_epoch,
        "optimizer": {"param_groups": optimizer["param_groups"], "scalars": scalars},
        "settings": settings(run),
        "data": data_hash(run),
    }
    path = state_path(run.cfg.out)
    metadata = {"gptclf": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    log.debug("training state saved: epoch %d, step %d", epoch, step)


def settings(run: Run) -> dict[str, Any]:
    return {k: v for k, v in run.info.train_config.items() if k not in FREE_SETTINGS}


def read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["gptclf"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise GptclfError(
            f"--resume: {path} is unreadable ({exc}); remove it to start fresh"
        ) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise GptclfError(f"--resume: {path} is not a gptclf training state of version {VERSION}")
    return meta, tensors


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs; one a state predates counts as the option's default (what
    the run had then, as for the experiment runner's results)."""
    from gptclf.train_config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key in current:
        before = stored[key] if key in stored else defaults.get(key)
        if before != current[key]:
            flag = "--" + key.replace("_", "-")
            return f"{flag} was {before!r}, now {current[key]!r}"
    return None


def restore(run: Run) -> int:
    """Load the state saved in --out into the freshly prepared run; returns the epoch to train
    from. Without a state, says so and starts fresh (epoch 1)."""
    path = state_path(run.cfg.out) if enabled(run) else None
    if path is None or not path.is_file():
        where = run.cfg.out if run.cfg.out is not None else "(no --out)"
        log.warning("--resume: nothing to resume in %s; starting fresh", where)
        return 1
    meta, tensors = read(path)
    if difference := first_difference(meta["settings"], settings(run)):
        raise GptclfError(f"--resume: {path.parent} holds a run with other settings: {difference}")
    if meta["data"] != data_hash(run):
        raise GptclfError(f"--resume: the training data differs from the run's in {path.parent}")
    load_weights(run, tensors)
    load_optimizer(run, meta["optimizer"], tensors)
    run.history, run.steps = meta["history"], [tuple(s) for s in meta["steps"]]
    run.examples_seen, run.best_epoch = meta["examples_seen"], meta["best_epoch"]
    run.best_key = tuple(meta["best_key"]) if meta["best_key"] is not None else None
    run.tally.loss, run.tally.correct = meta["tally"]["loss"], meta["tally"]["correct"]
    run.tally.seen_before, run.tally.steps_done = meta["epoch_seen_before"], meta["step"]
    run.epoch_rng = tensors["rng.batches"]
    run.generator.set_state(run.epoch_rng)
    torch.set_rng_state(tensors.get(f"rng.torch.{run.d.rank}", tensors["rng.torch.0"]))
    log.info("resuming from epoch %d, step %d", meta["epoch"], meta["step"])
    return meta["epoch"]


def load_weights(run: Run, tensors: dict[str, torch.Tensor]) -> None:
    params = {k: v for k, v in run.model.named_parameters() if v.requires_grad}
    saved = {k.removeprefix("param."): v for k, v in tensors.items() if k.startswith("param.")}
    if set(saved) != set(params):
        raise GptclfError("--resume: the saved trainable weights do not match this model's")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    run.best_state = {
        k.removeprefix("best."): v.to(params[k.removeprefix("best.")].device)
        for k, v in tensors.items()
        if k.startswith("best.")
    }


def load_optimizer(run: Run, saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in saved["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    run.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def start_fresh(run: Run) -> int:
    """A new run: an old state in --out belongs to an earlier run and goes."""
    if enabled(run) and run.d.is_main:
        state_path(run.cfg.out).unlink(missing_ok=True)
    return 1


def finished(run: Run) -> None:
    """The run is complete: nothing is left to resume."""
    if enabled(run) and run.d.is_main:
        state_path(run.cfg.out).unlink(missing_ok=True)


@contextmanager
def interruptible(run: Run) -> Iterator[None]:
    """SIGINT/SIGTERM ask the run to stop at the next step boundary (`run.stop_signal`); a
    second one stops it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def ask_to_stop(signum: int, frame: object) -> None:
        if run.stop_signal:
            raise KeyboardInterrupt
        run.stop_signal = signum
        log.warning("%s: stopping after this step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop(run: Run, epoch: int, step: int) -> Interrupted:
    """The exception that ends an interrupted run (its state already saved where kept)."""
    signum = run.stop_signal or signal.SIGTERM
    name = signal.Signals(signum).name
    if enabled(run):
        message = (
            f"{name}: stopped at epoch {epoch}, step {step}; the training state is in "
            f"{run.cfg.out}: rerun the same command with --resume to continue"
        )
    else:
        message = f"{name}: stopped at epoch {epoch}, step {step} (no --out: nothing saved)"
    return Interrupted(message, 128 + signum)
