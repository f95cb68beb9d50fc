"""ExportedProgram <-> pack members, with no pickle in either direction.

- ``program/graph.json``: torch.export's own JSON serialization of the graph, signature,
  range constraints and module call graph (``torch._export.serde``), without weights.
- ``program/weights.safetensors``: every parameter, buffer and tensor constant, as a standard
  safetensors file. Tensors that share storage are stored once; the others are recorded as
  views (dtype, shape, stride, offset) in the file's ``__metadata__``.

The safetensors layout is simple (an 8-byte length, a JSON header, raw bytes), and trtpack
handles it directly in both directions: saving streams the header and then each tensor's own
memory into the pack (the ``safetensors`` library builds the whole file as one bytes object
first: twice the model in RAM), and loading maps the member without copying it (the library
reads only whole files by path). Tests check both against the ``safetensors`` library.

Where the loaded tensors live: on the CPU, by default, in memory of their own, read from the
file once (and hashed there), so that a served pack survives anything later done to its file;
``mmap=True`` makes them view a private map of the file instead (no copy; see
``trtpack.load``). On a GPU the weights are read piece by piece into pinned staging buffers,
each piece hashed and copied on from the same buffer (``program.staging``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch.export import ExportedProgram

from ..errors import (
    ArgumentTypeError,
    DeriveError,
    IntegrityError,
    MigrationError,
    ProgramError,
)
from ..format.container import Chunks, PackReader
from ..format.manifest import Interface, Manifest, Member, ProgramRef
from ..format.weights import (
    RawTensor,
    layout_metadata,
    parse_layout,
    parse_safetensors,
    safetensors_source,
)
from . import graph_json, graph_serde
from .derive import RangeLike, apply_ranges, derive_from_graph, keep_opts, recorded_names
from .gcpause import paused_gc
from .treespec import register_namedtuples, restore_namedtuples


def serde_schema_version() -> tuple[int, int]:
    from torch._export.serde.schema import SCHEMA_VERSION

    return (int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1]))


# --- the interface: serialize, then the one torch-free derivation ---------------------------

#: ``graph_module.meta`` key where ``trtpack.load`` records the interface of the pack a
#: program came from, so that saving the loaded program keeps the opts its manifest chose.
LOADED_FROM_KEY = "trtpack_interface"


def derive_interface(
    ep: ExportedProgram,
    *,
    ranges: Mapping[str, RangeLike] | None = None,
    graph: bytes | None = None,
) -> Interface:
    """Describe ``ep``'s inputs, outputs and dynamic dims: ``ep`` is serialized as the pack
    stores it (``graph``: those bytes, when the caller has them) and the interface is read from
    that JSON by ``derive.derive_from_graph``, the function ``migrate`` uses for ``.pt2`` files.
    ``ranges`` narrows symbols (keyed by manifest symbol name or by the user's ``Dim`` name)."""
    if not isinstance(ep, ExportedProgram):
        raise ArgumentTypeError("ep", "a torch.export.ExportedProgram", ep)
    if graph is None:
        graph = program_graph(ep)
    iface, by_torch = derive_with_names(ep, graph)
    if ranges:
        generated = derive_from_graph(graph, where="the ExportedProgram")[1]
        iface = apply_ranges(iface, ranges, dim_aliases(ep, by_torch, generated))
    return iface


def derive_with_names(
    ep: ExportedProgram, graph: bytes | dict[str, Any]
) -> tuple[Interface, dict[str, str]]:
    """The interface derived from ``graph`` (``ep``'s JSON, or that JSON parsed), and torch's
    symbol names -> the manifest's (what ``dim_aliases`` needs to accept the user's ``Dim``
    names). Symbols are named by the user's ``Dim`` names where this live program knows them
    (issue 22.7)."""
    recorded = ep.graph_module.meta.get(LOADED_FROM_KEY)
    try:
        # the user's Dim names, where this live program knows them (its shape environment);
        # a program loaded from a pack keeps the names its manifest gave
        iface, by_torch = derive_from_graph(graph, where="the ExportedProgram")
        if isinstance(recorded, Interface):
            user = recorded_names(iface, by_torch, recorded)
        else:
            user = {t: u for u, ts in _shape_env_dim_names(ep).items() for t in ts}
        if user:
            iface, by_torch = derive_from_graph(graph, where="the ExportedProgram",
                                                user_names=user)  # fmt: skip
    except MigrationError as e:
        raise DeriveError(str(e)) from None
    if isinstance(recorded, Interface):
        iface = keep_opts(iface, recorded)
    return iface, by_torch


def dim_aliases(
    ep: ExportedProgram,
    by_torch: Mapping[str, str] | None = None,
    generated: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The user's ``Dim`` names of ``ep`` (the manifest's own names at save) and the generated
    ``<input>_dim<i>`` names (what migrate writes, and what trtpack before format 1.4 wrote at
    save) -> the manifest's symbol names: accepted as keys of ``ranges=`` and ``profiles=``.
    ``by_torch`` / ``generated``: torch symbol -> manifest / generated name, when known."""
    if by_torch is None or generated is None:
        graph = program_graph(ep)
        if generated is None:
            generated = derive_from_graph(graph, where="the ExportedProgram")[1]
        if by_torch is None:
            named = {t: u for u, ts in _shape_env_dim_names(ep).items() for t in ts}
            by_torch = derive_from_graph(graph, where="the ExportedProgram", user_names=named)[1]
    aliases = {g: by_torch[t] for t, g in generated.items() if t in by_torch}
    for user, torch_names in _shape_env_dim_names(ep).items():
        found = next((by_torch[t] for t in torch_names if t in by_torch), None)
        if found is not None:
            aliases[user] = found
    return aliases


def _shape_env_dim_names(ep: ExportedProgram) -> dict[str, list[str]]:
    """The user's Dim name -> the torch symbols it named, from the shape environment of a
    freshly exported program (one Dim may name several symbols before export unified them):
    the manifest's symbol names at save and compile, and keys of ``ranges=``."""
    env = None
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        sizes = val.shape if isinstance(val, torch.Tensor) else [val]
        env = next((d.node.shape_env for d in sizes if isinstance(d, torch.SymInt)), None)
        if env is not None:
            break
    if env is None:
        return {}
    debug = getattr(env, "source_name_to_debug_name", {}) or {}
    out: dict[str, list[str]] = {}
    for sym, sources in getattr(env, "var_to_sources", {}).items():
        for src in sources:
            name = src.name() if callable(src.name) else src.name
            candidate = debug.get(name)
            if candidate is None and type(src).__name__ == "ConstantSource":
                candidate = name  # the root of a derived Dim carries its name directly
            if candidate and candidate.isidentifier():
                out.setdefault(candidate, []).append(str(sym))
                break
    # torch 2.14's shapes API (torch.fx.experimental.dynamic_spec): ShapeVar("B") binds a spec
    # symbol ``B#0`` to the program's symbol (unbacked: ``u0``), with no source to name it by
    spec_symbols = getattr(env, "_spec_symbol_to_compile_symbol", None) or {}
    for spec_sym, sym in spec_symbols.items():
        candidate = str(spec_sym).split("#", 1)[0]
        if candidate.isidentifier() and getattr(sym, "is_Symbol", False):
            out.setdefault(candidate, []).append(str(sym))
    return out


# --- saving ------------------------------------------------------------------------------


def program_graph(ep: ExportedProgram) -> bytes:
    """torch.export's JSON of ``ep`` — what the pack stores and what the interface is derived
    from (the namedtuples of its call are registered for serialization first)."""
    # a deserialized program whose module call graph lost its signature: torch's call_spec
    # then fails (no signature) or holds None (no spec)
    signature = ep.module_call_graph[0].signature if ep.module_call_graph else None
    for what in ("in_spec", "out_spec"):
        spec = getattr(signature, what, None)
        if spec is None:
            raise ProgramError(f"the program has no call signature ({what} is missing)")
        register_namedtuples(spec)
    try:
        return serialize_graph(ep)
    except Exception as e:
        raise ProgramError(f"torch.export could not serialize the program: {e}") from e


def program_members(
    ep: ExportedProgram,
    *,
    folder: str = "program",
    engines: frozenset[str] = frozenset(),
    graph: bytes | None = None,
    shared: SharedWeights | None = None,
    custom_ops: Sequence[str] | None = None,
) -> tuple[dict[str, bytes | Chunks], ProgramRef]:
    """The members that store ``ep`` under ``folder``, and the manifest's reference to them.
    ``engines`` names constants that are TensorRT engines: the graph refers to them by name,
    and they are stored as plan members of their own, not here. ``graph``: ``ep``'s JSON when
    the caller has it already (``save`` derives the interface from the same bytes), and
    ``custom_ops`` the custom operators it calls, when the caller has them (sorted).
    ``shared``: another program's weights (format 1.4 entry points), whose equal tensors are
    referenced, not stored again."""
    _refuse_unstorable(ep, engines)
    if graph is None:
        graph = program_graph(ep)
    weights = _weights_source(ep, engines, shared)
    ref = ProgramRef(
        graph=f"{folder}/graph.json",
        weights=f"{folder}/weights.safetensors",
        serde_schema=serde_schema_version(),
        custom_ops=graph_custom_ops(graph) if custom_ops is None else tuple(custom_ops) or None,
    )
    return {ref.graph: graph, ref.weights: weights}, ref


def graph_custom_ops(graph: bytes | Any) -> tuple[str, ...] | None:
    """The custom operators a program's JSON calls, as the manifest records them (None: none)."""
    from .graph_check import custom_ops

    if isinstance(graph, (bytes, str)):
        with paused_gc():
            graph = json.loads(graph)
    found = custom_ops(graph)
    return tuple(found) or None


_SKIP = threading.local()
_SKIP_LOCK = threading.Lock()


def _install_canonicalize_skip(serde: Any) -> None:
    """torch's serializer canonicalizes the program it has just built only to test that the
    canonical form is well defined and then drops the result ("Test canonical form is well
    defined"); the deep copy that starts it is most of a big graph's save (about 60% at
    10,000 nodes). The JSON is the same without it. Skipped only in a thread inside
    serialize_graph; any other caller of ``canonicalize`` gets torch's own."""
    with _SKIP_LOCK:
        original = getattr(serde, "canonicalize", None)
        if original is None or getattr(original, "_trtpack_skip", False):
            return

        def canonicalize(ep: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(_SKIP, "active", False):
                return ep
            return original(ep, *args, **kwargs)

        canonicalize._trtpack_skip = True  # type: ignore[attr-defined]
        serde.canonicalize = canonicalize


def serialize_graph(ep: ExportedProgram) -> bytes:
    """torch.export's JSON of the program, without weights, constants or example inputs."""
    from torch._export.serde import serialize as serde

    _install_canonicalize_skip(serde)
    _SKIP.active = True
    try:
        with paused_gc():  # torch builds hundreds of thousands of objects (program/gcpause.py)
            return _serialize_graph(serde, ep)
    finally:
        _SKIP.active = False


def _serialize_graph(serde: Any, ep: ExportedProgram) -> bytes:
    if not graph_json.available(serde) or not all(
        hasattr(serde, name)
        for name in ("ExportedProgramSerializer", "_enable_graph_inputs_of_type_nn_module")
    ):
        return _serialized(serde, serde.serialize, ep).exported_program
    # torch's serialize(), whose last step (dataclasses -> JSON) is graph_json's, same bytes;
    # the program's dataclasses made by graph_serde where it follows this torch
    with serde._enable_graph_inputs_of_type_nn_module(ep.example_inputs):
        if graph_serde.available(serde):
            program = graph_serde.serialized_program(serde, ep)
        else:
            serializer = serde.ExportedProgramSerializer().serialize
            program = _serialized(serde, serializer, ep).exported_program
    return graph_json.to_json_bytes(serde, program)


def _serialized(serde: Any, serialize: Any, ep: ExportedProgram) -> Any:
    """``serialize(ep)`` (torch's ``serialize`` or ``ExportedProgramSerializer.serialize``)
    without weights, constants or example inputs."""
    try:
        return serialize(
            ep,
            serialize_state_dict=False,
            serialize_constants=False,
            serialize_example_inputs=False,
        )
    except TypeError:
        pass
    # torch < 2.12 always pickles weights, constants and example inputs alongside the JSON;
    # trtpack stores those itself, so the pickling is skipped rather than paid for and dropped.
    original = serde.serialize_torch_artifact
    serde.serialize_torch_artifact = lambda *args, **kwargs: b""
    try:
        return serialize(ep)
    finally:
        serde.serialize_torch_artifact = original


def _refuse_unstorable(ep: ExportedProgram, engines: frozenset[str]) -> None:
    for name, value in ep.constants.items():
        if not isinstance(value, torch.Tensor) and name not in engines:
            raise ProgramError(
                f"constant {name!r} is a {type(value).__name__} (a custom object); a pack stores "
                "plain tensors only. For torch_tensorrt programs with embedded engines use "
                "trtpack.save on the compiled module, or trtpack migrate."
            )
    tensors = [(k, v) for k, v in ep.constants.items() if k not in engines]
    for name, value in [*ep.state_dict.items(), *tensors]:
        if (
            type(value) not in (torch.Tensor, torch.nn.Parameter)
            and type(value.data) is not torch.Tensor
        ):
            raise ProgramError(
                f"tensor {name!r} is a {type(value).__name__} (a tensor subclass); trtpack stores "
                "plain tensors only, without pickle"
            )


class SharedWeights:
    """The default program's tensors, which another entry point's weights member references
    by name instead of storing them again (format 1.4). A tensor is shared when it has the
    same name, group, parameter flags, dtype, shape, layout and bytes; a tensor some entry
    point writes in place (``mutable``) only when it is also the same storage, as it is in
    programs exported from one module: sharing it shares the state."""

    def __init__(self, ep: ExportedProgram, member: str, mutable: frozenset[str]) -> None:
        self.member = member
        self.mutable = mutable
        self.tensors: dict[str, tuple[str, torch.Tensor]] = {
            **{k: ("state_dict", v) for k, v in ep.state_dict.items()},
            **{k: ("constants", v) for k, v in ep.constants.items() if isinstance(v, torch.Tensor)},
        }

    def holds(self, group: str, name: str, t: torch.Tensor) -> bool:
        entry = self.tensors.get(name)
        if entry is None or entry[0] != group:
            return False
        mine = entry[1]
        if isinstance(mine, torch.nn.Parameter) != isinstance(t, torch.nn.Parameter) or (
            isinstance(t, torch.nn.Parameter) and mine.requires_grad != t.requires_grad
        ):
            return False

        def geometry(x: torch.Tensor) -> tuple:
            return (x.dtype, x.shape, x.stride(), x.storage_offset(), x.device)

        if geometry(mine) != geometry(t):
            return False
        if name in self.mutable:
            return t.numel() == 0 or (
                mine.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
            )
        if mine.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            return True
        as_bytes = [x.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for x in (mine, t)]
        return bool(torch.equal(*as_bytes))


def _weights_source(
    ep: ExportedProgram,
    engines: frozenset[str] = frozenset(),
    shared: SharedWeights | None = None,
) -> Chunks:
    """One safetensors file; storage shared between tensors is written once, and tensors
    ``shared`` holds are referenced (``from``), not written."""
    named: list[tuple[str, str, torch.Tensor]] = [
        *(("state_dict", k, v) for k, v in ep.state_dict.items()),
        *(("constants", k, v) for k, v in ep.constants.items() if k not in engines),
    ]
    groups: dict[tuple[Any, int], list[tuple[str, str, torch.Tensor]]] = {}
    for group, name, t in named:
        if t.device.type == "meta":
            raise ProgramError(f"tensor {name!r} is on the meta device and has no data to store")
        key = (t.device, t.untyped_storage().data_ptr()) if t.numel() else (name, id(t))
        groups.setdefault(key, []).append((group, name, t))

    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for key in list(groups):
        members = groups[key]
        # a storage is referenced only as a whole: its tensors keep sharing memory at load
        held = [n for g, n, t in members if shared is not None and shared.holds(g, n, t)]
        if shared is not None and held and len(held) < len(members):
            state = sorted(n for _, n, _ in members if n in shared.mutable)
            if state:  # a copy would be written: this entry point would not see the state
                others = sorted(n for _, n, _ in members if n not in held)
                raise ProgramError(
                    f"the state tensor {state[0]!r} is one storage with {others} in this "
                    "entry point's program, names the default entry point's program does not "
                    "have; state is shared by name, so this entry point would read a copy. "
                    "Reach the state under its one name in every entry point (e.g. read the "
                    "registered buffer, not a tensor held elsewhere that torch.export lifts "
                    "as a constant of another name)"
                )
        if shared is not None and len(held) == len(members):
            for group, name, t in members:
                entry: dict[str, Any] = {"group": group, "from": shared.member}
                if isinstance(t, torch.nn.Parameter):
                    entry["param"] = True
                    entry["requires_grad"] = bool(t.requires_grad)
                layout[name] = entry
            del groups[key]
    for members in groups.values():
        base_name, base = _complete_member(members)
        if base is None:  # no single tensor covers the storage: store the raw storage bytes
            base_name = f"__storage__.{len(tensors)}"
            storage = members[0][2].untyped_storage()
            base = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
        tensors[base_name] = base.detach().cpu()
        for group, name, t in members:
            entry = {"group": group}
            if isinstance(t, torch.nn.Parameter):
                entry["param"] = True
                entry["requires_grad"] = bool(t.requires_grad)
            if name != base_name:
                entry["view_of"] = base_name
                entry["dtype"] = str(t.dtype).removeprefix("torch.")
                entry["shape"] = list(t.shape)
                entry["stride"] = list(t.stride())
                entry["offset"] = int(t.storage_offset())
            layout[name] = entry
    return safetensors_chunks(tensors, layout_metadata(layout))


def safetensors_chunks(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Chunks:
    """A safetensors file of torch tensors, streamed from their memory (nothing copied)."""
    raw = []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        # t's own memory, as a buffer (numpy exposes it without a copy)
        data: Any = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        raw.append(RawTensor(name, _dtype_name(t.dtype), tuple(t.shape), data))
    return safetensors_source(raw, metadata)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _complete_member(members: list[tuple[str, str, torch.Tensor]]) -> tuple[str, Any]:
    for _, name, t in members:
        nbytes = t.numel() * t.element_size()
        if t.is_contiguous() and t.storage_offset() == 0 and nbytes == t.untyped_storage().nbytes():
            return name, t
    return "", None


# --- loading -----------------------------------------------------------------------------


def read_safetensors(buf: memoryview, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors viewing ``buf`` (no copy), and the file's ``__metadata__``; the header is
    parsed and bounds-checked by :func:`trtpack.format.weights.parse_safetensors`."""
    stored, metadata = parse_safetensors(buf, where)
    tensors = {}
    for name, t in stored.items():
        dtype = getattr(torch, t.dtype)
        if t.end == t.start:
            tensors[name] = torch.empty(t.shape, dtype=dtype)
        else:
            count = (t.end - t.start) // dtype.itemsize
            tensors[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=t.start).view(
                t.shape
            )
    return tensors, metadata


def weights_owned(device: torch.device | None, mmap: bool) -> bool:
    """Whether a load reads the weights into memory of their own (``PackReader.owned``)
    rather than viewing the file's map: on the CPU unless ``mmap`` opts out."""
    return weights_read(device, mmap) == "owned"


def weights_read(device: torch.device | None, mmap: bool) -> str:
    """How a load reads the weights: ``"owned"`` (CPU: into memory of their own, hashed as
    read), ``"mapped"`` (CPU with ``mmap``: the tensors view the file's map, hashed beside the
    load; another device with ``TRTPACK_GPU_STAGING=0``: the tensors copied on from the map,
    hashed beside the load), or ``"streamed"`` (another device, the default: piece by piece
    through pinned staging buffers, each piece hashed and copied on from the same buffer,
    ``program.staging``). On the H100 (``tools/gpu_bench_cuda.sh``, docs/cuda.md) the streamed
    load of a 4 GiB MLP took 0.582 s against 0.741 s mapped (the safetensors floor 0.614 s), and
    it copies exactly the bytes it hashed; ``TRTPACK_GPU_STAGING=0`` keeps the mapped one."""
    if device is not None and device.type != "cpu":
        return "mapped" if os.environ.get(GPU_STAGING) == "0" else "streamed"
    return "mapped" if mmap else "owned"


#: the environment variable that, set to 0, keeps a GPU load on the mapped path (weights_read)
GPU_STAGING = "TRTPACK_GPU_STAGING"


def _weights_buffer(reader: PackReader, name: str, device: torch.device | None,
                    mmap: bool) -> memoryview:  # fmt: skip
    return reader.owned(name) if weights_owned(device, mmap) else reader.view(name)


def load_state(
    reader: PackReader,
    name: str,
    device: torch.device | None,
    mmap: bool = False,
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and constants of weights member ``name``, on ``device``, read the way
    ``weights_read`` says."""
    if weights_read(device, mmap) == "streamed":
        from .staging import weights_to_device

        assert device is not None
        stored, metadata, stored_at = weights_to_device(reader, name, device)
        return _assemble_state(stored, metadata, stored_at, name, shared)
    return _rebuild_state(_weights_buffer(reader, name, device, mmap), name, device, shared)


def _rebuild_state(
    buf: memoryview,
    where: str,
    device: torch.device | None,
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and constants, on ``device``; views are rebuilt on the moved storage,
    so tensors that shared memory in the program still share it. ``shared``: weights member
    -> its loaded tensors, for entries that reference another member (format 1.4): those are
    the same tensor objects, so state written by one entry point is read by the others."""
    stored, metadata = read_safetensors(buf, where)
    if device is not None and device.type != "cpu":
        stored = {name: t.to(device) for name, t in stored.items()}
    stored_at, _ = parse_safetensors(buf, where)
    return _assemble_state(stored, metadata, stored_at, where, shared)


def _assemble_state(
    stored: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    stored_at: Mapping[str, Any],
    where: str,
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The program's tensors from the stored ones and the layout metadata (views, shared
    tensors, parameters)."""
    state_dict: dict[str, torch.Tensor] = {}
    constants: dict[str, Any] = {}
    for e in parse_layout(metadata, stored_at, where):
        if e.from_member is not None:
            source = (shared or {}).get(e.from_member)
            if source is None or e.name not in source:
                raise IntegrityError(
                    f"{where}: tensor {e.name!r} is the one in {e.from_member!r}, which "
                    + ("does not hold it" if source is not None else "is not a loaded program's "
                       "weights member"),
                    member=where, field=f"trtpack.tensors.{e.name}.from",
                )  # fmt: skip
            (state_dict if e.group == "state_dict" else constants)[e.name] = source[e.name]
            continue
        if e.view_of is not None:
            base = stored[e.view_of]
            t = torch.empty(0, dtype=getattr(torch, e.dtype), device=base.device).set_(
                base.untyped_storage(), e.offset, e.shape, e.stride
            )
        else:
            t = stored[e.name]
        if e.param:
            t = torch.nn.Parameter(t, requires_grad=e.requires_grad)
        (state_dict if e.group == "state_dict" else constants)[e.name] = t
    return state_dict, constants


def load_program(
    reader: PackReader,
    manifest: Manifest,
    *,
    device: torch.device | None = None,
    ref: ProgramRef | None = None,
    engines: Mapping[str, Any] | None = None,
    mmap: bool = False,
    allow_ops: Sequence[str] = (),
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> ExportedProgram:
    """Rebuild the pack's ExportedProgram (or, with ``ref``, an engine variant's program,
    whose ``engines`` are supplied as constants); on ``device`` when asked. ``mmap``: CPU
    tensors view the file's map (see ``weights_owned``). ``allow_ops``: the custom operators
    it may call (``graph_check.op_allowed``). ``shared``: as for ``load_runnable``."""
    ref, graph, _, state_dict, constants = _read_program(reader, manifest, ref, device, mmap,
                                                         allow_ops, shared)  # fmt: skip
    constants.update(engines or {})
    return deserialize_program(graph, state_dict, constants, manifest, ref, device)


def _read_program(
    reader: PackReader,
    manifest: Manifest,
    ref: ProgramRef | None,
    device: torch.device | None,
    mmap: bool = False,
    allow_ops: Sequence[str] = (),
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    graph: Future[tuple[bytes, Any]] | None = None,
) -> tuple[ProgramRef, bytes, Any, dict[str, torch.Tensor], dict[str, Any]]:
    """The program to load (``ref``, default the pack's), its graph bytes and their parsed
    JSON, checked before any name in it becomes code (custom operators only where
    ``allow_ops`` covers them and this process has them registered), and its tensors on
    ``device``; the pytree types its specs name are made known to torch. ``graph``: that
    check already under way (``read_checked_graph``, started by the caller)."""
    ref = ref or manifest.program
    if ref is None:
        raise ProgramError(f"{reader.path} holds no ExportedProgram")
    restore_namedtuples(manifest.input_tree)
    restore_namedtuples(manifest.output_tree)
    _require_registered(manifest, str(reader.path))
    # The graph is parsed and checked on a second thread while the weights are read and
    # moved (both mostly outside the GIL: preadv, hashing, copies to the device): a real
    # transformer's graph check costs as much as moving its weights. A multi-entry load
    # starts every entry point's check up front (``graph``). Nothing of the graph becomes
    # code before both are done; an error of the weights wins, as before.
    with ThreadPoolExecutor(1) as pool:
        job = graph or pool.submit(read_checked_graph, reader, ref, allow_ops)
        state_dict, constants = load_state(reader, ref.weights, device, mmap, shared)
        graph_bytes, parsed = job.result()
    return ref, graph_bytes, parsed, state_dict, constants


def read_checked_graph(
    reader: PackReader, ref: ProgramRef, allow_ops: Sequence[str] = (), record: Member | None = None
) -> tuple[bytes, Any]:
    """A program's graph JSON, read once, hashed against ``record`` when given (a verifying
    load: the bytes parsed are the bytes hashed), parsed and checked (``checked_graph``), its
    custom operators allowed and registered. Safe on a second thread: ``reader.read`` is."""
    from .graph_check import checked_graph

    data = reader.read(ref.graph)
    if record is not None:
        reader.verify_bytes(ref.graph, data, record)
    parsed, called = checked_graph(data, ref.graph, allow_ops)
    _require_custom_ops(called, ref, f"{reader.path}: {ref.graph}")
    return data, parsed


def _require_custom_ops(called: list[str], ref: ProgramRef, where: str) -> None:
    """The custom operators the program calls (the user allowed them) are the ones its
    manifest records, where it records them (format 1.4), and every one is registered in this
    process: looked up in torch's dispatcher by name, nothing imported."""
    if ref.custom_ops is not None and tuple(called) != ref.custom_ops:
        raise IntegrityError(
            f"{where}: the graph calls custom operators {called}, the manifest records "
            f"{list(ref.custom_ops)}",
            member=ref.graph, field="program.custom_ops", expected=list(ref.custom_ops),
            got=called,
        )  # fmt: skip
    missing = [op for op in called if not torch._C._dispatch_has_kernel(op)]
    if missing:
        raise ProgramError(
            f"{where}: the program calls custom operators that are not registered in this "
            f"process: {', '.join(missing)}; import the library that defines them (its "
            "torch.library registration) before loading"
        )


def deserialize_program(
    graph: bytes,
    state_dict: dict[str, torch.Tensor],
    constants: dict[str, Any],
    manifest: Manifest,
    ref: ProgramRef,
    device: torch.device | None,
) -> ExportedProgram:
    """torch's deserializer on a checked graph and the tensors ``_rebuild_state`` made."""
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    try:
        # torch's annotations say bytes; deserialize takes the tensors themselves too
        ep = deserialize(SerializedArtifact(graph, state_dict, constants, b""))  # type: ignore[arg-type]
    except Exception as e:
        ours = serde_schema_version()
        raise ProgramError(
            f"this torch ({torch.__version__}, export schema {ours[0]}.{ours[1]}) cannot read "
            f"the program, written with export schema "
            f"{ref.serde_schema[0]}.{ref.serde_schema[1]}: {type(e).__name__}: {e}"
        ) from e
    _export_order(ep)
    if device is not None and device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)  # device arguments inside the graph (arange, ...)
    if ref == manifest.program:
        # as torch.export.load restores them: ep.module() builds its guard check from them
        ep.example_inputs = example_inputs(manifest, ep.call_spec.in_spec)
    # saving this program again keeps the opts its manifest chose (see derive_interface)
    ep.graph_module.meta[LOADED_FROM_KEY] = manifest.interface
    return ep


def _export_order(ep: ExportedProgram) -> None:
    """``ep.state_dict`` and ``ep.constants`` in the order torch.export made them (the order
    ``torch.export.load`` gives back, which users see iterating them), not the weights
    member's sorted one: the state dict in the signature's order, the constants as export
    builds them (lifted constants, then non-persistent buffers, each in the signature's
    order). Names the signature does not list (an engine variant's engines) keep their place
    after those."""
    from torch.export.graph_signature import InputKind

    specs = ep.graph_signature.input_specs
    order = {
        "state_dict": [s.target for s in specs if s.kind == InputKind.PARAMETER
                       or (s.kind == InputKind.BUFFER and s.persistent)],
        "constants": [
            *(s.target for s in specs if s.kind in (InputKind.CONSTANT_TENSOR,
                                                    InputKind.CUSTOM_OBJ)),
            *(s.target for s in specs if s.kind == InputKind.BUFFER and not s.persistent),
        ],
    }  # fmt: skip
    for table, names in ((ep.state_dict, order["state_dict"]), (ep.constants, order["constants"])):
        ordered = {n: table[n] for n in names if n in table}
        ordered.update((k, v) for k, v in table.items() if k not in ordered)
        # in place: the program holds these dicts (no private attribute is touched)
        table.clear()
        table.update(ordered)


#: example inputs larger than this many elements in all are zero-stride views of one zero:
#: torch reads only their structure, and a manifest's opt sizes must not allocate without bound
_EXAMPLE_ELEMENTS = 1 << 24


def opt_inputs(manifest: Manifest) -> list[Any]:
    """One call's leaves at the symbols' opt sizes (zeros; ``example`` opts are the sizes of
    the inputs the program was exported with): what torch needs to know the call's
    structure when it builds its guard check."""
    from ..format.manifest import parse_dim

    def at_opt(dim: int | str) -> int:
        if isinstance(dim, int):
            return dim
        expr = parse_dim(dim)
        return expr.value(manifest.symbols[expr.symbol].opt)

    shapes = {i: [at_opt(d) for d in s.shape or ()] for i, s in enumerate(manifest.inputs)
              if s.is_tensor}  # fmt: skip
    total = sum(math.prod(shape) for shape in shapes.values())
    out: list[Any] = []
    for i, spec in enumerate(manifest.inputs):
        if spec.is_tensor:
            dtype = getattr(torch, spec.dtype or "float32")
            if total <= _EXAMPLE_ELEMENTS:
                out.append(torch.zeros(shapes[i], dtype=dtype))
            else:
                out.append(torch.zeros((), dtype=dtype).expand(shapes[i]))
        elif spec.symbol is not None:
            out.append(at_opt(spec.symbol))
        else:
            out.append(spec.value)
    return out


def example_inputs(manifest: Manifest, in_spec: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``ep.example_inputs``: the opt-size leaves, nested by the
    program's own spec (registered pytree classes included). Stored without pickle: they
    are made from the manifest's shapes and dtypes."""
    import torch.utils._pytree as pytree

    args, kwargs = pytree.tree_unflatten(opt_inputs(manifest), in_spec)
    return tuple(args), dict(kwargs)


class LoadedProgram:
    """The pack's program, loaded to run: ``module`` is what ``runnable(ep)`` would be, and
    ``exported_program()`` the ExportedProgram itself, deserialized by torch on first call
    when the module was built without it (from the same checked graph and the same tensors:
    the pack is not read again, and the weights are not copied again).

    ``fast_path_reason`` is None when ``module`` was built straight from the graph JSON
    (``trtpack.program.graph_module``: no torch deserializer, no torch._dynamo import), else why
    torch's deserializer built it."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        fast_path_reason: str | None,
        exported_program: ExportedProgram | None = None,
        source: tuple[bytes, dict[str, torch.Tensor], dict[str, Any]] | None = None,
        manifest: Manifest,
        ref: ProgramRef,
        device: torch.device | None,
    ) -> None:
        self.module = module
        self.fast_path_reason = fast_path_reason
        #: every parameter, buffer and constant as loaded, by name: the objects the module
        #: uses (entry points of one pack share them; reset_state writes into them)
        self.tensors: dict[str, Any] = {}
        self._ep = exported_program
        self._source = source
        self._manifest, self._ref, self._device = manifest, ref, device

    def exported_program(self) -> ExportedProgram:
        if self._ep is None:
            assert self._source is not None
            graph, state_dict, constants = self._source
            self._ep = deserialize_program(
                graph, state_dict, constants, self._manifest, self._ref, self._device
            )
            self._source = None  # the program holds the tensors now; the JSON is not needed
        return self._ep


def load_runnable(
    reader: PackReader,
    manifest: Manifest,
    *,
    device: torch.device | None = None,
    mmap: bool = False,
    allow_ops: Sequence[str] = (),
    shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    graph: Future[tuple[bytes, Any]] | None = None,
) -> LoadedProgram:
    """The pack's program, ready to run on ``device``: built straight from its graph JSON
    where ``graph_module.build_module`` reproduces ``ep.module()`` exactly, else by torch's
    deserializer (the reason is kept). ``mmap``: see ``weights_owned``. ``shared``: loaded
    weights members another entry point's program references (format 1.4). ``graph``: its
    graph's ``read_checked_graph`` already started by the caller."""
    from .graph_module import Unsupported, build_module

    ref, graph_bytes, parsed, state_dict, constants = _read_program(
        reader, manifest, None, device, mmap, allow_ops, shared, graph
    )
    tensors = {**state_dict, **{k: v for k, v in constants.items() if isinstance(v, torch.Tensor)}}
    try:
        module = build_module(parsed, state_dict, constants, device)
    except Unsupported as e:
        ep = deserialize_program(graph_bytes, state_dict, constants, manifest, ref, device)
        loaded = LoadedProgram(runnable(ep), fast_path_reason=str(e), exported_program=ep,
                               manifest=manifest, ref=ref, device=device)  # fmt: skip
    else:
        loaded = LoadedProgram(module, fast_path_reason=None,
                               source=(graph_bytes, state_dict, constants), manifest=manifest,
                               ref=ref, device=device)  # fmt: skip
    loaded.tensors = tensors
    return loaded


def _require_registered(manifest: Manifest, where: str) -> None:
    """Every custom pytree class of the call and its result is registered here; else say
    which, and what to import (torch's own error reads like a version mismatch)."""
    import torch.utils._pytree as pytree

    from ..format.pytree import custom_type_names, unregistered_error

    for tree in (manifest.input_tree, manifest.output_tree):
        for name in custom_type_names(tree):
            if name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
                raise unregistered_error(name, where)


def runnable(ep: ExportedProgram) -> torch.fx.GraphModule:
    """``ep.module()`` without torch's own per-call input checks: the pack's contract has
    already checked the call, in a fraction of the time."""
    try:
        try:
            module = ep.module(check_guards=False)
        except TypeError as e:  # older torch: no check_guards argument
            if "check_guards" not in str(e):
                raise
            module = ep.module()
    except ProgramError:
        raise
    except Exception as e:  # the deserializer accepted a graph that torch cannot unlift
        raise ProgramError(
            f"torch cannot build a module from the stored program: {type(e).__name__}: {e}"
        ) from e
    module.validate_inputs = False  # type: ignore[assignment]
    return module
