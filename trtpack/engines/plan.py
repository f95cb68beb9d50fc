"""What a TensorRT plan's header says, read without a GPU and without TensorRT.

Two flavours, told apart by the first four bytes:

- TensorRT-RTX (``b"vtrt"``): a 64-byte little-endian header, verified against engines built
  by tensorrt_rtx 1.4, 1.5, 1.6 and 1.7 and against the runtime's own header checks:

  ======  =====  ==========================================================================
  offset  width  field
  ======  =====  ==========================================================================
  0x00    4      magic ``vtrt``
  0x04    u32    0
  0x08    u64    number of sections (a 24-byte table of them follows the header)
  0x10    u64    total size of the plan, in bytes (a truncated plan no longer matches it)
  0x18    4×u8   TensorRT-RTX version: major, minor, patch, build
  0x1c    4      kind tag
  0x20    u64    compute-capability bit mask (see ``_RTX_CC_BITS``)
  0x28    i64    minimum CUDA driver version (0: no check)
  0x30    i64    CUDA runtime version the plan was built with (a runtime must be >=)
  0x38    i64    device bytes the weights need
  0x40    24×n   section table: u32 tag, u32 pad, u64 offset, i64 size
  end     u32    trailer 0x8b8d8b99, 8-byte aligned after the last section
  ======  =====  ==========================================================================

- Standard TensorRT >= 10 (``b"ftrt"``): the u32 at offset 4 is 0 and bytes 24..27 hold the
  version (what ``trtexec --getPlanVersionOnly`` reads; NVIDIA/TensorRT
  ``samples/common/sampleEngines.cpp``). Nothing else of that header is documented, so the
  compute capability of a standard plan comes from where it was built, not from the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError
from ..format.manifest import EngineSpec, Flavor, Target, Variant

RTX_MAGIC = b"vtrt"
TRT_MAGIC = b"ftrt"
_RTX_HEADER = 64
_RTX_TRAILER = 0x8B8D8B99

# bit -> compute capability, as the TensorRT-RTX runtime maps a device to a bit (1.5 to 1.7;
# 1.4 had no 12.1). The bit after the last one means "newer GPUs" (runs, suboptimally).
_RTX_CC_BITS = {0: "7.5", 1: "8.0", 2: "8.6", 3: "8.9", 4: "12.0", 5: "12.1"}
_RTX_CC_BITS_1_4 = {0: "7.5", 1: "8.0", 2: "8.6", 3: "8.9", 4: "12.0"}


@dataclass(frozen=True)
class PlanInfo:
    """The facts a plan's header gives."""

    flavor: Flavor
    trt_version: str  # "10.13.3.9", "1.6.1.120"
    #: compute capabilities the plan has kernels for ("8.0", ...); empty: not in the header
    compute_capabilities: tuple[str, ...] = ()
    #: the plan also runs on GPUs newer than any it names (TensorRT-RTX built without targets)
    future_gpus: bool = False
    #: the CUDA runtime version the plan needs at least, e.g. "13.4"; None: unknown or no check
    cuda_runtime: str | None = None
    weights_device_bytes: int | None = None


def parse_plan(data: bytes | memoryview, *, where: str = "engine") -> PlanInfo:
    """Read a plan's header. Raises EngineError for anything that is not a whole plan."""
    view = memoryview(data).cast("B")
    n = len(view)
    magic = bytes(view[:4])
    if magic == RTX_MAGIC:
        return _parse_rtx(view, where)
    if magic == TRT_MAGIC:
        if n < 28:
            raise EngineError(f"{where} is truncated: {n} bytes, less than a plan header")
        (serialization,) = struct.unpack_from("<I", view, 4)
        if serialization != 0:
            raise EngineError(
                f"{where} is a TensorRT plan of serialization version {serialization}, from "
                "TensorRT before 10.0, whose header trtpack cannot read"
            )
        return PlanInfo(flavor="tensorrt", trt_version=".".join(str(b) for b in view[24:28]))
    shown = magic if n else b""
    raise EngineError(
        f"{where} is not a TensorRT plan: it starts with {shown!r}, expected b'ftrt' "
        "(TensorRT) or b'vtrt' (TensorRT-RTX)"
    )


def _parse_rtx(view: memoryview, where: str) -> PlanInfo:
    n = len(view)
    if n < _RTX_HEADER:
        raise EngineError(f"{where} is truncated: {n} bytes, less than the 64-byte header")
    _, sections, total = struct.unpack_from("<IQQ", view, 4)
    version = tuple(view[0x18:0x1C])
    mask, _driver, cuda_runtime, weights = struct.unpack_from("<Qqqq", view, 0x20)
    if total != n:
        raise EngineError(
            f"{where} is damaged: its header says {total} bytes, it has {n}"
            + (" (truncated)" if n < total else "")
        )
    table_end = _RTX_HEADER + 24 * sections
    if sections > 1024 or table_end > n:
        raise EngineError(f"{where} is damaged: its section table does not fit")
    end = table_end
    for i in range(sections):
        _, _, offset, size = struct.unpack_from("<4sIQq", view, _RTX_HEADER + 24 * i)
        if offset < end or size < 0 or offset + size > n:
            raise EngineError(f"{where} is damaged: section {i} lies outside the plan")
        end = offset + size
    trailer = (end + 7) // 8 * 8
    if trailer + 4 != n or struct.unpack_from("<I", view, trailer)[0] != _RTX_TRAILER:
        raise EngineError(f"{where} is damaged: the plan does not end where its sections do")
    bits = _RTX_CC_BITS_1_4 if version[:2] == (1, 4) else _RTX_CC_BITS
    ccs = tuple(cc for bit, cc in sorted(bits.items()) if mask >> bit & 1)
    future = bool(mask >> len(bits) & 1)
    return PlanInfo(
        flavor="tensorrt_rtx",
        trt_version=".".join(str(b) for b in version),
        compute_capabilities=ccs,
        future_gpus=future,
        cuda_runtime=f"{cuda_runtime // 1000}.{cuda_runtime % 1000 // 10}"
        if cuda_runtime
        else None,
        weights_device_bytes=weights,
    )


def check_variant_plans(view: Callable[[str], memoryview], variant: Variant, where: str) -> None:
    """Each plan of ``variant`` (``view(member)`` gives its bytes) is a whole plan whose header
    agrees with the variant's target: what ``verify`` and ``load`` check before TensorRT."""
    for engine in variant.engines:
        info = parse_plan(view(engine.member), where=f"{where}engine member {engine.member!r}")
        check_plan_target(info, variant.target, engine.member)


def check_plan_target(info: PlanInfo, target: Target, member: str) -> None:
    """The plan's header says what the variant's target says: same flavour and version and,
    where the header names GPUs (TensorRT-RTX), the same GPUs. A variant whose target lies
    about its plans would be chosen for GPUs the plans cannot run on."""
    where = f"engine member {member!r}"
    checks: list[tuple[str, object, object]] = [
        ("flavor", target.flavor, info.flavor),
        ("trt_version", target.trt_version, info.trt_version),
    ]
    if info.flavor == "tensorrt_rtx":
        checks += [
            ("compute_capabilities", tuple(target.compute_capabilities),
             info.compute_capabilities),
            ("future_gpus", bool(target.future_gpus), info.future_gpus),
        ]  # fmt: skip
    for field, expected, got in checks:
        if expected != got:
            raise EngineError(
                f"{where}: the plan's header says {field} {got!r}, the variant's target says "
                f"{expected!r}",
                member=member,
                field=field,
                expected=expected,
                got=got,
            )


def missing_names(plan: bytes | memoryview, names: list[str]) -> list[str]:
    """The binding names a TensorRT-RTX plan does not hold. Such a plan stores each I/O
    tensor's name as a NUL-preceded record and quotes it (``"mask.1"``) in its kernel
    descriptions (seen with tensorrt_rtx 1.6; a name inside a longer one does not count:
    ``output`` is not in ``output0``). A name missing both ways cannot be a binding — what can
    be checked of a description without a GPU; one that is present is not proven a binding
    (only a GPU runtime lists them). Standard TensorRT plans (none can be built here to see
    how they store names) are not searched: every name counts as present."""
    import re

    data = bytes(plan)
    if data[:4] != RTX_MAGIC:
        return []
    missing = []
    for n in names:
        name = re.escape(n.encode())
        record = rb"\x00" + name + rb"(?![A-Za-z0-9_.])"
        quoted = rb'"' + name + rb'(?:\.\d+)?"'
        if not re.search(record, data) and not re.search(quoted, data):
            missing.append(n)
    return missing


def quoted_tensor_names(plan: bytes | memoryview) -> list[str]:
    """The tensor names a TensorRT-RTX plan quotes in its kernel descriptions as ``"NAME.N"``,
    its internal ones (``__mye...``) left out: in the plans seen (tensorrt_rtx 1.6) exactly its
    I/O bindings, read without a GPU; still only what the bytes suggest (a GPU runtime lists
    the real ones, and the direction of each is not in them). Empty for a standard plan,
    whose bytes are not searched."""
    import re

    data = bytes(plan)
    if data[:4] != RTX_MAGIC:
        return []
    found = re.findall(rb'"([A-Za-z_][A-Za-z0-9_.]{0,200})\.\d+"', data)
    return sorted({n.decode() for n in found if not n.startswith(b"__")})


def check_described_names(
    plan: bytes | memoryview, inputs: list[str], outputs: list[str], *, where: str
) -> None:
    """Refuse a description whose binding names the plan cannot have (EngineError, with
    ``member``/``expected``/``got`` fields: where, the names, the ones not found)."""
    for kind, names in (("input", inputs), ("output", outputs)):
        gone = missing_names(plan, names)
        if gone:
            raise EngineError(
                f"{where}: {kind}(s) {gone} do not occur in the plan, so they cannot be its "
                f"bindings; check the names of the description (the engine's own {kind} names)",
                member=where,
                expected=names,
                got=gone,
            )


#: TensorRT's DataType names (``str(trt.DataType.HALF)`` is ``DataType.HALF``) -> manifest dtypes
TRT_DTYPES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn",
}  # fmt: skip


def io_tensors(engine: Any, trt: Any) -> list[tuple[str, bool, str, tuple[int, ...]]]:
    """A deserialized engine's I/O tensors, ``(name, is_input, TensorRT dtype, shape)``, as
    ``bindings_mismatch`` compares them (``trt``: the TensorRT module that made ``engine``)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        out.append((name, is_input, str(engine.get_tensor_dtype(name)),
                    tuple(engine.get_tensor_shape(name))))  # fmt: skip
    return out


def bindings_mismatch(
    described: EngineSpec, actual: list[tuple[str, bool, str, tuple[int, ...]]]
) -> str | None:
    """How an engine's real I/O tensors — ``(name, is_input, TensorRT dtype, shape with -1 for
    dynamic dims)`` as a GPU runtime lists them — differ from its described bindings, or None.
    Names, direction, dtypes, ranks and static dims are compared."""
    real = {
        name: (is_input, dtype.rsplit(".", 1)[-1], shape) for name, is_input, dtype, shape in actual
    }
    for is_input, bindings in ((True, described.inputs), (False, described.outputs)):
        kind = "input" if is_input else "output"
        names = [n for n, (inp, _, _) in real.items() if inp is is_input]
        if sorted(names) != sorted(b.name for b in bindings):
            return (f"the engine's {kind}s are {sorted(names)}, the description says "
                    f"{sorted(b.name for b in bindings)}")  # fmt: skip
        for b in bindings:
            _, dtype, shape = real[b.name]
            got = TRT_DTYPES.get(dtype, dtype.lower())
            if got != b.dtype:
                return f"{kind} {b.name!r} is {got} in the engine, {b.dtype} in the description"
            if len(shape) != len(b.shape):
                return (f"{kind} {b.name!r} has {len(shape)} dims in the engine, "
                        f"{len(b.shape)} in the description")  # fmt: skip
            for i, (have, want) in enumerate(zip(shape, b.shape)):
                if isinstance(want, int) and have not in (want, -1):
                    return f"{kind} {b.name!r} dim {i} is {have} in the engine, {want} described"
    return None
