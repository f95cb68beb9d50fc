"""torch_tensorrt's packed engine info, read as plain data. No torch, no torch_tensorrt.

torch_tensorrt describes an engine as a list of strings (``_pack_engine_info``; layout in
``torch_tensorrt/dynamo/runtime/_serialized_engine_layout.py``): ABI version, name, device,
engine bytes, binding names, flags, and a base64 *pickle* of its CompilationSettings. trtpack
reads that pickle with a restricted unpickler: only the classes torch_tensorrt puts there are
allowed, each mapped to an inert stand-in that records its fields; anything else is refused
by name. Nothing from torch_tensorrt is imported or executed.
"""

from __future__ import annotations

import base64
import binascii
import io
import pickle
from dataclasses import dataclass, field
from typing import Any

from ..errors import EngineError

# Fields of the packed list, by ABI version: each ABI appended fields to the previous one.
_FIELDS_V6 = (
    "abi", "name", "device", "engine", "inputs", "outputs", "hardware_compatible",
    "metadata", "platform",
)  # fmt: skip
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "6": _FIELDS_V6,
    "7": (*_FIELDS_V6, "requires_output_allocator"),
    "8": (*_FIELDS_V6, "requires_output_allocator", "resource_allocation"),
    "9": (*_FIELDS_V6, "requires_output_allocator", "resource_allocation", "native_multidevice"),
    "10": (*_FIELDS_V6, "requires_output_allocator", "resource_allocation", "native_multidevice",
           "aliased_io"),
}  # fmt: skip
KNOWN_ABIS = tuple(_LAYOUTS)


@dataclass(frozen=True)
class PackedEngine:
    """One engine as torch_tensorrt packed it, as plain data."""

    abi: str
    name: str
    engine: bytes
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    hardware_compatible: bool
    #: the build GPU as torch_tensorrt recorded it: (gpu id, major, minor, name)
    device: tuple[int, int, int, str] | None
    platform: str | None
    requires_output_allocator: bool = False
    #: CompilationSettings and the rest of the metadata pickle, as plain data
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        return self.metadata.get("settings", {})

    @property
    def compute_capability(self) -> str | None:
        if self.device is None or self.device[1] <= 0:
            return None
        return f"{self.device[1]}.{self.device[2]}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def read_packed(fields: list[Any] | tuple[Any, ...], *, where: str = "engine") -> PackedEngine:
    """Parse a packed engine info list. The engine may be raw bytes or base64 text (as
    torch_tensorrt writes it inside .ep files)."""
    if not fields:
        raise EngineError(f"{where}: empty torch_tensorrt engine info")
    abi = _text(fields[0])
    layout = _LAYOUTS.get(abi)
    if layout is None:
        raise EngineError(
            f"{where}: torch_tensorrt engine ABI {abi!r} is not one trtpack reads "
            f"(known: {', '.join(KNOWN_ABIS)}); it has {len(fields)} fields"
        )
    if len(fields) != len(layout):
        raise EngineError(
            f"{where}: torch_tensorrt engine ABI {abi} has {len(layout)} fields, "
            f"found {len(fields)}"
        )
    raw = dict(zip(layout, fields))
    engine = raw["engine"]
    if isinstance(engine, str):
        try:
            engine = base64.b64decode(engine, validate=True)
        except binascii.Error as e:
            raise EngineError(f"{where}: the engine field is not valid base64: {e}") from None
    return PackedEngine(
        abi=abi,
        name=_text(raw["name"]),
        engine=bytes(engine),
        input_names=tuple(n for n in _text(raw["inputs"]).split("%") if n),
        output_names=tuple(n for n in _text(raw["outputs"]).split("%") if n),
        hardware_compatible=_text(raw["hardware_compatible"]) == "1",
        device=_device(_text(raw["device"])),
        platform=_text(raw["platform"]) or None,
        requires_output_allocator=_text(raw.get("requires_output_allocator", "0")) == "1",
        metadata=decode_metadata(_text(raw["metadata"]), where=where),
    )


def _device(text: str) -> tuple[int, int, int, str] | None:
    parts = text.split("%")
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), "%".join(parts[4:])
    except (IndexError, ValueError):
        return None


# --- the restricted unpickler -----------------------------------------------------------------


class _Record:
    """Stand-in for an allowed class: keeps its constructor arguments and state as data."""

    args: tuple[Any, ...]
    state: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Record:
        # pickle builds objects with NEWOBJ(_EX), which calls __new__ alone
        self = super().__new__(cls)
        self.args = args
        self.state = dict(kwargs)
        return self

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state.update(state if isinstance(state, dict) else {"state": state})


def _record_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (_Record,), {"qualname": qualname})


_ENUMS = {
    "DeviceType": ("UNKNOWN", "GPU", "DLA"),
    "EngineCapability": ("STANDARD", "SAFETY", "DLA_STANDALONE"),
    "Platform": ("LINUX_X86_64", "LINUX_AARCH64", "WIN_X86_64", "UNKNOWN", "WIN_ARM64"),
    "dtype": ("unknown", "u8", "i8", "i32", "i64", "f16", "f32", "f64", "b", "bf16", "f8", "f4"),
    "memory_format": ("linear", "chw2", "hwc8", "chw4", "chw16", "chw32", "dhwc8", "cdhw32",
                      "hwc", "dla_linear", "dla_hwc4", "hwc16", "dhwc"),
}  # fmt: skip


def _enum(name: str) -> Any:
    members = _ENUMS[name]

    def make(value: Any) -> str:  # enums pickle as Class(value); auto() counts from 1
        if isinstance(value, int) and 1 <= value <= len(members):
            return members[value - 1]
        return f"{name}({value!r})"

    return make


class _SympyExpr(_Record):
    """sympy pickles expressions as Class(*args): rebuilt as their text."""

    def __str__(self) -> str:
        name = type(self).__name__
        if name == "Symbol":
            return str(self.args[0])
        if name == "Integer":
            return str(self.args[0])
        op = {"Add": " + ", "Mul": "*", "Pow": "**"}.get(name)
        if op:
            return "(" + op.join(str(a) for a in self.args) + ")"
        return f"{name}({', '.join(str(a) for a in self.args)})"


_TORCH_DTYPES = {
    "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8",
    "bool", "float8_e4m3fn", "float8_e5m2", "complex64", "complex128", "float", "half",
    "double", "long", "int",
}  # fmt: skip


def _allowed(module: str, name: str) -> Any:
    if module == "torch_tensorrt.dynamo._settings" and name == "CompilationSettings":
        return _record_class("CompilationSettings")
    if module == "torch_tensorrt._Device" and name == "Device":
        return _record_class("Device")
    if module == "torch_tensorrt._enums" and name in _ENUMS:
        return _enum(name)
    if module == "torch" and name in _TORCH_DTYPES:
        return name  # a dtype is recorded by its name
    if module in ("sympy.core.symbol", "sympy.core.numbers", "sympy.core.add",
                  "sympy.core.mul", "sympy.core.power") and name in (
                      "Symbol", "Integer", "Add", "Mul", "Pow"):  # fmt: skip
        return type(name, (_SympyExpr,), {})
    if module == "torch.utils._sympy.functions" and name in ("FloorDiv", "Mod"):
        return type(name, (_SympyExpr,), {})
    if module == "builtins" and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if module == "copyreg" and name == "_reconstructor":
        return _reconstructor
    return None


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, _Record)):
        raise pickle.UnpicklingError("copyreg._reconstructor of a class that is not allowed")
    return cls.__new__(cls)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return found


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only what torch_tensorrt's engine metadata contains."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _plain(value: Any) -> Any:
    """Stand-ins -> JSON-able data."""
    if isinstance(value, _SympyExpr):
        return str(value)
    if isinstance(value, _Record):
        out = {k: _plain(v) for k, v in sorted(value.state.items())}
        if type(value).__name__ == "Device":
            return f"{out.get('device_type', 'GPU')}:{out.get('gpu_id', 0)}"
        return out
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def decode_metadata(text: str, *, where: str = "engine") -> dict[str, Any]:
    """The metadata field as plain data: {"settings": {...}, "inout_symexprs": ..., ...}."""
    if not text:
        return {}
    try:
        raw = base64.b64decode(text.encode(), validate=True)
        value = restricted_loads(raw)
    except (binascii.Error, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError) as e:  # fmt: skip
        raise EngineError(f"{where}: the torch_tensorrt engine metadata was refused: {e}") from None
    if not isinstance(value, dict):
        raise EngineError(f"{where}: the engine metadata is a {type(value).__name__}, not a dict")
    return _plain(value)


# --- engines inside torch_tensorrt .ep files -----------------------------------------------------


class _EngineListUnpickler(pickle.Unpickler):
    """torch_tensorrt pickles an engine constant as ``_reconstruct_trt_engine(info_list)``.
    This reads that list and refuses anything else; the reconstruction is never called."""

    def find_class(self, module: str, name: str) -> Any:
        if (
            module == "torch_tensorrt.dynamo.runtime._TRTEngine"
            and name == "_reconstruct_trt_engine"
        ):
            return _engine_info
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def _engine_info(info: Any) -> list[Any]:
    if not isinstance(info, list):
        raise pickle.UnpicklingError("the engine info is not a list")
    return info


def read_engine_pickle(data: bytes, *, where: str) -> PackedEngine:
    """An engine constant from a torch_tensorrt .ep file, through the restricted unpickler."""
    try:
        fields = _EngineListUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError) as e:  # fmt: skip
        # MemoryError: a memo index such as 2**31 - 1 (LONG_BINPUT) makes the unpickler
        # allocate a memo that large
        raise EngineError(f"{where}: the torch_tensorrt engine constant was refused: "
                          f"{str(e) or type(e).__name__}") from None  # fmt: skip
    if not isinstance(fields, list):
        raise EngineError(
            f"{where}: not a torch_tensorrt engine constant ({type(fields).__name__})"
        )
    return read_packed(fields, where=where)


# --- what a pickle would import, without unpickling it ------------------------------------------

#: opcodes read from one pickle before the scan stops (a real weights pickle has far fewer)
MAX_PICKLE_OPCODES = 1_000_000


def pickle_globals(data: bytes | memoryview, *, where: str = "pickle") -> list[str]:
    """Every ``module.name`` a pickle imports (GLOBAL, INST, STACK_GLOBAL), in order, once each,
    by walking its opcodes (``pickletools.genops``): nothing is constructed, imported or
    called, so any input is safe and the work is linear in its size, capped at
    MAX_PICKLE_OPCODES. A malformed pickle is an EngineError naming ``where``."""
    import pickletools

    found: dict[str, None] = {}
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # the last values pushed, for STACK_GLOBAL's two strings
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(bytes(data))):
            if count >= MAX_PICKLE_OPCODES:
                raise EngineError(f"{where}: over {MAX_PICKLE_OPCODES} pickle opcodes; not read")
            name = op.name
            if name in ("GLOBAL", "INST"):
                found[str(arg).replace(" ", ".", 1)] = None
                recent.append(None)
            elif name == "STACK_GLOBAL":
                module, qualname = recent[-2:] if len(recent) >= 2 else (None, None)
                plain = isinstance(module, str) and isinstance(qualname, str)
                found[f"{module}.{qualname}" if plain else "(computed by the pickle)"] = None
                recent.append(None)
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg or 0)] = recent[-1] if recent else None
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(arg or 0)))
            elif (isinstance(arg, str) and "UNICODE" in name) or name == "STRING":
                recent.append(arg)
            else:
                recent.append(None)
            del recent[:-2]
    except (ValueError, TypeError, IndexError, KeyError, EOFError) as e:
        raise EngineError(f"{where}: not a readable pickle: {e}") from None
    return list(found)
