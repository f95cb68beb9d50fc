"""The only module that imports torch_tensorrt (and, through it, TensorRT).

Three jobs, kept thin:

- ``compile``: the torch_tensorrt inputs derived from the manifest, then
  ``torch_tensorrt.dynamo.compile``; the manifest travels with the returned module.
- ``wire``: a compiled module (or a torch_tensorrt ExportedProgram with engines) -> the
  wired program, serialized, and its engines' packed facts. The wiring is torch_tensorrt's
  own exporter (the graph surgery ``torch_tensorrt.save`` uses); what the engines are is
  then read from the JSON, torch-free (``variants.py``), as for a ``.ep`` file.
- ``build_runner``: at load, engines -> a callable (needs a GPU and a matching TensorRT).
"""

from __future__ import annotations

import contextlib
import platform
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from ..errors import ArgumentTypeError, DeriveError, EngineError, MissingDependencyError
from ..format.manifest import Interface, IOSpec, Symbol, input_profile, parse_dim
from ..format.pytree import unflatten_call
from ..program.derive import RangeLike
from .packed_info import PackedEngine, read_packed
from .plan import io_tensors
from .select import Environment
from .variants import WiredProgram

_INSTALL_HINT = (
    "install torch_tensorrt for your TensorRT (pip install 'trtpack[tensorrt]'), or "
    "torch-tensorrt-rtx for TensorRT-RTX"
)


def import_torch_tensorrt() -> Any:
    try:
        import torch_tensorrt
    except ImportError as e:
        raise MissingDependencyError(
            f"torch_tensorrt is not installed ({e}); {_INSTALL_HINT}"
        ) from e
    except Exception as e:  # it queries the GPU at import and fails without one
        raise MissingDependencyError(
            f"torch_tensorrt is installed but cannot be imported here: {type(e).__name__}: {e}"
        ) from e
    return torch_tensorrt


def current_platform() -> str:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"{'win' if sys.platform.startswith('win') else 'linux'}_{machine}"


def probe_environment() -> Environment:
    """What this machine offers for running engines. Imports torch_tensorrt only when a GPU
    is present (without one, no engine can run and the answer is already known)."""
    plat = current_platform()
    if not torch.cuda.is_available():
        return Environment(platform=plat)
    from .lean import lean_runtime_version

    gpu = torch.cuda.get_device_capability()
    name = torch.cuda.get_device_name()
    base: dict[str, Any] = {"gpu": gpu, "gpu_name": name, "cuda_runtime": torch.version.cuda,
                            "platform": plat, "lean_runtime": lean_runtime_version()}  # fmt: skip
    try:
        tt = import_torch_tensorrt()
    except MissingDependencyError as e:
        return Environment(**base, torch_tensorrt_problem=str(e))
    from torch_tensorrt._features import ENABLED_FEATURES

    rtx = bool(getattr(ENABLED_FEATURES, "tensorrt_rtx", False))
    flavor = "tensorrt_rtx" if rtx else "tensorrt"
    trt = sys.modules.get("tensorrt_rtx" if rtx else "tensorrt") or sys.modules.get("tensorrt")
    runtimes = {flavor: trt.__version__} if trt is not None else {}
    return Environment(**base, runtimes=runtimes, torch_tensorrt=tt.__version__,
                       torch_tensorrt_flavor=flavor)  # fmt: skip


# --- compile -----------------------------------------------------------------------------------


@dataclass
class Compiled:
    """What ``trtpack.compile`` attaches to the module it returns (as ``_trtpack``), so that
    ``trtpack.save`` needs nothing more."""

    source: ExportedProgram
    interface: Interface
    #: the symbols of each optimization profile the engines were built with (profile 0 first)
    profiles: list[dict[str, Symbol]] | None = None


def torch_tensorrt_inputs(
    iface: Interface,
    overrides: Mapping[str, Any] | None = None,
    profiles: Sequence[Mapping[str, Symbol]] | None = None,
) -> tuple:
    """``(arg_inputs, kwarg_inputs)`` for torch_tensorrt, nested like the call, with
    min/opt/max from the manifest's symbols — or, with ``profiles``, one optimization profile
    per entry (each a symbol table). ``overrides`` replaces inputs by name."""
    tt = import_torch_tensorrt()
    overrides = dict(overrides or {})
    unknown = set(overrides) - {i.name for i in iface.inputs}
    if unknown:
        names = ", ".join(i.name for i in iface.inputs)
        raise DeriveError(
            f"input override for unknown input(s) {sorted(unknown)} (inputs: {names})"
        )

    def one(spec: IOSpec) -> Any:
        if spec.name in overrides:
            return overrides[spec.name]
        if spec.kind == "int" and spec.symbol is not None:
            expr = parse_dim(spec.symbol)
            return expr.value(iface.symbols[expr.symbol].opt)
        if not spec.is_tensor:
            return spec.value
        dtype = getattr(torch, spec.dtype or "")
        shape = spec.shape or ()
        if all(isinstance(d, int) for d in shape):
            return tt.Input(shape=list(shape), dtype=dtype, name=spec.name)
        profile, unbounded = input_profile(spec, iface.symbols)
        if unbounded is not None:
            sym = iface.symbols[unbounded]
            dim = next(d for d in shape if isinstance(d, str) and parse_dim(d).symbol == unbounded)
            raise DeriveError(
                f"input {spec.name!r} dim {dim!r}: symbol {unbounded!r} has no upper bound "
                f"(exported range [{sym.min}, inf]), and a TensorRT engine needs one. Pass "
                f"ranges={{{unbounded!r}: ({sym.min}, MAX)}} to trtpack.compile, or export "
                "with torch.export.Dim(..., max=MAX). (torch_tensorrt would silently use "
                "min x 4096.)"
            )
        if profiles:
            rows = [input_profile(spec, symbols)[0] for symbols in profiles]
            keys = ("min_shape", "opt_shape", "max_shape")
            shapes = [{key: [row[i] for row in r] for i, key in enumerate(keys)} for r in rows]
            return tt.Input(profiles=shapes, dtype=dtype, name=spec.name)
        lo, opt, hi = ([row[i] for row in profile] for i in range(3))
        return tt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dtype, name=spec.name)

    args, kwargs = unflatten_call(iface.input_tree, (one(spec) for spec in iface.inputs))
    return list(args), kwargs


def compile(
    ep: ExportedProgram | Mapping[str, ExportedProgram],
    *,
    ranges: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    profiles: Sequence[Mapping[str, RangeLike]] | Mapping[str, Any] | None = None,
    **settings: Any,
) -> Any:
    """``torch_tensorrt.dynamo.compile(ep)`` with the inputs derived from the program.
    ``profiles``: several optimization profiles, each ``{symbol: (min, max) | (min, max, opt)}``
    inside the (narrowed) exported ranges; a call runs on the first profile that covers it.

    ``ep`` may be a dict ``{entry point: ExportedProgram}`` (a multi-entry pack,
    docs/multi-entry.md): the result is ``{entry point: compiled module}``, which
    ``trtpack.save`` takes. An entry point that writes state in place, or reads state another
    writes (a KV cache), is left as its ExportedProgram, with a warning saying why (an
    engine cannot share that state). ``ranges``, ``inputs`` and ``profiles`` apply to every
    entry point, or, given as ``{entry point: value}``, to the entry points named; the
    settings apply to every entry point."""
    if isinstance(ep, Mapping):
        return _compile_entry_points(ep, ranges, inputs, profiles, settings)
    if isinstance(profiles, Mapping):
        raise ArgumentTypeError("profiles", "a list of {symbol: range} (a dict {entry point: "
                                "profiles} is for a dict of programs)", profiles)  # fmt: skip
    tt = import_torch_tensorrt()
    from ..program.derive import apply_ranges
    from ..program.serialize import derive_interface, dim_aliases

    iface = derive_interface(ep, ranges=ranges)
    if profiles:
        aliases = dim_aliases(ep)
        tables = [dict(apply_ranges(iface, p, aliases).symbols) for p in profiles]
    else:
        tables = [dict(iface.symbols)]
    # what torch_tensorrt builds: it raises a dynamic dim's min of 0 or 1 to 2, the program's
    # own range after torch.export's 0/1 specialization ("The compiled engine's min will be
    # 2"); the manifest records the engine's real profile, so the contract routes such calls
    tables = [{n: _engine_symbol(sym) for n, sym in t.items()} for t in tables]
    arg_inputs, kwarg_inputs = torch_tensorrt_inputs(iface, inputs, tables)
    module = tt.dynamo.compile(ep, arg_inputs=arg_inputs, kwarg_inputs=kwarg_inputs, **settings)
    module._trtpack = Compiled(source=ep, interface=iface, profiles=tables)
    return module


def _compile_entry_points(
    programs: Mapping[str, ExportedProgram],
    ranges: Mapping[str, Any] | None,
    inputs: Mapping[str, Any] | None,
    profiles: Sequence[Mapping[str, RangeLike]] | Mapping[str, Any] | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    from ..program.state import declare_state

    if not programs:
        raise ArgumentTypeError("ep", "a non-empty dict of entry point name -> program", programs)
    for name, ep in programs.items():
        if not isinstance(ep, ExportedProgram):
            raise ArgumentTypeError(f"ep[{name!r}]", "a torch.export.ExportedProgram", ep)
    names = list(programs)
    # per entry point: a dict whose keys are all entry points and whose values are dicts (for
    # one program, ranges map symbols to ranges and inputs map input names to tt.Input or
    # tensors); profiles, a list for one program, per entry point whenever a dict
    per_ranges = per_entry_point("ranges", ranges, names)
    per_inputs = per_entry_point("inputs", inputs, names)
    per_profiles = per_entry_point("profiles", profiles, names)
    state = declare_state(programs, names[0])
    out: dict[str, Any] = {}
    for name in names:
        reason = state.engine_refusal(name) if state is not None else None
        if reason is not None:
            warnings.warn(f"trtpack.compile: {reason}; left as its ExportedProgram", stacklevel=3)
            out[name] = programs[name]
            continue
        out[name] = compile(programs[name], ranges=per_ranges[name], inputs=per_inputs[name],
                            profiles=per_profiles[name], **settings)  # fmt: skip
    return out


def per_entry_point(arg: str, value: Any, names: Sequence[str]) -> dict[str, Any]:
    """``value`` for each entry point: ``value[name]`` when it is given per entry point, else
    ``value`` itself for every one."""
    if not isinstance(value, Mapping) or not value:
        return dict.fromkeys(names, value)
    if arg == "profiles":
        unknown = sorted(str(n) for n in value if n not in names)
        if unknown:
            raise DeriveError(f"profiles= names {unknown}, which are not entry points ({names})")
    elif not all(n in names and isinstance(v, Mapping) for n, v in value.items()):
        return dict.fromkeys(names, value)
    return {n: value.get(n) for n in names}


def _engine_symbol(sym: Symbol) -> Symbol:
    if sym.min >= 2 or (sym.max is not None and sym.max < 2):
        return sym
    return Symbol(2, sym.max, max(sym.opt, 2), sym.opt_source)


# --- wire: a compiled module -> its serialized wired program and engines ------------------


def is_compiled_module(obj: Any) -> bool:
    if not isinstance(obj, torch.fx.GraphModule):
        return False
    return any(type(m).__name__ == "TorchTensorRTModule" for m in obj.children())


def engine_constant_names(ep: ExportedProgram) -> list[str]:
    """Constants of ``ep`` that are TensorRT engines (torch_tensorrt's engine objects)."""
    names = []
    for fqn, obj in ep.constants.items():
        kind = type(obj).__name__
        if kind in ("EngineSerializer", "TRTEngine"):
            names.append(fqn)
        elif isinstance(obj, torch._C.ScriptObject) and "tensorrt" in str(obj._type()).lower():
            names.append(fqn)
    return names


@contextlib.contextmanager
def _engines_for_export(module: torch.fx.GraphModule) -> Iterator[None]:
    """torch_tensorrt's exporter takes each engine object as a constant. A module whose
    engines are not set up (lazy init) gets torch_tensorrt's own serializable stand-in
    holding the packed engine info, as torch_tensorrt.save does before writing."""
    from torch_tensorrt.dynamo.runtime._TRTEngine import EngineSerializer

    filled: list[Any] = []
    for child in module.children():
        if type(child).__name__ == "TorchTensorRTModule" and child.engine is None:
            child.engine = EngineSerializer(child._pack_engine_info())
            filled.append(child)
    try:
        yield
    finally:
        for child in filled:
            child.engine = None


def _packed_info(obj: Any, where: str) -> PackedEngine:
    if type(obj).__name__ == "EngineSerializer":
        return read_packed(list(obj.serialized_info), where=where)
    state = obj.__getstate__()  # torch.classes.tensorrt.Engine / TRTEngine: (info, class name)
    info = state[0] if isinstance(state, tuple) and len(state) == 2 else state
    return read_packed(list(info), where=where)


def wired_program(obj: Any) -> ExportedProgram:
    """A compiled module as the ExportedProgram torch_tensorrt.save would write: PyTorch
    subgraphs inlined, each engine a ``tensorrt::execute_engine`` call on an engine constant.
    A torch_tensorrt ExportedProgram already is one."""
    if isinstance(obj, ExportedProgram):
        return obj
    if not is_compiled_module(obj):
        raise DeriveError(
            f"cannot save a {type(obj).__name__}: trtpack.save takes a torch.export."
            "ExportedProgram, a module from trtpack.compile or torch_tensorrt.dynamo.compile, "
            "or a torch_tensorrt ExportedProgram with engines"
        )
    import_torch_tensorrt()
    from torch_tensorrt.dynamo._exporter import export

    with _engines_for_export(obj), warnings.catch_warnings():
        # the exporter attaches each engine after creating its get_attr node, and says so
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        return export(obj, use_legacy_exporter=True)


def wire(obj: Any) -> WiredProgram:
    """A compiled module (or a torch_tensorrt ExportedProgram) serialized as
    ``torch_tensorrt.save`` would write it: the wired program's graph JSON and weights (the
    engines left out) and each engine constant's packed facts. Everything else (bindings,
    profiles, the whole-graph rule) is read from that JSON by ``variants.py``, as for a
    ``.ep`` file."""
    from ..format.limits import loads
    from ..program.derive import SerializedProgram
    from ..program.serialize import program_members

    wired = wired_program(obj)
    fqns = engine_constant_names(wired)
    if not fqns:
        raise DeriveError("the module holds no TensorRT engine")
    engines = {fqn: _packed_info(wired.constants[fqn], where=f"engine {fqn}") for fqn in fqns}
    members, ref = program_members(wired, folder="wired", engines=frozenset(fqns))
    graph = members[ref.graph]
    assert isinstance(graph, bytes)
    where = "the compiled module's program"
    program = SerializedProgram(loads(graph, where, DeriveError), where=where)
    return WiredProgram(program, graph, members[ref.weights], engines)


# --- load: engines -> a runner (needs a GPU and a matching TensorRT) -----------------------------


def engine_io(plan: bytes, flavor: str) -> list[tuple[str, bool, str, tuple[int, ...]]]:
    """Each I/O tensor of a plan, ``(name, is_input, TensorRT dtype, shape)``, read by
    deserializing it with the installed TensorRT runtime (needs a GPU): how a described
    variant's bindings are confirmed before the first call."""
    import importlib

    trt = importlib.import_module("tensorrt_rtx" if flavor == "tensorrt_rtx" else "tensorrt")
    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineError(f"{trt.__name__} could not deserialize the plan")
    return io_tensors(engine, trt)


def engine_module(plan: bytes, spec_inputs: list[str], spec_outputs: list[str], *, name: str,
                  settings: Mapping[str, Any], device: torch.device) -> Any:  # fmt: skip
    """A torch_tensorrt runtime module for one engine. trtpack packs the engine info itself,
    for the installed torch_tensorrt's ABI, so a pack outlives torch_tensorrt ABI changes."""
    tt = import_torch_tensorrt()
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    compilation = settings.get("compilation", {})
    module_flags = settings.get("module", {})
    cs = CompilationSettings(
        device=tt.Device(f"cuda:{device.index or 0}"),
        hardware_compatible=bool(module_flags.get("hardware_compatible", False)),
        version_compatible=bool(compilation.get("version_compatible", False)),
    )
    return TorchTensorRTModule(
        serialized_engine=plan,
        input_binding_names=list(spec_inputs),
        output_binding_names=list(spec_outputs),
        name=name,
        settings=cs,
        requires_output_allocator=bool(module_flags.get("requires_output_allocator", False)),
    )
