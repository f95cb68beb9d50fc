"""The weights member's layout: a safetensors file, written as a stream. No torch.

safetensors is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and byte range, plus a string-to-string ``__metadata__``) and the raw bytes. It is
written here as (header, tensor bytes, tensor bytes, ...) so that no tensor is copied
(the ``safetensors`` library builds the whole file as one ``bytes`` object); the tests check
the result against the library in both directions.

trtpack keeps one ``__metadata__`` key, ``trtpack.tensors``: for every tensor of the program,
its group (state dict or constants), whether it is a parameter, and for tensors that share
storage with a stored one, the view (dtype, shape, stride, offset) to rebuild.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .container import Chunks, Data

LAYOUT_KEY = "trtpack.tensors"

#: dtype name (as torch spells it) -> (safetensors code, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "float64": ("F64", 8), "float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2),
    "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2), "int8": ("I8", 1),
    "uint8": ("U8", 1), "bool": ("BOOL", 1), "complex64": ("C64", 8),
    "float8_e4m3fn": ("F8_E4M3", 1), "float8_e5m2": ("F8_E5M2", 1),
    "uint64": ("U64", 8), "uint32": ("U32", 4), "uint16": ("U16", 2),
}  # fmt: skip
CODES = {code: name for name, (code, _) in DTYPES.items()}


@dataclass(frozen=True)
class RawTensor:
    """A contiguous tensor as bytes: how a stored tensor enters the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: Data

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]


def safetensors_source(tensors: Sequence[RawTensor], metadata: Mapping[str, str]) -> Chunks:
    """The file as chunks. Tensors are ordered by element size, largest first, then by name,
    so that each tensor's data is naturally aligned."""
    if sys.byteorder != "little":
        raise ValueError("safetensors stores little-endian data; this machine is big-endian")
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    parts: list[Data] = []
    offset = 0
    for t in sorted(tensors, key=lambda t: (-t.itemsize, t.name)):
        nbytes = memoryview(t.data).nbytes
        expected = t.itemsize
        for d in t.shape:
            expected *= d
        if nbytes != expected:
            raise ValueError(f"tensor {t.name!r}: {nbytes} bytes for shape {list(t.shape)}")
        header[t.name] = {
            "dtype": DTYPES[t.dtype][0],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        if nbytes:
            parts.append(t.data)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return Chunks((struct.pack("<Q", len(raw)) + raw, *parts))


def layout_metadata(layout: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    # One key only, so that the safetensors library, which keeps __metadata__ in a hash map,
    # writes the same header when it rewrites this file.
    return {LAYOUT_KEY: json.dumps(layout, sort_keys=True)}
