"""The manifest: the :class:`Manifest` record, its cross-field check and JSON in and out,
validated by ``schema/``. No torch.

The JSON Schema in ``schema/manifest.v<major>.schema.json`` is the source of truth; the
dataclasses mirror it field for field (``tests/test_manifest.py`` proves it). A field with a
default is optional in the schema and omitted from the JSON while it holds ``None``.

The one name the rest of trtpack imports the manifest by; the code lives by job:
:mod:`.records` (the other records, their JSON values), :mod:`.dims` (dim expressions),
:mod:`.profiles` (engine-profile maths) and :mod:`.schema` (the format version, the JSON
Schema, validation, canonical JSON). ``check_version`` stays here, beside ``Manifest.from_dict``
that calls it, reading this module's ``FORMAT_VERSION``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError, UnsupportedVersionError
from .dims import DimExpr, memory_format_of, opt_rule, parse_dim, symbol_name
from .profiles import input_profile, narrowed_ranges, profile_boxes, whole_graph_mismatch
from .pytree import Tree, leaf_paths
from .records import (
    DEFAULT_ENTRY_POINT,
    Binding,
    Dim,
    EngineSpec,
    EntryPoint,
    Flavor,
    Guard,
    Interface,
    IOSpec,
    Kind,
    Member,
    MemberChunks,
    OptSource,
    Producer,
    ProgramRef,
    Samples,
    State,
    StateTensor,
    StateUse,
    Symbol,
    Target,
    Tolerance,
    Variant,
    _from_json_value,
    _to_json_value,
)
from .schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    dumps_canonical,
    load_schema,
    schema_fingerprint,
    schema_path,
    validate,
)

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Binding",
    "Dim",
    "DimExpr",
    "EngineSpec",
    "EntryPoint",
    "Flavor",
    "Guard",
    "IOSpec",
    "Interface",
    "Kind",
    "Manifest",
    "Member",
    "MemberChunks",
    "OptSource",
    "Producer",
    "ProgramRef",
    "Samples",
    "State",
    "StateTensor",
    "StateUse",
    "Symbol",
    "Target",
    "Tolerance",
    "Tree",
    "Variant",
    "check_version",
    "dumps_canonical",
    "input_profile",
    "load_schema",
    "memory_format_of",
    "narrowed_ranges",
    "opt_rule",
    "parse_dim",
    "profile_boxes",
    "schema_fingerprint",
    "schema_path",
    "symbol_name",
    "validate",
    "whole_graph_mismatch",
]


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


def _fmt_max(v: int | None) -> str:
    return "inf" if v is None else str(v)


def _count_leaves(tree: Tree) -> int:
    if tree["type"] == "leaf":
        return 1
    return sum(_count_leaves(c) for c in tree.get("children", ()))


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
