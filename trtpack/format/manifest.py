"""The manifest: typed dataclasses, JSON in and out, validated by ``schema/``. No torch here.

The JSON Schema in ``schema/manifest.v<major>.schema.json`` is the source of truth; these
dataclasses mirror it field for field (``tests/test_manifest.py`` proves it). A field with a
default is optional in the schema and omitted from the JSON while it holds ``None``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import keyword
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ArgumentTypeError, ManifestError, UnsupportedVersionError
from .pytree import Tree, leaf_paths

FORMAT_NAME = "trtpack"
#: The manifest format version this trtpack writes. See schema/SPEC.md for the rules.
FORMAT_VERSION: tuple[int, int] = (1, 4)
#: The name of the first member of every pack.
MANIFEST_NAME = "manifest.json"

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


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to know about a pack, without reading anything else. The
    interface's fields sit at the top level of the JSON (``inputs``, ``symbols``, ...)."""

    format_version: tuple[int, int]
    producer: Producer
    interface: Interface = field(metadata={"json": "inline"})
    members: dict[str, Member]
    program: ProgramRef | None
    engines: tuple[Variant, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_NAME
    #: reference samples and their tolerances (format 1.2); None: the pack has none
    samples: Samples | None = None
    #: format 1.4: the default entry point's name (None: DEFAULT_ENTRY_POINT), the others,
    #: and the mutable state they share
    entry_point: str | None = None
    entry_points: dict[str, EntryPoint] | None = None
    state: State | None = None

    # -- entry points (format 1.4) ----------------------------------------------------------

    @property
    def default_entry_point(self) -> str:
        return self.entry_point or DEFAULT_ENTRY_POINT

    @property
    def entry_point_names(self) -> tuple[str, ...]:
        """Every entry point's name, sorted."""
        return tuple(sorted({self.default_entry_point, *(self.entry_points or {})}))

    def entry(self, name: str) -> Manifest:
        """The manifest of one entry point, as a single-program manifest (same members, same
        state): what the contract, the loader and the samples check work on."""
        if name == self.default_entry_point:
            return self
        ep = (self.entry_points or {}).get(name)
        if ep is None:
            raise ManifestError(
                f"the pack has no entry point {name!r} (entry points: "
                f"{list(self.entry_point_names)})",
                field="entry_points", got=name, expected=list(self.entry_point_names),
            )  # fmt: skip
        return dataclasses.replace(
            self, interface=ep.interface, program=ep.program, engines=ep.engines,
            samples=ep.samples, entry_point=name, entry_points=None,
        )  # fmt: skip

    # the interface's fields, read through (stored once, in ``interface``)
    @property
    def inputs(self) -> tuple[IOSpec, ...]:
        return self.interface.inputs

    @property
    def outputs(self) -> tuple[IOSpec, ...]:
        return self.interface.outputs

    @property
    def symbols(self) -> dict[str, Symbol]:
        return self.interface.symbols

    @property
    def input_tree(self) -> Tree:
        return self.interface.input_tree

    @property
    def output_tree(self) -> Tree:
        return self.interface.output_tree

    @property
    def guards(self) -> tuple[Guard, ...]:
        """Conditions beyond the ranges (format 1.1); a pack of 1.0 has none recorded."""
        return self.interface.guards

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _to_json_value(self)

    def to_json(self) -> bytes:
        """Canonical bytes: validated, sorted keys, fixed indentation, so equal manifests are
        byte-identical."""
        data = self.to_dict()
        validate(data)
        self.check()
        return dumps_canonical(data)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        lenient = check_version(data)
        validate(data, lenient=lenient)
        manifest = _from_json_value(cls, data)
        manifest.check()
        return manifest

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        from .limits import parse_manifest_json

        return cls.from_dict(parse_manifest_json(raw, "manifest"))

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    # -- consistency beyond what JSON Schema can say ---------------------------------------

    def check(self, *, whole: bool = True) -> None:
        """Cross-field rules: symbols referenced exist, ranges are ordered, members exist;
        ``whole``: also every other entry point and the state (False: this entry point's)."""
        for name, sym in self.symbols.items():
            if sym.max is not None and sym.min > sym.max:
                raise ManifestError(f"symbol {name!r}: min {sym.min} > max {sym.max}")
            if sym.opt < sym.min or (sym.max is not None and sym.opt > sym.max):
                raise ManifestError(
                    f"symbol {name!r}: opt {sym.opt} outside [{sym.min}, {_fmt_max(sym.max)}]"
                )
        seen: set[str] = set()
        for spec in self.inputs:
            if spec.name in seen:
                raise ManifestError(f"two inputs are named {spec.name!r}")
            seen.add(spec.name)
            for dim in spec.shape or ():
                if isinstance(dim, str):
                    expr = parse_dim(dim, where=f"input {spec.name!r}")
                    if expr.symbol not in self.symbols:
                        raise ManifestError(
                            f"input {spec.name!r} uses symbol {expr.symbol!r}, "
                            "which is not in the symbols table"
                        )
        if _count_leaves(self.input_tree) != len(self.inputs):
            raise ManifestError(
                f"input_tree has {_count_leaves(self.input_tree)} leaves "
                f"but there are {len(self.inputs)} inputs"
            )
        if _count_leaves(self.output_tree) != len(self.outputs):
            raise ManifestError(
                f"output_tree has {_count_leaves(self.output_tree)} leaves "
                f"but there are {len(self.outputs)} outputs"
            )
        self._check_paths()
        if self.guards:
            from .guards import compile_guard

            for g in self.guards:
                if g.expr is not None:
                    compile_guard(g.expr, self.inputs)  # raises ManifestError if malformed
        for spec in self.inputs:
            if spec.symbol is not None and spec.symbol not in self.symbols:
                raise ManifestError(
                    f"input {spec.name!r} equals symbol {spec.symbol!r}, which is not in the "
                    "symbols table"
                )
        referenced = []
        if self.program is not None:
            referenced += [self.program.graph, self.program.weights]
        if self.samples is not None:
            referenced.append(self.samples.member)
        names: set[str] = set()
        for variant in self.engines:
            if variant.name in names:
                raise ManifestError(f"two engine variants are named {variant.name!r}")
            names.add(variant.name)
            referenced += [e.member for e in variant.engines]
            if variant.program is not None:
                referenced += [variant.program.graph, variant.program.weights]
            elif len(variant.engines) != 1:
                raise ManifestError(
                    f"engine variant {variant.name!r} has no program, so it must be one "
                    "whole-graph engine"
                )
            for sym_name, (lo, hi) in variant.ranges.items():
                if sym_name not in self.symbols:
                    raise ManifestError(
                        f"engine variant {variant.name!r} narrows unknown symbol {sym_name!r}"
                    )
                if hi is not None and lo > hi:
                    raise ManifestError(
                        f"engine variant {variant.name!r}: range of {sym_name!r} "
                        f"[{lo}, {hi}] is empty"
                    )
            if variant.whole_graph:
                problem = whole_graph_mismatch(variant, self.inputs, self.outputs)
                if problem is not None:
                    raise ManifestError(problem)
            derived = narrowed_ranges(variant.engines, self.inputs, self.symbols)
            if variant.ranges != derived:  # stored for readers; never a second truth
                raise ManifestError(
                    f"engine variant {variant.name!r}: ranges {variant.ranges} are not what its "
                    f"engines' profiles give, {derived}"
                )
        for member in referenced:
            if member not in self.members:
                raise ManifestError(f"{member!r} is referenced but not listed in members")
        if whole and (self.entry_points is not None or self.state is not None):
            self._check_entry_points()
        for name, m in self.members.items():
            if m.chunks is not None and len(m.chunks.sha256) != -(-m.size // m.chunks.size):
                raise ManifestError(
                    f"member {name!r}: {len(m.chunks.sha256)} chunk digests, but {m.size} bytes "
                    f"in pieces of {m.chunks.size} make {-(-m.size // m.chunks.size)}",
                    field=f"members/{name}/chunks", expected=-(-m.size // m.chunks.size),
                    got=len(m.chunks.sha256),
                )  # fmt: skip

    def _check_entry_points(self) -> None:
        """Each other entry point passes every rule a single program does; the state names
        entry points and tensors that exist, and inputs of the entry point that writes them."""
        default = self.default_entry_point
        for name in self.entry_points or {}:
            if name == default:
                raise ManifestError(
                    f"entry point {name!r} is the default (top-level) one and is listed again "
                    "in entry_points", field=f"entry_points/{name}",
                )  # fmt: skip
            self.entry(name).check(whole=False)
        if self.state is None:
            return
        names = set(self.entry_point_names)
        for ep_name, use in self.state.entry_points.items():
            if ep_name not in names:
                raise ManifestError(
                    f"state names entry point {ep_name!r}, which the pack does not have "
                    f"({sorted(names)})", field=f"state/entry_points/{ep_name}",
                )  # fmt: skip
            for what, tensors in (("reads", use.reads), ("mutates", use.mutates)):
                for t in tensors:
                    if t not in self.state.tensors:
                        raise ManifestError(
                            f"state: entry point {ep_name!r} {what} {t!r}, which is not in "
                            "state.tensors", field=f"state/entry_points/{ep_name}/{what}",
                        )  # fmt: skip
            if not set(use.mutates) <= set(use.reads):
                missing = sorted(set(use.mutates) - set(use.reads))
                raise ManifestError(
                    f"state: entry point {ep_name!r} writes {missing} but does not list them "
                    "in reads",
                    field=f"state/entry_points/{ep_name}/reads",
                )  # fmt: skip
            inputs = {i.name for i in self.entry(ep_name).inputs if i.is_tensor}
            for i in use.mutated_inputs:
                if i not in inputs:
                    raise ManifestError(
                        f"state: entry point {ep_name!r} writes input {i!r}, which is not one "
                        f"of its tensor inputs ({sorted(inputs)})",
                        field=f"state/entry_points/{ep_name}/mutated_inputs",
                    )  # fmt: skip
        written = {t for use in self.state.entry_points.values() for t in use.mutates}
        unused = sorted(set(self.state.tensors) - written)
        if unused:
            raise ManifestError(
                f"state.tensors lists {unused}, which no entry point writes", field="state/tensors"
            )

    def _check_paths(self) -> None:
        """Each input's and output's ``path`` is the one its position in the tree gives, and
        names are unique: a consistent edit of either would feed the wrong tensor."""
        for what, specs, tree, root in (
            ("input", self.inputs, self.input_tree, "call"),
            ("output", self.outputs, self.output_tree, "output"),
        ):
            try:
                paths = leaf_paths(tree, root)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ManifestError(f"{what}_tree is malformed ({type(e).__name__}: {e})") from None
            names: set[str] = set()
            for spec, path in zip(specs, paths):
                if spec.path != path:
                    raise ManifestError(
                        f"{what} {spec.name!r} has path {spec.path!r}, but its place in "
                        f"{what}_tree is {path!r}"
                    )
                if spec.name in names:
                    raise ManifestError(f"two {what}s are named {spec.name!r}")
                names.add(spec.name)


def input_profile(
    spec: IOSpec, symbols: Mapping[str, Symbol]
) -> tuple[tuple[tuple[int, int, int], ...], str | None]:
    """A tensor input's (min, opt, max) per dim from its symbols' ranges — the optimization
    profile an engine for it is built with — and the first unbounded symbol (whose max the
    profile cannot have), or None."""
    rows = []
    for d in spec.shape or ():
        if isinstance(d, int):
            rows.append((d, d, d))
            continue
        expr = parse_dim(d)
        sym = symbols[expr.symbol]
        if sym.max is None:
            return tuple(rows), expr.symbol
        rows.append((expr.value(sym.min), expr.value(sym.opt), expr.value(sym.max)))
    return tuple(rows), None


def profile_boxes(
    engines: Sequence[EngineSpec], inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> list[dict[str, tuple[int, int | None]]]:
    """For each optimization profile index, the range of every symbol that all the engines'
    profiles of that index accept (a symbol not in a box is unconstrained by it). A call runs
    on the first profile whose box holds its symbols."""
    by_name = {i.name: i for i in inputs if i.is_tensor}
    count = max((len(b.profiles) for e in engines for b in e.inputs), default=0)
    boxes: list[dict[str, tuple[int, int | None]]] = []
    for k in range(count):
        box: dict[str, tuple[int, int | None]] = {}
        for engine in engines:
            for binding in engine.inputs:
                spec, profiles = by_name.get(binding.name), binding.profiles
                if spec is None or not profiles:
                    continue
                rows = profiles[min(k, len(profiles) - 1)]
                for dim, (pmin, _, pmax) in zip(spec.shape or (), rows):
                    if not isinstance(dim, str):
                        continue
                    expr = parse_dim(dim)
                    sym = symbols[expr.symbol]
                    lo = -(-(pmin - expr.offset) // expr.coef)  # ceil: the smallest root it takes
                    hi = None if pmax < 0 else (pmax - expr.offset) // expr.coef
                    cur_lo, cur_hi = box.get(expr.symbol, (sym.min, sym.max))
                    box[expr.symbol] = (
                        max(cur_lo, lo),
                        cur_hi if hi is None else (hi if cur_hi is None else min(cur_hi, hi)),
                    )
        boxes.append(box)
    return boxes


def narrowed_ranges(
    engines: Sequence[EngineSpec], inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> dict[str, tuple[int, int | None]]:
    """Symbols whose exported range the engines' profiles only partly cover: the contract
    checks calls against these when the engines run (three ways: manifest, program, profiles).
    With several profiles, a symbol's range spans them all (the contract also refuses a call
    that falls between two)."""
    out: dict[str, tuple[int, int | None]] = {}
    boxes = profile_boxes(engines, inputs, symbols)
    for name in sorted({n for box in boxes for n in box}):
        sym = symbols[name]
        spans = [box.get(name, (sym.min, sym.max)) for box in boxes]
        lo = min(s[0] for s in spans)
        his = [s[1] for s in spans]
        hi = None if None in his else max(h for h in his if h is not None)
        if (lo, hi) != (sym.min, sym.max):
            out[name] = (lo, hi)
    return out


def whole_graph_mismatch(
    variant: Variant, inputs: tuple[IOSpec, ...], outputs: tuple[IOSpec, ...]
) -> str | None:
    """How a whole-graph engine's bindings differ from the tensor inputs and outputs they
    must be (names, dtypes, ranks, static dims, output count), or None."""
    if len(variant.engines) != 1:
        return (
            f"engine variant {variant.name!r} is whole-graph but has {len(variant.engines)} engines"
        )
    (engine,) = variant.engines
    tensors = {i.name: i for i in inputs if i.is_tensor}
    where = f"engine variant {variant.name!r}"
    if sorted(b.name for b in engine.inputs) != sorted(tensors):
        return (
            f"{where}: engine inputs {[b.name for b in engine.inputs]} are not the manifest's "
            f"tensor inputs {list(tensors)}"
        )
    for b in engine.inputs:
        spec = tensors[b.name]
        if b.dtype != spec.dtype or len(b.shape) != len(spec.shape or ()):
            return (
                f"{where}: engine input {b.name!r} is {b.dtype}{list(b.shape)}, the manifest "
                f"says {spec.dtype}{list(spec.shape or ())}"
            )
        for i, (got, want) in enumerate(zip(b.shape, spec.shape or ())):
            if isinstance(want, int) and got != want:
                return (
                    f"{where}: engine input {b.name!r} dim {i} is {got}, the manifest says {want}"
                )
    if len(engine.outputs) != len(outputs):
        return f"{where}: the engine has {len(engine.outputs)} outputs, the manifest {len(outputs)}"
    for b, spec in zip(engine.outputs, outputs):
        if not spec.is_tensor or b.dtype != spec.dtype:
            return (
                f"{where}: engine output {b.name!r} is {b.dtype}, the manifest's {spec.path} is "
                f"{spec.dtype or spec.kind}"
            )
    return None


# --- dims ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DimExpr:
    """``coef * symbol + offset``: the only form torch.export gives input dims."""

    symbol: str
    coef: int = 1
    offset: int = 0

    @property
    def plain(self) -> bool:
        """The symbol itself (``n``), the common case."""
        return self.coef == 1 and self.offset == 0

    def value(self, root: int) -> int:
        return self.coef * root + self.offset

    def solve(self, size: int) -> int | None:
        """The root value for which this expression equals ``size``, or None if none exists."""
        q, r = divmod(size - self.offset, self.coef)
        return q if r == 0 else None

    def __str__(self) -> str:
        s = self.symbol if self.coef == 1 else f"{self.coef}*{self.symbol}"
        if self.offset:
            s += f"{self.offset:+d}"
        return s


_DIM_RE = re.compile(
    r"^\s*(?:(?P<c1>\d+)\s*\*\s*)?(?P<sym>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\s*\*\s*(?P<c2>\d+))?\s*(?:(?P<sign>[+-])\s*(?P<off>\d+))?\s*$"
)


def parse_dim(text: str, *, where: str = "dim") -> DimExpr:
    """Parse ``n``, ``2*n``, ``n*2``, ``n+1``, ``2*n - 1``. Raises ManifestError otherwise."""
    m = _DIM_RE.match(text)
    if not m or (m["c1"] and m["c2"]):
        raise ManifestError(
            f"{where}: dim {text!r} is not of the form 'n', 'a*n', 'n+b' or 'a*n+b'"
        )
    coef = int(m["c1"] or m["c2"] or 1)
    if coef == 0:
        raise ManifestError(f"{where}: dim {text!r} has coefficient 0")
    offset = int(m["off"] or 0) * (-1 if m["sign"] == "-" else 1)
    return DimExpr(m["sym"], coef, offset)


def opt_rule(lo: int, hi: int | None) -> int:
    """opt when no example size is known: the max of a bounded range (engines tuned for the
    largest call), the min of an unbounded one. Always within [min, max]."""
    return lo if hi is None else hi


def memory_format_of(sizes: list[int], strides: list[int]) -> str:
    """``contiguous``, ``channels_last(_3d)`` or ``strided``, from concrete sizes and strides
    (size-1 dims are ignored, as torch does)."""

    def dense(order: list[int]) -> bool:
        expect = 1
        for i in order:
            if sizes[i] != 1 and strides[i] != expect:
                return False
            expect *= sizes[i]
        return True

    n = len(sizes)
    if dense(list(range(n - 1, -1, -1))):
        return "contiguous"
    if n == 4 and dense([1, 3, 2, 0]):
        return "channels_last"
    if n == 5 and dense([1, 4, 3, 2, 0]):
        return "channels_last_3d"
    return "strided"


def symbol_name(
    input_name: str, dim: int | None, taken: Iterable[str], user: str | None = None
) -> str:
    """A manifest name for a new symbol: the user's ``Dim`` name when known, else
    ``<input>_dim<i>`` (``<input>`` for an int input); a valid identifier, unique in ``taken``."""
    base = user or (input_name if dim is None else f"{input_name}_dim{dim}")
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "_" + base
    taken = set(taken)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _fmt_max(v: int | None) -> str:
    return "inf" if v is None else str(v)


def _count_leaves(tree: Tree) -> int:
    if tree["type"] == "leaf":
        return 1
    return sum(_count_leaves(c) for c in tree.get("children", ()))


# --- versions and schema ------------------------------------------------------------------


def check_version(data: Any) -> bool:
    """Refuse packs this reader cannot understand. Returns True when the pack is of a newer
    minor version (validate leniently: unknown fields are allowed)."""
    if not isinstance(data, dict):
        raise ManifestError("manifest.json must hold a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise ManifestError(
            f"manifest.json has format {data.get('format')!r}, expected {FORMAT_NAME!r}"
        )
    version = data.get("format_version")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in version)
    ):
        raise ManifestError(f"format_version must be [major, minor], got {version!r}")
    major, minor = version
    if major > FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"this pack has format version {major}.{minor}; this trtpack reads up to "
            f"{FORMAT_VERSION[0]}.x. Upgrade trtpack to a release that reads format {major}."
        )
    if major < FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"format version {major}.{minor} must be migrated first (trtpack migrate)"
        )
    return minor > FORMAT_VERSION[1]


def schema_path(major: int = FORMAT_VERSION[0]) -> Path:
    """The JSON Schema file of a format major version (shipped inside the wheel)."""
    name = f"manifest.v{major}.schema.json"
    package = Path(__file__).resolve().parent.parent  # trtpack/
    packaged = package / "_schema" / name
    if packaged.is_file():
        return packaged
    return package.parent / "schema" / name  # a source checkout


@functools.lru_cache(maxsize=4)
def load_schema(major: int = FORMAT_VERSION[0]) -> dict[str, Any]:
    return json.loads(schema_path(major).read_text(encoding="utf-8"))


def validate(data: Any, *, lenient: bool = False) -> None:
    """Validate a manifest dict against the JSON Schema; raise ManifestError naming each
    problem with its JSON path (``field``, ``expected`` and ``got`` are the first problem's:
    its path, ``{keyword: what the schema says}`` and the value found). ``lenient`` (a newer
    minor version): unknown fields allowed.

    The checks are the schema compiled to Python (``schema_check``, generated by
    tools/gen_validator.py): the errors, paths and messages of jsonschema's Draft 2020-12
    validator, which tests/test_schema_check.py runs beside it; without its import."""
    from .schema_check import errors as schema_errors

    errors = sorted(schema_errors(data, lenient), key=lambda e: e[0])
    if errors:
        lines = []
        for path, message, *_ in errors[:5]:
            where = "/".join(str(p) for p in path) or "(top level)"
            lines.append(f"  at {where}: {message}")
        more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
        path, _, keyword, expected, got = errors[0]
        raise ManifestError(
            "manifest fails the JSON Schema:\n" + "\n".join(lines) + more,
            field="/".join(str(p) for p in path), expected={keyword: expected}, got=got,
        )  # fmt: skip


def dumps_canonical(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


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


def schema_fingerprint(major: int = FORMAT_VERSION[0]) -> str:
    """SHA-256 of the schema's structure: descriptions and titles are left out, so editing
    documentation never forces a version bump, while any structural change does."""
    import hashlib

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("description", "title")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    canonical = json.dumps(strip(load_schema(major)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
