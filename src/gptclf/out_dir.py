"""A training run's `--out` directory, checked before anything loads, so that a bad one fails in a
second instead of after an hour of training, and no directory ever holds two runs' files.

Refused in one line: a path under a file, a directory gptclf cannot write to, and a directory
that holds another run's files (a checkpoint, metrics, report or training state), since this
run would replace some of them and leave the others (`--no-report` keeps the old plots; a
crash keeps the old metrics.json beside the new weights). `--resume` continues the run whose
training state is there; `--overwrite` (and the default `runs/latest`, replaced by every run)
first moves the old run's files out and deletes them. Other files in the directory are left
alone. Torch-free: called by `gptclf train` and `Classifier.train` before torch is imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from gptclf.errors import GptclfError
from gptclf.train_config import DEFAULT_OUT, TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"  # resume.STATE_FILE (resume.py imports torch)
# Every file a run writes into --out: checkpoint.py, train.finish, run_report.py, resume.py
# (tests/test_flags.py checks this list against those modules).
RUN_FILES = (
    "model.safetensors", "metrics.json", "config.json", "tokenizer.json", "tokenizer_meta.json",
    "report.md", "loss.png", "accuracy.png", "confusion_matrix.png",
    "roc.png", "pr.png", STATE_FILE,
)  # fmt: skip


def prepare_out(cfg: TrainConfig) -> None:
    """Check `cfg.out` (one line if it cannot take this run), then, where this run replaces the
    one in it, remove that run's files."""
    if cfg.out is None:
        return
    check_out(cfg)
    # Under torchrun every process checks; one removes (the others wait for it to join the job).
    if replaces(cfg) and int(os.environ.get("RANK", "0")) == 0:
        remove_run(Path(cfg.out))


def check_out(cfg: TrainConfig) -> None:
    out = Path(cfg.out)
    existing = out
    while not existing.exists():  # the directory is created later: its nearest existing parent
        existing = existing.parent
    if not existing.is_dir():
        raise GptclfError(f"--out {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GptclfError(f"--out {out}: no permission to write in {existing}")
    found = run_files(out)
    if not found or replaces(cfg) or (cfg.resume and STATE_FILE in found):
        return
    if cfg.resume:
        raise GptclfError(
            f"--resume: {out} holds a finished run ({', '.join(found[:3])}), no training state "
            "to continue: choose another --out, or --overwrite to replace that run"
        )
    if STATE_FILE in found:
        raise GptclfError(
            f"--out {out} holds an interrupted run ({STATE_FILE}): add --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    raise GptclfError(
        f"--out {out} holds another run ({', '.join(found[:3])}): choose another --out, or add "
        "--overwrite to replace it"
    )


def replaces(cfg: TrainConfig) -> bool:
    """Whether this run replaces a run already in --out (not when it continues that run)."""
    resumes = cfg.resume and (Path(cfg.out) / STATE_FILE).is_file()
    return (cfg.overwrite or os.path.normpath(cfg.out) == DEFAULT_OUT) and not resumes


def run_files(out: Path) -> list[str]:
    """The run files in `out`, in `RUN_FILES` order."""
    return [name for name in RUN_FILES if (out / name).exists()] if out.is_dir() else []


def remove_run(out: Path) -> None:
    """Move the run's files (and what a killed run left: temporary files of atomic writes, the
    search folders of --recipe auto) into one hidden folder, then delete it: if the deletion is
    cut short, that folder is all that is left, never half of the old run beside the new one."""
    old = [out / name for name in run_files(out)]
    if out.is_dir():
        leftovers = [p for name in RUN_FILES for p in out.glob(f".{name}.*.tmp")]
        old += leftovers + list(out.glob(".auto-*"))
    if not old:
        return
    trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=out))
    for path in old:
        os.replace(path, trash / path.name)
    shutil.rmtree(trash)
    log.info("--out %s: removed the previous run's files (%d)", out, len(old))
