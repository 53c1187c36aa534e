"""The frozen-prefix states in a file: one safetensors file, written and read row by row.

Layout (a valid safetensors file: `safe_open` reads it whole): per split NAME, `NAME.lengths`
(int64, one per text) and `NAME.states` (tokens x d, the texts' rows one after another). Every
length is known before any state is computed, so `StoreWriter` writes the header first and puts
each row straight at its offset: a cache larger than memory is never in memory. The file is
written under a temporary name beside its own and renamed into place when complete (fileio), so a
file under the final name is whole unless something else damaged it; `open_rows` still checks
what is cheap to check (the header, the file's size, every length against the texts) before
trusting it.

`StoredRows` reads rows with explicit positioned reads into preallocated tensors, not through a
memory map: the pages of a mapping that have been touched count in the process's resident
memory, the page cache that explicit reads go through does not.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import torch

from gptclf import fileio
from gptclf.fileio import temp_beside

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
BY_NAME = {v: k for k, v in DTYPES.items()}
SECONDS_WIDTH = 20  # build_seconds is written at the end into a header of fixed size


def layout(
    lengths: dict[str, list[int]], d: int, dtype: torch.dtype, build_seconds: float
) -> tuple[bytes, dict[str, int]]:
    """The file's header (8-byte size + JSON, padded to 8 bytes) and where each split's states
    start in the file. The lengths come first, so every tensor starts 8-byte aligned."""
    entries: dict[str, object] = {
        "__metadata__": {"format": "1", "build_seconds": f"{build_seconds:0{SECONDS_WIDTH}.3f}"}
    }
    end, starts = 0, {}

    def add(key: str, kind: torch.dtype, shape: list[int]) -> None:
        nonlocal end
        size = kind.itemsize * math.prod(shape)
        entries[key] = {"dtype": DTYPES[kind], "shape": shape, "data_offsets": [end, end + size]}
        end += size

    for name, ns in lengths.items():
        add(f"{name}.lengths", torch.int64, [len(ns)])
    for name, ns in lengths.items():
        starts[name] = end
        add(f"{name}.states", dtype, [sum(ns), d])
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    header = struct.pack("<Q", len(text)) + text
    return header, {name: len(header) + start for name, start in starts.items()}


class StoreWriter:
    """A store of known lengths filled row by row: `write` each text's states, then `commit`
    (renamed into place) or `abort` (removed). Raises OSError where the file cannot be made,
    or the disk cannot hold it (checked up front where the file system can reserve space)."""

    def __init__(self, path: Path, lengths: dict[str, list[int]], d: int, dtype: torch.dtype):
        self.path, self.lengths, self.d, self.dtype = Path(path), lengths, d, dtype
        fd, self.tmp = temp_beside(self.path)
        self.file = os.fdopen(fd, "r+b", buffering=0)
        try:
            header, self.starts = layout(lengths, d, dtype, 0.0)
            self.row_starts = {name: _row_offsets(ns) for name, ns in lengths.items()}
            size = len(header) + sum(
                8 * len(ns) + sum(ns) * d * dtype.itemsize for ns in lengths.values()
            )
            reserve(self.file.fileno(), size)
            self._write_at(len(header), b"".join(_int64s(ns) for ns in lengths.values()))
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, index: int, rows: torch.Tensor) -> None:
        """Text `index` of split `name`: its (length, d) states, in the store's dtype."""
        assert rows.shape == (self.lengths[name][index], self.d) and rows.dtype == self.dtype
        offset = self.starts[name] + self.row_starts[name][index] * self.d * self.dtype.itemsize
        self._write_at(offset, _bytes_of(rows))

    def commit(self, build_seconds: float) -> Path:
        """The final header, then flushed to disk and renamed into place; returns the path."""
        try:
            self._write_at(0, layout(self.lengths, self.d, self.dtype, build_seconds)[0])
            self.file.close()
            fileio.commit(self.tmp, self.path)  # looked up at call time, as atomic_write does
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def _write_at(self, offset: int, data: bytes | memoryview) -> None:
        self.file.seek(offset)
        view = memoryview(data).cast("B")
        while view:  # a raw write may write less than asked
            view = view[self.file.write(view) :]


def reserve(fd: int, size: int) -> None:
    """Make the file `size` bytes, reserving the disk space where the file system can (so a
    full disk fails now, before the states are computed, not halfway through writing them)."""
    os.ftruncate(fd, size)
    if hasattr(os, "posix_fallocate") and size > 0:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # cannot reserve: writes will tell
                raise


class StoredRows(Sequence[torch.Tensor]):
    """The states of some texts of one split in a store, read from the file when asked for;
    `rows[i]` is text i's (length, d) tensor. Views (`subset`) share the open file."""

    def __init__(
        self, file, offsets: list[int], lengths: list[int], d: int, dtype: torch.dtype
    ) -> None:
        self.file, self.offsets, self.lengths, self.d, self.dtype = file, offsets, lengths, d, dtype

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        out = torch.empty(self.lengths[i], self.d, dtype=self.dtype)
        self._read_into(out, i)
        return out

    def subset(self, indices: Sequence[int]) -> StoredRows:
        return StoredRows(
            self.file,
            [self.offsets[i] for i in indices],
            [self.lengths[i] for i in indices],
            self.d,
            self.dtype,
        )

    def read_batch(self, indices: Sequence[int], length: int) -> torch.Tensor:
        """(B, length, d) states of texts `indices`, each cut to `length` or zero-filled after
        its own length (the positions beyond are masked pads)."""
        out = torch.zeros(len(indices), length, self.d, dtype=self.dtype)
        for row, i in enumerate(indices):
            self._read_into(out[row, : min(self.lengths[i], length)], i)
        return out

    def _read_into(self, out: torch.Tensor, i: int) -> None:
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        self.file.seek(self.offsets[i])
        while view:
            n = self.file.readinto(view)
            if not n:
                raise OSError(errno.EIO, f"prefix store {self.file.name} ends early")
            view = view[n:]

    def close(self) -> None:
        self.file.close()


def open_rows(
    path: Path, lengths: dict[str, list[int]], d: int | None = None
) -> tuple[dict[str, StoredRows], float]:
    """Every split's rows in the store at `path` and what computing them took, after checking
    that its header is whole, the file has exactly the size the header says, and it holds
    `lengths` (the texts' lengths, split by split) of width `d` (None: the stored width).
    Raises ValueError, KeyError or OSError."""
    file = open(path, "rb", buffering=0)  # noqa: SIM115 (kept open by the rows it returns)
    try:
        header = _read_header(file)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        data_start = 8 + int.from_bytes(_read_exactly(file, 0, 8), "little")
        expected = data_start + max((v["data_offsets"][1] for v in tensors.values()), default=0)
        size = os.fstat(file.fileno()).st_size
        if size != expected:
            raise ValueError(f"{size} bytes where the header says {expected}")
        rows = {}
        for name, ns in lengths.items():
            stored = _tensor(file, data_start, tensors, f"{name}.lengths", torch.int64, [len(ns)])
            if stored != ns:
                raise ValueError(f"the stored lengths of {name} are not those of its texts")
            info = tensors.get(f"{name}.states") or {}
            dtype, shape = BY_NAME.get(info.get("dtype")), info.get("shape")
            if d is None and isinstance(shape, list) and len(shape) == 2:
                d = shape[1]
            if not isinstance(d, int) or d <= 0:
                raise ValueError(f"{name}.states: a width of {d!r}")
            if dtype not in (torch.float32, torch.bfloat16) or shape != [sum(ns), d]:
                raise ValueError(f"{name}.states: {info.get('dtype')} {shape}")
            start, end = info["data_offsets"]
            if end - start != sum(ns) * d * dtype.itemsize:
                raise ValueError(f"{name}.states: {end - start} bytes for its shape")
            row_bytes = d * dtype.itemsize
            offsets = [data_start + start + r * row_bytes for r in _row_offsets(ns)]
            rows[name] = StoredRows(file, offsets, ns, d, dtype)
        return rows, float((header.get("__metadata__") or {})["build_seconds"])
    except BaseException:
        file.close()
        raise


def _read_header(file) -> dict:
    (n,) = struct.unpack("<Q", _read_exactly(file, 0, 8))
    if n > 100 * 1024**2:  # safetensors' own limit
        raise ValueError(f"a header of {n} bytes")
    header = json.loads(_read_exactly(file, 8, n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    for key, info in header.items():
        if key != "__metadata__" and not (
            isinstance(info, dict) and len(info.get("data_offsets") or ()) == 2
        ):
            raise ValueError(f"no data offsets for {key}")
    return header


def _tensor(file, data_start: int, tensors: dict, key: str, dtype: torch.dtype, shape) -> list:
    info = tensors.get(key) or {}
    if info.get("dtype") != DTYPES[dtype] or info.get("shape") != shape:
        raise ValueError(f"{key}: {info.get('dtype')} {info.get('shape')}, expected {shape}")
    start, end = info["data_offsets"]
    data = _read_exactly(file, data_start + start, end - start)
    return torch.frombuffer(bytearray(data), dtype=dtype).tolist() if data else []


def _read_exactly(file, offset: int, n: int) -> bytes:
    file.seek(offset)
    data = file.read(n)
    if len(data) != n:
        raise ValueError(f"the file ends at byte {offset + len(data)}, before {offset + n}")
    return data


def _row_offsets(lengths: list[int]) -> list[int]:
    """Where each text's rows begin, counted in rows."""
    offsets, total = [], 0
    for n in lengths:
        offsets.append(total)
        total += n
    return offsets


def _int64s(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}q", *values)


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B")
