"""Atomic file writes: every file gptclf writes appears whole or not at all.

A file is written to a temporary name beside its target and renamed over it (`os.replace` is
atomic on POSIX and Windows), so a crash or a kill mid-write leaves the previous file intact.
Torch only inside `read_safetensors`: checkpoints, caches, reports, tables and downloads all use these helpers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptclf.errors import GptclfError

if TYPE_CHECKING:
    import torch


def temp_beside(path: Path) -> tuple[int, Path]:
    """An open file descriptor and the name of a new temporary file in `path`'s directory
    (created if missing): same file system, so renaming it over `path` is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    return fd, Path(tmp)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then rename tmp_path over `path` (removed if `write` fails)."""
    fd, tmp = temp_beside(Path(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """`data` written atomically to `path`; returns `path`."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    return Path(path)


def write_json(path: Path, data: Any) -> None:
    """Indented JSON (with a final newline), written atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing or unreadable file is one clear error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptclfError(f"missing file {path}") from None
    except (OSError, ValueError) as exc:
        raise GptclfError(f"cannot read {path}: {exc}") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (never pickle); missing or corrupt: one clear error."""
    from safetensors import SafetensorError  # torch: only where weights are read
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise GptclfError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptclfError(f"cannot read {path} (corrupt or not safetensors): {exc}") from None
