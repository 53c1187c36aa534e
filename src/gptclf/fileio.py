"""Atomic file writes: every file gptclf writes appears whole or not at all.

A file is written to a temporary name beside its target, flushed to disk and renamed over it
(`os.replace` is atomic on POSIX and Windows), so a crash or a kill mid-write leaves the previous
file intact. Files that belong together (a checkpoint, the split files) are all written to
temporary names first and renamed only then, one after the other (`atomic_write_many`).
A directory that must appear whole (an export, an ensemble) is built in a temporary sibling and
renamed into place at the end (`staged_directory`). Torch only inside the safetensors readers:
checkpoints, caches, reports, tables, splits, exports, ensembles and downloads all use these
helpers.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptclf.errors import GptclfError

if TYPE_CHECKING:
    import torch

O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
TEMP_SUFFIX = ".tmp"  # temporaries are `.NAME.<random>.tmp`: hidden, never taken for NAME


def temp_beside(path: Path) -> tuple[int, Path]:
    """An open file descriptor and the name of a new temporary file in `path`'s directory
    (created if missing): same file system, so renaming it over `path` is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            # 0o666 less the umask, as a plain open() would create it (mkstemp's 0o600 would
            # make a checkpoint unreadable to the other users of a shared machine)
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise GptclfError(f"cannot create a temporary file beside {path}")


def commit(tmp: Path, path: Path) -> None:
    """Flush `tmp`'s bytes to disk, then rename it over `path`: after a crash, even a power
    loss, `path` holds the old content or the new, never a part."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_temp(path: Path, write: Callable[[Path], object]) -> Path:
    """A temporary file beside `path` filled by `write(tmp_path)` (removed if `write` fails)."""
    fd, tmp = temp_beside(Path(path))
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # safetensors recreates its file as 0o600
            os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_many(writes: Mapping[Path, Callable[[Path], object]]) -> None:
    """Every `write(tmp_path)` to its temporary file first, then the renames, in the mapping's
    order: a kill while writing leaves every old file; only a kill between two renames (no data
    is written then) mixes old and new, which the reader must detect (see checkpoint.py)."""
    staged: dict[Path, Path] = {}
    try:
        for path, write in writes.items():
            staged[Path(path)] = write_temp(Path(path), write)
        for path, tmp in staged.items():
            commit(tmp, path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, then rename tmp_path over `path` (removed if `write` fails)."""
    atomic_write_many({Path(path): write})


@contextmanager
def staged_directory(out: Path, purpose: str) -> Iterator[Path]:
    """A temporary directory beside `out` (same file system; hidden, named after `purpose`),
    renamed to `out` on success and removed on failure: `out` is never half-written, and its
    old content (if any) goes only once the new one is complete."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{purpose}-"))
    except OSError as exc:  # e.g. a read-only file system
        raise GptclfError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp's 0700 is for the staging only
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """`data` written atomically to `path`; returns `path`."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
    return Path(path)


def json_bytes(data: Any, ensure_ascii: bool = True) -> bytes:
    """Indented JSON with a final newline, UTF-8: what `write_json` writes. `ensure_ascii`
    (default) escapes every non-ASCII character, so even a lone surrogate in a text is safe."""
    return (json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n").encode("utf-8")


def write_json(path: Path, data: Any, ensure_ascii: bool = True) -> None:
    """Indented JSON (with a final newline), written atomically."""
    write_bytes(path, json_bytes(data, ensure_ascii))


def read_nonempty(path: Path) -> bytes:
    """A file's bytes; missing, unreadable or empty: one clear error naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise GptclfError(f"missing file {path}") from None
    except OSError as exc:
        raise GptclfError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not data:
        raise GptclfError(f"{path}: empty file")
    return data


def read_json(path: Path) -> Any:
    """A JSON file's content; missing, empty or not JSON: one clear error naming it."""
    data = read_nonempty(path)
    try:
        return json.loads(data)  # bytes: UTF-8 (or -16/-32), else a UnicodeDecodeError
    except ValueError as exc:
        raise GptclfError(f"{path}: not valid JSON ({exc})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """`read_json` of a file that must hold one JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise GptclfError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(
    path: Path, keep: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (never pickle); missing or corrupt: one clear error.
    `keep`: read only the tensors whose names it accepts (the others are never loaded)."""
    return read_safetensors_with_metadata(path, keep)[0]


def read_safetensors_with_metadata(
    path: Path, keep: Callable[[str], bool] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file (or those `keep` accepts) and its string metadata
    (never pickle)."""
    from safetensors import SafetensorError, safe_open  # torch: only where weights are read

    if not Path(path).is_file():
        raise GptclfError(f"missing weights file {path}")
    if Path(path).stat().st_size == 0:
        raise GptclfError(f"{path}: empty file")
    try:
        with safe_open(str(path), "pt") as f:
            names = [k for k in f.keys() if keep is None or keep(k)]  # noqa: SIM118 (not a dict)
            tensors = {k: f.get_tensor(k) for k in names}
            return tensors, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GptclfError(f"{path}: corrupt or not safetensors ({exc})") from None
