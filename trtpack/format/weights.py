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

import itertools
import json
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import IntegrityError
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
#: the dtypes a parameter may require grad in (torch refuses the others)
GRAD_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "complex64", "float8_e4m3fn", "float8_e5m2"}
)


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


ALIGN = 64  # as torch.save aligns storages: SIMD kernels then take the same code path as eager
PAD_PREFIX = "__pad__."


def safetensors_source(tensors: Sequence[RawTensor], metadata: Mapping[str, str]) -> Chunks:
    """The file as chunks. Every tensor's data starts at a multiple of :data:`ALIGN` within
    the file (and so within the pack, whose members start 4096-aligned). safetensors needs
    contiguous ``data_offsets``, so gaps are filled by ``__pad__.N`` U8 tensors that readers
    skip; the header is padded with spaces so that the data section starts aligned too."""
    if sys.byteorder != "little":
        raise ValueError("safetensors stores little-endian data; this machine is big-endian")
    entries: list[tuple[str, str, list[int], int, Data | None]] = []
    offset = 0
    for t in sorted(tensors, key=lambda t: (-t.itemsize, t.name)):
        nbytes = memoryview(t.data).nbytes
        expected = t.itemsize
        for d in t.shape:
            expected *= d
        if nbytes != expected:
            raise ValueError(f"tensor {t.name!r}: {nbytes} bytes for shape {list(t.shape)}")
        gap = -offset % ALIGN
        if gap and nbytes:
            entries.append((f"{PAD_PREFIX}{len(entries)}", "U8", [gap], gap, bytes(gap)))
            offset += gap
        entries.append((t.name, DTYPES[t.dtype][0], list(t.shape), nbytes, t.data))
        offset += nbytes
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    parts: list[Data] = []
    offset = 0
    for name, code, shape, nbytes, data in entries:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        if nbytes:
            parts.append(data)  # type: ignore[arg-type]
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)  # the data section starts ALIGN-aligned
    return Chunks((struct.pack("<Q", len(raw)) + raw, *parts))


@dataclass(frozen=True)
class StoredTensor:
    """A tensor's place in a parsed file: ``start``/``end`` are absolute byte positions."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class ViewEntry:
    """One program tensor from the layout metadata; ``view_of`` is None for stored ones, and
    only views use ``shape``, ``stride`` and ``offset`` (``dtype`` is every entry's)."""

    name: str
    group: str
    param: bool
    requires_grad: bool
    view_of: str | None = None
    dtype: str = ""
    shape: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    offset: int = 0
    #: format 1.4: the tensor is the one of the same name in this other weights member (an
    #: entry point's tensor stored once, by the default program)
    from_member: str | None = None


def _bad(where: str, what: str, **fields: Any) -> IntegrityError:
    msg = f"{where} is not a valid safetensors file: {what}"
    return IntegrityError(msg, member=where, **fields)


def _uints(value: Any, where: str, field: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(v) is int and 0 <= v < (1 << 62) for v in value):
        raise _bad(where, f"{field} {value!r} is not a list of non-negative integers", field=field)
    return tuple(value)


def parse_safetensors(
    buf: memoryview | bytes, where: str, size: int | None = None
) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """The header of a safetensors file, bounds-checked against ``buf``: each tensor's dtype,
    shape and absolute byte range (padding entries dropped), and ``__metadata__``. Files with
    unaligned data (trtpack 1.0) are accepted; raises :class:`IntegrityError` on any damage.
    ``size``: the whole file's size when ``buf`` holds only its head (the writer checks the
    header of a member it streams from the tensors' memory)."""
    size = len(buf) if size is None else size
    if size < 8 or len(buf) < 8:
        raise _bad(where, f"{size} bytes, shorter than the 8-byte header length", field="header")
    (header_len,) = struct.unpack_from("<Q", buf, 0)
    if header_len > min(size - 8, len(buf) - 8, 100 << 20):
        raise _bad(where, f"header length {header_len} is beyond the member ({size} bytes)",
                   field="header_length", got=header_len)  # fmt: skip
    try:
        header = json.loads(bytes(buf[8 : 8 + header_len]))
    except (ValueError, RecursionError) as e:
        raise _bad(where, f"the header is not JSON ({e})", field="header") from None
    if not isinstance(header, dict):
        raise _bad(where, "the header is not a JSON object", field="header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad(where, "__metadata__ is not a string-to-string map", field="__metadata__")
    data_start = 8 + header_len
    data_len = size - data_start
    ranges: list[tuple[int, int, str]] = []
    out: dict[str, StoredTensor] = {}
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise _bad(where, f"entry {name!r} is not an object", field=name)
        code = spec.get("dtype")
        dtype = CODES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise _bad(where, f"tensor {name!r} has unknown dtype {spec.get('dtype')!r}",
                       field=f"{name}.dtype", got=spec.get("dtype"))  # fmt: skip
        shape = _uints(spec.get("shape"), where, f"{name}.shape")
        offsets = _uints(spec.get("data_offsets"), where, f"{name}.data_offsets")
        if len(offsets) != 2:
            raise _bad(where, f"tensor {name!r} has data_offsets {list(offsets)}",
                       field=f"{name}.data_offsets")  # fmt: skip
        begin, end = offsets
        nbytes = DTYPES[dtype][1]
        for d in shape:
            nbytes *= d
        if not begin <= end <= data_len or end - begin != nbytes:
            raise _bad(where, f"tensor {name!r} has offsets {begin}..{end}, which do not fit "
                       f"{nbytes} bytes within the {data_len}-byte data section",
                       field=f"{name}.data_offsets", expected=nbytes, got=end - begin)  # fmt: skip
        ranges.append((begin, end, name))
        if not name.startswith(PAD_PREFIX):
            out[name] = StoredTensor(name, dtype, shape, data_start + begin, data_start + end)
    ranges.sort()
    for (_, e1, n1), (b2, _, n2) in itertools.pairwise(ranges):
        if b2 < e1:
            raise _bad(where, f"tensors {n1!r} and {n2!r} overlap", field=f"{n2}.data_offsets")
    return out, metadata


def parse_layout(
    metadata: Mapping[str, str], stored: Mapping[str, StoredTensor], where: str
) -> list[ViewEntry]:
    """The ``trtpack.tensors`` metadata, checked: groups, dtypes, and every view inside the
    bytes of the stored tensor it views."""
    if LAYOUT_KEY not in metadata:
        raise IntegrityError(f"{where} has no {LAYOUT_KEY!r} metadata", member=where,
                             field=LAYOUT_KEY)  # fmt: skip
    try:
        layout = json.loads(metadata[LAYOUT_KEY])
    except (ValueError, TypeError, RecursionError):
        # JSON only: metadata is never unpickled, whatever it holds
        raise IntegrityError(f"{where} has no {LAYOUT_KEY!r} metadata in JSON",
                             member=where, field=LAYOUT_KEY) from None  # fmt: skip
    if not isinstance(layout, dict):
        raise IntegrityError(f"{where}: {LAYOUT_KEY!r} is not an object", member=where,
                             field=LAYOUT_KEY)  # fmt: skip
    out = []
    for name, e in layout.items():
        field = f"{LAYOUT_KEY}.{name}"

        def bad(what: str, f: str = field, name: str = name) -> IntegrityError:
            return IntegrityError(f"{where}: {LAYOUT_KEY} entry {name!r} {what}",
                                  member=where, field=f)  # fmt: skip

        if not isinstance(e, dict) or e.get("group") not in ("state_dict", "constants"):
            raise bad("has no group 'state_dict' or 'constants'")
        param, grad = e.get("param", False), e.get("requires_grad", False)
        if not isinstance(param, bool) or not isinstance(grad, bool):
            raise bad("has a non-boolean param/requires_grad")
        if "from" in e:
            if not isinstance(e["from"], str) or e["from"] == where or "view_of" in e:
                raise bad(f"has 'from' {e['from']!r}, which must name another weights member "
                          "(and no view_of)", f"{field}.from")  # fmt: skip
            entry = ViewEntry(name, e["group"], param, grad, from_member=e["from"])
        elif "view_of" not in e:
            if name not in stored:
                raise bad("names no stored tensor")
            entry = ViewEntry(name, e["group"], param, grad, dtype=stored[name].dtype)
        else:
            base = stored.get(e["view_of"]) if isinstance(e["view_of"], str) else None
            if base is None:
                raise bad(f"is a view of {e['view_of']!r}, which is not stored", f"{field}.view_of")
            if not isinstance(e.get("dtype"), str) or e["dtype"] not in DTYPES:
                raise bad(f"has unknown dtype {e.get('dtype')!r}", f"{field}.dtype")
            shape = _uints(e.get("shape"), where, f"{field}.shape")
            stride = _uints(e.get("stride"), where, f"{field}.stride")
            (offset,) = _uints([e.get("offset")], where, f"{field}.offset")
            if len(stride) != len(shape):
                raise bad(f"has {len(shape)} sizes but {len(stride)} strides", f"{field}.stride")
            itemsize = DTYPES[e["dtype"]][1]
            last = offset + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else -1
            if (last + 1) * itemsize > base.end - base.start:
                raise bad(f"reaches element {last} of {e['view_of']!r}, past its "
                          f"{base.end - base.start} bytes", f"{field}.offset")  # fmt: skip
            entry = ViewEntry(name, e["group"], param, grad, e["view_of"], e["dtype"], shape,
                              stride, offset)  # fmt: skip
        if param and grad and entry.dtype and entry.dtype not in GRAD_DTYPES:
            raise bad(
                f"is a parameter of dtype {entry.dtype} that requires grad, which only "
                "floating-point and complex tensors can",
                f"{field}.requires_grad",
            )
        out.append(entry)
    return out


def layout_metadata(layout: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    # One key only, so that the safetensors library, which keeps __metadata__ in a hash map,
    # writes the same header when it rewrites this file.
    return {LAYOUT_KEY: json.dumps(layout, sort_keys=True)}
