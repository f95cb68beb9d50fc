"""The manifest's records: typed dataclasses that mirror ``schema/`` field for field, and the
generic conversion of a record to and from its JSON value. No torch.

A field with a default is optional in the schema and omitted from the JSON while it holds
``None``. The :class:`~.manifest.Manifest` record itself, with its cross-field check, is in
:mod:`.manifest`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ArgumentTypeError, ManifestError
from .pytree import Tree

Dim = int | str
#: what an input or output is (``io.kind`` in the schema)
Kind = Literal["tensor", "int", "float", "bool", "str", "none"]
#: which TensorRT built an engine set (``target.flavor``)
Flavor = Literal["tensorrt", "tensorrt_rtx"]
OptSource = Literal["example", "rule", "override"]


# --- the dataclasses (mirror schema/manifest.v1.schema.json) -------------------------------


@dataclass(frozen=True)
class Producer:
    """Versions of the software that wrote the pack."""

    trtpack: str
    python: str
    torch: str | None = None
    torch_tensorrt: str | None = None
    tensorrt: str | None = None


@dataclass(frozen=True)
class IOSpec:
    """One flat input or output. Tensors carry dtype and shape; other kinds carry the value
    torch.export specialized them to, or (a dynamic int) the symbol they equal."""

    name: str
    path: str
    kind: Kind
    dtype: str | None = None
    shape: tuple[Dim, ...] | None = None
    memory_format: str | None = None
    value: int | float | bool | str | None = None
    symbol: str | None = None

    @property
    def is_tensor(self) -> bool:
        return self.kind == "tensor"


@dataclass(frozen=True)
class Symbol:
    """A dynamic dim: its range [min, max] (max None: unbounded) and the size to tune for."""

    min: int
    max: int | None
    opt: int
    opt_source: OptSource


@dataclass(frozen=True)
class MemberChunks:
    """The SHA-256 of each ``size``-byte piece of a member, in order, the last possibly
    shorter (format 1.3): verifying them uses every core, where one SHA-256 of the whole
    member is sequential."""

    size: int
    sha256: tuple[str, ...]


@dataclass(frozen=True)
class Member:
    """A member's size and SHA-256 (of its whole bytes: what OCI layer digests and
    model_signing's file digests are); ``chunks`` for members over one piece."""

    sha256: str
    size: int
    chunks: MemberChunks | None = None


@dataclass(frozen=True)
class ProgramRef:
    """Where the ExportedProgram lives in the pack."""

    graph: str
    weights: str
    serde_schema: tuple[int, int]
    #: the custom operators (``mylib::twice``) the graph calls, sorted (format 1.4; written
    #: only when there are some): code the pack does not carry, run only where the loader
    #: allows it and its library has registered it
    custom_ops: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Binding:
    """One engine input or output binding, with its optimization profile for inputs."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    profile: tuple[tuple[int, int, int], ...] | None = None
    #: the engine's optimization profiles 1, 2, ... (format 1.2); ``profile`` is profile 0
    extra_profiles: tuple[tuple[tuple[int, int, int], ...], ...] | None = None

    @property
    def profiles(self) -> tuple[tuple[tuple[int, int, int], ...], ...]:
        """Every optimization profile of this input binding, profile 0 first."""
        if self.profile is None:
            return ()
        return (self.profile, *(self.extra_profiles or ()))


@dataclass(frozen=True)
class EngineSpec:
    """One TensorRT engine: its member, bindings and the settings it was built with."""

    name: str
    member: str
    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]
    abi_version: str | None = None
    settings: dict[str, Any] | None = None


@dataclass(frozen=True)
class Target:
    """What an engine set needs to run: read from plan headers and build settings."""

    flavor: Flavor
    trt_version: str
    compute_capabilities: tuple[str, ...]
    hardware_compatibility: str
    version_compatible: bool
    future_gpus: bool | None = None
    #: a version-compatible plan that carries the lean runtime: host code (format 1.3)
    embeds_lean_runtime: bool | None = None
    platform: str | None = None
    cuda_runtime: str | None = None


@dataclass(frozen=True)
class Variant:
    """One set of engines built for one target. ``program`` wires them with any PyTorch
    fallback subgraphs (None: a single whole-graph engine, run directly); ``ranges`` lists
    symbols the engines' profiles cover only in part."""

    name: str
    target: Target
    engines: tuple[EngineSpec, ...]
    program: ProgramRef | None
    ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    #: True: the bindings were described (a bare plan), not recorded by the builder; only a GPU
    #: runtime can confirm them, which load does before the first call (format 1.2)
    described: bool | None = None

    #: written to the JSON (for readers and tools that do not derive it), never stored twice:
    #: a reader checks the JSON's value against the derivation
    JSON_DERIVED: typing.ClassVar[tuple[str, ...]] = ("whole_graph",)

    @property
    def whole_graph(self) -> bool:
        """One engine whose bindings are the manifest's tensor inputs and outputs, in order:
        the variant runs without a program (what a Triton TensorRT backend can serve)."""
        return self.program is None


@dataclass(frozen=True)
class Guard:
    """One condition on the inputs beyond their ranges (trtpack/format/guards.py): ``expr`` in the
    manifest's guard language, or None when torch's ``source`` cannot be expressed in it (the
    program's own check then runs for every call)."""

    source: str
    expr: str | None = None


@dataclass(frozen=True)
class Tolerance:
    """Each element of an output must satisfy ``|got - want| <= atol + rtol * |want|``."""

    atol: float
    rtol: float


@dataclass(frozen=True)
class Samples:
    """Reference samples (format 1.2): inputs and the program's outputs for them, stored in
    ``member`` (``sample<i>/input/<name>``, ``sample<i>/output/<name>``), and the tolerance
    the program (``tolerance``) and each engine variant (``variants``) must meet."""

    member: str
    count: int
    tolerance: Tolerance
    variants: dict[str, Tolerance] = field(default_factory=dict)

    def tolerance_of(self, variant: str | None) -> Tolerance:
        return self.variants.get(variant, self.tolerance) if variant else self.tolerance


@dataclass(frozen=True)
class Interface:
    """The calling convention of a program: what a manifest says about inputs and outputs."""

    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    symbols: dict[str, Symbol]
    input_tree: Tree
    output_tree: Tree
    guards: tuple[Guard, ...] = ()

    def with_output_names(self, names: Sequence[str] | Mapping[str, str]) -> Interface:
        """Rename outputs: a list in flat order, or a map from an output's derived name or
        path to its new name. Names must be unique and match ``[A-Za-z_][A-Za-z0-9_.]*``
        (valid Triton and MLflow names)."""
        if isinstance(names, Mapping):
            known = {o.name for o in self.outputs} | {o.path for o in self.outputs}
            unknown = sorted(set(names) - known)
            if unknown:
                raise ManifestError(
                    f"output_names names {unknown}, which are not outputs (outputs: "
                    f"{[o.name for o in self.outputs]}, paths: {[o.path for o in self.outputs]})"
                )
            new = [names.get(o.name, names.get(o.path, o.name)) for o in self.outputs]
        elif isinstance(names, Sequence) and not isinstance(names, str):
            new = list(names)
            if len(new) != len(self.outputs):
                raise ManifestError(
                    f"output_names has {len(new)} names for {len(self.outputs)} outputs "
                    f"({[o.path for o in self.outputs]})"
                )
        else:
            raise ArgumentTypeError("output_names", "a list or a dict of str", names)
        for name in new:
            if not isinstance(name, str) or not _OUTPUT_NAME.match(name):
                raise ManifestError(
                    f"output name {name!r} must match [A-Za-z_][A-Za-z0-9_.]* (Triton, MLflow)"
                )
        if len(set(new)) != len(new):
            raise ManifestError(f"output_names are not unique: {new}")
        outputs = tuple(dataclasses.replace(o, name=n) for o, n in zip(self.outputs, new))
        return dataclasses.replace(self, outputs=outputs)


_OUTPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

#: the name of a pack's only entry point, and of the default one when the manifest names none
DEFAULT_ENTRY_POINT = "forward"


@dataclass(frozen=True)
class EntryPoint:
    """One more program of a multi-entry pack (format 1.4): what the top level of a manifest
    says about its default program, for another one over the same weights and state."""

    interface: Interface = field(metadata={"json": "inline"})
    program: ProgramRef | None
    engines: tuple[Variant, ...] = ()
    samples: Samples | None = None


@dataclass(frozen=True)
class StateTensor:
    """A tensor some entry point writes in place (format 1.4)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class StateUse:
    """The state one entry point reads and writes, and the inputs it writes in place."""

    reads: tuple[str, ...] = ()
    mutates: tuple[str, ...] = ()
    mutated_inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class State:
    """A pack's mutable state (format 1.4): a tensor named by several entry points is one
    tensor, shared by them."""

    tensors: dict[str, StateTensor]
    entry_points: dict[str, StateUse]

    def engine_refusal(self, name: str) -> str | None:
        """Why entry point ``name`` cannot run a TensorRT engine, or None when it can: it
        writes state in place (an engine cannot write a tensor another entry point's program
        reads: torch_tensorrt returns the written values as extra outputs instead), or it
        reads state another entry point writes (an engine holds the values it was built with,
        never what is written later). Such an entry point runs its ExportedProgram. The one
        rule for compile, save, add_engine/build and load."""
        use = self.entry_points.get(name)
        if use is None:
            return None
        if use.mutates:
            return (
                f"entry point {name!r} writes state in place ({', '.join(use.mutates)}), which "
                "an engine cannot share with the other entry points"
            )
        writers = sorted(n for n, u in self.entry_points.items() if set(u.mutates) & set(use.reads))
        if writers:
            return (
                f"entry point {name!r} reads state that {', '.join(writers)} write(s) in place "
                f"({', '.join(use.reads)}); an engine would hold the values it was built with, "
                "never what is written later"
            )
        return None


# --- dataclass <-> JSON value ---------------------------------------------------------------


def _to_json_value(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if value is None and has_default:
                continue  # optional and absent
            if f.metadata.get("json") == "inline":
                out.update(_to_json_value(value))
            else:
                out[f.name] = _to_json_value(value)
        for name in getattr(obj, "JSON_DERIVED", ()):
            out[name] = _to_json_value(getattr(obj, name))
        return out
    if isinstance(obj, (tuple, list)):
        return [_to_json_value(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_json_value(v) for k, v in obj.items()}
    return obj


def _from_json_value(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _from_json_value(args[0], value)
        return value  # a union of scalars (Dim, IOSpec.value): already the right JSON value
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)  # type: ignore[arg-type]
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.metadata.get("json") == "inline":
                kwargs[f.name] = _from_json_value(hints[f.name], value)
            elif f.name in value:
                kwargs[f.name] = _from_json_value(hints[f.name], value[f.name])
        obj = tp(**kwargs)  # type: ignore[operator]  # tp is a dataclass type here
        for name in getattr(tp, "JSON_DERIVED", ()):
            if name in value and value[name] != getattr(obj, name):
                raise ManifestError(
                    f"{type(obj).__name__.lower()} {value.get('name', '')!r}: {name} is "
                    f"{json.dumps(value[name])}, but its other fields make it "
                    f"{json.dumps(getattr(obj, name))}"
                )
        return obj
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(_from_json_value(items[0], v) for v in value)
        return tuple(_from_json_value(a, v) for a, v in zip(items, value))
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {k: _from_json_value(vt, v) for k, v in value.items()}
    return value


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    return typing.get_type_hints(tp, vars(sys.modules[__name__]))
