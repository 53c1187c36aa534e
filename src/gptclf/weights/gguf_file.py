"""The GGUF container, read in one pass: header, metadata, tensor table; tensors as views of a
read-only memory map, dequantized to float32 torch tensors by the gguf package.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), little-endian: magic "GGUF",
version (2 or 3), tensor count, metadata count; the metadata as (key, type, value), strings as
(u64 length, UTF-8 bytes), arrays as (element type, u64 count, elements); the tensor table as
(name, n_dims, dims fastest-first, type, offset); then the tensor data from the next multiple of
`general.alignment` (default 32), each tensor at its offset from there.

Why not gguf's `GGUFReader`: it builds a numpy memmap view for every value it parses, ~150,000
of them for SmolLM2's 49,152-token vocabulary and its merges: 6.2 s before a weight was read,
against 0.1 s here, where the metadata is parsed with `struct` and each string decoded once
(the AVX-512 EPYC, 2 cores shared with other jobs, 2026-12-03). The gguf package stays the
source of truth for the tensor types, their block sizes and the dequantization
(`gguf.quants.dequantize`); tests/test_weights_gguf.py compares both readers field by field and
tensor by tensor.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize as gguf_dequantize

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
V = GGUFValueType
# metadata value type -> struct format of one value (strings and arrays are parsed apart)
SCALARS = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i"}
SCALARS |= {V.FLOAT32: "f", V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
STRING, ARRAY = V.STRING, V.ARRAY
# Unquantized tensor types: numpy dtype of one element (the rest are packed blocks of bytes)
PLAIN = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
    GGMLQuantizationType.I8: np.int8,
    GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32,
    GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True)
class Tensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF's order: fastest-varying dimension first
    data: np.ndarray  # read-only view: elements for PLAIN types, else (rows, bytes per row) uint8


class GGUFFile:
    """`fields`: metadata key -> value (a list for arrays); `tensors`: in the file's order.
    Raises ValueError on anything malformed (callers name the file)."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # ValueError if empty
        self._offset = 0
        if self._read(4) != MAGIC:
            raise ValueError("no GGUF magic")
        version = self._scalar("I")
        if version & 0xFFFF == 0:
            raise ValueError("big-endian GGUF files are not supported")
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {version} (supported: {VERSIONS})")
        n_tensors, n_fields = self._scalar("Q"), self._scalar("Q")
        self.fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = self._string()
            if key in self.fields:
                raise ValueError(f"metadata key {key!r} twice")
            self.fields[key] = self._value(self._scalar("I"))
        table = [self._tensor_info() for _ in range(n_tensors)]
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self._offset // alignment) * alignment
        self.tensors = [self._tensor(*info, start) for info in table]
        if len({t.name for t in self.tensors}) != len(self.tensors):
            raise ValueError("a tensor name appears twice")

    def _read(self, n: int) -> bytes:
        end = self._offset + n
        if n < 0 or end > len(self._map):
            raise ValueError(f"ends at byte {len(self._map)}, {end} expected")
        out, self._offset = self._map[self._offset : end], end
        return out

    def _scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack("<" + fmt, self._read(struct.calcsize(fmt)))
        return value

    def _string(self) -> str:
        return self._read(self._scalar("Q")).decode("utf-8")

    def _value(self, kind: int) -> Any:
        if kind == STRING:
            return self._string()
        if kind in SCALARS:
            return self._scalar(SCALARS[kind])
        if kind != ARRAY:
            raise ValueError(f"unknown metadata type {kind}")
        item, count = self._scalar("I"), self._scalar("Q")
        if item in SCALARS:  # one unpack for the whole array
            fmt = SCALARS[item]
            return list(struct.unpack(f"<{count}{fmt}", self._read(count * struct.calcsize(fmt))))
        if item == STRING:  # a vocabulary: ~100,000 of them, so the loop is kept tight
            return self._strings(count)
        return [self._value(item) for _ in range(count)]

    def _strings(self, count: int) -> list[str]:
        out, data, at, end = [], self._map, self._offset, len(self._map)
        for _ in range(count):
            if at + 8 > end:
                break
            (n,) = struct.unpack_from("<Q", data, at)
            out.append(data[at + 8 : at + 8 + n].decode("utf-8"))
            at += 8 + n
        if at > end or len(out) < count:
            raise ValueError(f"a string array ends past byte {end}")
        self._offset = at
        return out

    def _tensor_info(self) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = self._string()
        shape = tuple(self._scalar("Q") for _ in range(self._scalar("I")))
        return name, shape, GGMLQuantizationType(self._scalar("I")), self._scalar("Q")

    def _tensor(
        self, name: str, shape: tuple[int, ...], kind: GGMLQuantizationType, offset: int, start: int
    ) -> Tensor:
        elements = math.prod(shape)  # Python ints: a corrupt dimension cannot wrap around
        block, block_bytes = GGML_QUANT_SIZES[kind]
        if shape and shape[0] % block:
            raise ValueError(f"tensor {name}: row of {shape[0]} is not whole {kind.name} blocks")
        size = elements // block * block_bytes
        begin = start + offset
        if begin + size > len(self._map):
            raise ValueError(f"tensor {name} ends past the end of the file")
        rows = tuple(reversed(shape))
        if kind in PLAIN:
            data = np.frombuffer(self._map, PLAIN[kind], elements, begin).reshape(rows)
        else:
            row_bytes = shape[0] // block * block_bytes
            data = np.frombuffer(self._map, np.uint8, size, begin).reshape(*rows[:-1], row_bytes)
        return Tensor(name, kind, shape, data)


def dequantize(tensor: Tensor) -> torch.Tensor:
    """float32, in torch's dimension order (GGUF's reversed: (out, in) for a linear weight);
    NotImplementedError for a type gguf.quants cannot dequantize."""
    values = gguf_dequantize(tensor.data, tensor.tensor_type)
    values = np.array(values, dtype=np.float32, copy=True)  # writable, own memory: not the map
    return torch.from_numpy(values).reshape(tuple(reversed(tensor.shape)))
