"""ExportedProgram -> the manifest's description of inputs, outputs and symbols.

Nothing here needs the user's inputs: names and call order come from the graph signature
and the input pytree spec, dtypes and symbolic shapes from the placeholders' fake tensors,
ranges from ``ep.range_constraints``, opt from the example inputs torch.export kept, and the
user's ``Dim`` names from the shape environment of a freshly exported program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import (
    ConstantArgument,
    InputKind,
    OutputKind,
    SymIntArgument,
    TensorArgument,
)
from torch.utils._sympy.numbers import int_oo

from . import tree as trees
from .errors import DeriveError, RangeOverrideError
from .manifest import (
    DimExpr,
    Guard,
    Interface,
    IOSpec,
    Symbol,
    memory_format_of,
    opt_rule,
    parse_dim,
    symbol_name,
)

#: What a user may pass to override a symbol's range at save.
RangeLike = Any  # Range | tuple[min, max] | tuple[min, max, opt] | Mapping with min/max/opt


#: ``graph_module.meta`` key where ``trtpack.load`` records the manifest's symbols by torch's
#: symbol name, so that saving a loaded program keeps the user's names and opts.
SYMBOLS_META_KEY = "trtpack_symbols"


@dataclass(frozen=True)
class Range:
    """A symbol's range for ``trtpack.save(..., ranges={"batch": Range(1, 32, opt=8)})``."""

    min: int | None = None
    max: int | None = None
    opt: int | None = None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise DeriveError(f"unknown dtype {name!r}")
    return dtype


# --- the entry point ---------------------------------------------------------------------


def derive_interface(
    ep: ExportedProgram, *, ranges: Mapping[str, RangeLike] | None = None
) -> Interface:
    """Describe ``ep``'s inputs, outputs and dynamic dims, applying range overrides (keyed
    by manifest symbol name or by the user's ``Dim`` name)."""
    iface, aliases = _derive(ep)
    return apply_ranges(iface, ranges, aliases) if ranges else iface


def _derive(ep: ExportedProgram) -> tuple[Interface, dict[str, str]]:
    if not isinstance(ep, ExportedProgram):
        raise DeriveError(f"expected a torch.export.ExportedProgram, got {type(ep).__name__}")
    in_spec, out_spec = ep.call_spec.in_spec, ep.call_spec.out_spec
    if in_spec is None or out_spec is None:
        raise DeriveError("the ExportedProgram has no call spec (in_spec/out_spec)")
    input_tree = trees.from_treespec(in_spec)
    output_tree = trees.from_treespec(out_spec)

    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    in_paths = trees.leaf_paths(input_tree, "call")
    if len(in_paths) != len(user_inputs):
        raise DeriveError(
            f"the input spec has {len(in_paths)} leaves but the graph has "
            f"{len(user_inputs)} user inputs"
        )

    namer = _SymbolNamer(ep)
    inputs = [
        _describe_input(spec.arg, path, placeholders, namer)
        for spec, path in zip(user_inputs, in_paths)
    ]
    symbols = _symbols(ep, namer, inputs)
    # Memory format is judged at the symbols' example sizes, known only now.
    inputs = [
        dataclasses.replace(
            i, memory_format=_memory_format(placeholders[i.name].meta["val"], namer)
        )
        if i.is_tensor
        else i
        for i in inputs
    ]

    out_paths = trees.leaf_paths(output_tree, "output")
    user_outputs = [s for s in ep.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    if len(out_paths) != len(user_outputs):
        raise DeriveError(
            f"the output spec has {len(out_paths)} leaves but the graph has "
            f"{len(user_outputs)} user outputs"
        )
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    produced = {a.name: a for a in output_node.args[0] if isinstance(a, torch.fx.Node)}
    outputs = [
        dataclasses.replace(_describe_output(spec.arg, path, produced, namer), name=name)
        for spec, path, name in zip(user_outputs, out_paths, trees.output_names(out_paths))
    ]
    iface = Interface(tuple(inputs), tuple(outputs), symbols, input_tree, output_tree,
                      _guards(ep, inputs))  # fmt: skip
    by_torch = {str(sym): name for sym, name in namer.names.items()}
    aliases = {
        user: next(by_torch[t] for t in syms if t in by_torch)
        for user, syms in namer.dim_aliases().items()
        if any(t in by_torch for t in syms)
    }
    return iface, aliases


def dim_aliases(ep: ExportedProgram) -> dict[str, str]:
    """The user's ``Dim`` names of ``ep`` -> the manifest's symbol names (for ``ranges=``)."""
    return _derive(ep)[1]


def _guards(ep: ExportedProgram, inputs: list[IOSpec]) -> tuple[Guard, ...]:
    """The program's input guards: the same torch-free translation that reads them from a
    serialized program (``guards_code``), so both paths give the same manifest."""
    from .guards import from_torch, sources

    codes = list(getattr(ep, "_guards_code", None) or [])
    arg_names = list(getattr(ep.module_call_graph[0].signature, "forward_arg_names", None) or [])
    return from_torch(codes, sources([(i.name, i.path) for i in inputs], arg_names))


# --- inputs ------------------------------------------------------------------------------


def _describe_input(arg: Any, path: str, placeholders: dict, namer: _SymbolNamer) -> IOSpec:
    if isinstance(arg, TensorArgument):
        fake = placeholders[arg.name].meta.get("val")
        if not isinstance(fake, torch.Tensor):
            raise DeriveError(f"input {arg.name!r} has no tensor metadata in the graph")
        shape = tuple(namer.dim(d, arg.name, i) for i, d in enumerate(fake.shape))
        return IOSpec(
            name=arg.name,
            path=path,
            kind="tensor",
            dtype=dtype_name(fake.dtype),
            shape=shape,
        )
    if isinstance(arg, SymIntArgument):
        sym = placeholders[arg.name].meta.get("val")
        return IOSpec(name=arg.name, path=path, kind="int", symbol=namer.dim(sym, arg.name, None))
    if isinstance(arg, ConstantArgument):
        return IOSpec(name=arg.name, path=path, kind=_kind(arg.value, arg.name), value=arg.value)
    raise DeriveError(
        f"input {getattr(arg, 'name', arg)!r} is a {type(arg).__name__}; trtpack describes "
        "tensors, ints, floats, bools, strings and None"
    )


def _kind(value: Any, name: str) -> str:
    for kind, types in (
        ("none", type(None)),
        ("bool", bool),
        ("int", int),
        ("float", float),
        ("str", str),
    ):
        if isinstance(value, types):
            return kind
    raise DeriveError(f"{name!r} is a {type(value).__name__}; not a storable constant")


def _memory_format(fake: torch.Tensor, namer: _SymbolNamer) -> str:
    """Judged from the strides at the symbols' example sizes, so no guard is ever evaluated."""
    sizes = [namer.example(d) for d in fake.shape]
    strides = [namer.example(s) for s in fake.stride()]
    if None in sizes or None in strides:
        return "contiguous"
    return memory_format_of(sizes, strides)  # type: ignore[arg-type]


# --- outputs -----------------------------------------------------------------------------


def _describe_output(arg: Any, path: str, produced: dict, namer: _SymbolNamer) -> IOSpec:
    if isinstance(arg, TensorArgument):
        node = produced.get(arg.name)
        fake = node.meta.get("val") if node is not None else None
        if isinstance(fake, torch.Tensor):
            shape = tuple(namer.output_dim(d) for d in fake.shape)
            return IOSpec(
                name=arg.name, path=path, kind="tensor", dtype=dtype_name(fake.dtype), shape=shape
            )
        raise DeriveError(f"output {arg.name!r} has no tensor metadata in the graph")
    if isinstance(arg, SymIntArgument):
        return IOSpec(name=arg.name, path=path, kind="int")
    if isinstance(arg, ConstantArgument):
        name = arg.name or path
        return IOSpec(name=name, path=path, kind=_kind(arg.value, name), value=arg.value)
    raise DeriveError(f"output {path} is a {type(arg).__name__}; not describable")


# --- symbols -----------------------------------------------------------------------------


class _SymbolNamer:
    """Maps torch's sympy symbols (``s31``) to manifest names: ``<input>_dim<i>`` at the
    symbol's first appearance — what the torch-free reader of a serialized program gives, since
    torch.export's JSON does not keep the user's ``Dim`` names (so ``save`` and ``migrate`` of
    the same program agree). A program loaded from a pack keeps the pack's names. The user's
    Dim names stay usable as aliases in ``ranges=`` (``dim_aliases``)."""

    def __init__(self, ep: ExportedProgram) -> None:
        self.ep = ep
        self.names: dict[sympy.Symbol, str] = {}
        self.example_values: dict[sympy.Symbol, int] = {}
        self._shape_env = None
        self._examples = _example_leaves(ep)
        self._user_names = self._dim_names()

    def _dim_names(self) -> dict[str, str]:
        """torch symbol name -> the user's name, where one is known."""
        for node in self.ep.graph.nodes:
            val = node.meta.get("val")
            sizes = val.shape if isinstance(val, torch.Tensor) else [val]
            env = next((d.node.shape_env for d in sizes if isinstance(d, torch.SymInt)), None)
            if env is not None:
                self._shape_env = env
                break
        recorded = self.ep.graph_module.meta.get(SYMBOLS_META_KEY)
        if recorded:  # a program loaded from a pack: the manifest named its symbols
            return {sym: entry[0] for sym, entry in recorded.items()}
        return {}

    def dim_aliases(self) -> dict[str, list[str]]:
        """The user's Dim name -> the torch symbols it named (one Dim may have several before
        export unified them), where the shape environment knows it."""
        env = self._shape_env
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
        return out

    def _name_for(self, sym: sympy.Symbol, input_name: str, dim: int | None) -> str:
        if sym not in self.names:
            user = self._user_names.get(str(sym))
            self.names[sym] = symbol_name(input_name, dim, self.names.values(), user)
        return self.names[sym]

    def dim(self, d: Any, input_name: str, index: int | None) -> Any:
        """An input dim: an int, or the string of a linear expression of one symbol."""
        if not isinstance(d, torch.SymInt):
            return int(d)
        expr = d.node.expr
        if expr.is_number:
            return int(expr)
        if len(expr.free_symbols) != 1:
            raise DeriveError(
                f"input {input_name!r} dim {index} is {expr}, which depends on several "
                "symbols; trtpack supports dims of the form a*s+b"
            )
        (root,) = expr.free_symbols
        coef, offset = _linear(expr, root, input_name, index)
        name = self._name_for(root, input_name, index)
        return str(DimExpr(name, coef, offset))

    def output_dim(self, d: Any) -> Any:
        if not isinstance(d, torch.SymInt):
            return int(d)
        expr = d.node.expr
        if expr.is_number:
            return int(expr)
        subs = {s: sympy.Symbol(self.names[s]) for s in expr.free_symbols if s in self.names}
        return str(expr.xreplace(subs)).replace(" ", "")

    def example(self, d: Any) -> int | None:
        """The example value of a size or stride (for memory-format judgement)."""
        if not isinstance(d, torch.SymInt):
            return int(d)
        hint = d.node.hint
        if hint is not None:
            return int(hint)
        expr = d.node.expr
        values = {s: self.example_values.get(s) for s in expr.free_symbols}
        if None in values.values():
            return None
        return int(expr.xreplace(values))

    def recorded_symbol(self, sym: sympy.Symbol) -> Symbol | None:
        """The symbol as the manifest of the pack this program was loaded from had it."""
        entry = self.ep.graph_module.meta.get(SYMBOLS_META_KEY, {}).get(str(sym))
        return Symbol(**entry[1]) if entry else None


def _linear(expr: sympy.Expr, root: sympy.Symbol, name: str, index: int | None) -> tuple[int, int]:
    poly = sympy.Poly(expr, root) if expr.is_polynomial(root) else None
    if poly is None or poly.degree() != 1:
        raise DeriveError(f"input {name!r} dim {index} is {expr}; only a*s+b is supported")
    a, b = (int(c) for c in poly.all_coeffs())
    return a, b


def _example_leaves(ep: ExportedProgram) -> list[Any] | None:
    examples = getattr(ep, "example_inputs", None)
    if not examples:
        return None
    try:
        leaves, _ = torch.utils._pytree.tree_flatten(examples)
    except Exception:
        return None
    return leaves


def _symbols(ep: ExportedProgram, namer: _SymbolNamer, inputs: list[IOSpec]) -> dict[str, Symbol]:
    ranges: dict[Any, Any] = {}
    for sym, vr in ep.range_constraints.items():
        if isinstance(sym, sympy.Symbol):
            ranges[sym] = vr
    example = _example_root_values(namer, inputs)
    out: dict[str, Symbol] = {}
    for sym, name in namer.names.items():
        vr = ranges.get(sym)
        if vr is None and namer._shape_env is not None:
            vr = namer._shape_env.var_to_range.get(sym)
        lo = _bound(vr.lower) if vr is not None else 0
        hi = _bound(vr.upper) if vr is not None else None
        lo = 0 if lo is None or lo < 0 else lo
        opt_value = example.get(name)
        kept = namer.recorded_symbol(sym)
        if kept is not None and kept.min <= kept.opt and lo <= kept.opt:
            if hi is None or kept.opt <= hi:
                out[name] = Symbol(min=lo, max=hi, opt=kept.opt, opt_source=kept.opt_source)
                continue
        if opt_value is not None and lo <= opt_value and (hi is None or opt_value <= hi):
            out[name] = Symbol(min=lo, max=hi, opt=opt_value, opt_source="example")
        else:
            out[name] = Symbol(min=lo, max=hi, opt=opt_rule(lo, hi), opt_source="rule")
        if opt_value is not None:
            namer.example_values[sym] = opt_value
    return dict(sorted(out.items()))


def _bound(v: Any) -> int | None:
    """A range bound as an int; None for infinity (torch's ``int_oo`` or sympy's ``oo``)."""
    if v in (int_oo, -int_oo, sympy.oo, -sympy.oo):
        return None
    return int(v)


def _example_root_values(namer: _SymbolNamer, inputs: list[IOSpec]) -> dict[str, int]:
    """Each symbol's value in the example inputs torch.export kept (solving derived dims)."""
    values: dict[str, int] = {}
    leaves = namer._examples
    if leaves is not None and len(leaves) == len(inputs):
        for spec, leaf in zip(inputs, leaves):
            if spec.kind == "tensor" and isinstance(leaf, torch.Tensor):
                if leaf.dim() != len(spec.shape or ()):
                    continue
                for dim, size in zip(spec.shape or (), leaf.shape):
                    if isinstance(dim, str):
                        expr = parse_dim(dim)
                        root = expr.solve(int(size))
                        if root is not None:
                            values.setdefault(expr.symbol, root)
            elif spec.kind == "int" and spec.symbol and isinstance(leaf, int):
                values.setdefault(parse_dim(spec.symbol).symbol, leaf)
    # Fall back on the shape environment's hints (present on a freshly exported program).
    for sym, name in namer.names.items():
        if name not in values and namer._shape_env is not None:
            hint = getattr(namer._shape_env, "backed_var_to_val", None)
            if hint is None:
                hint = namer._shape_env.var_to_val
            if sym in hint:
                values[name] = int(hint[sym])
    return values


# --- range overrides ----------------------------------------------------------------------


def _as_range(name: str, value: RangeLike) -> Range:
    if isinstance(value, Range):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max", "opt"}
        if unknown:
            raise RangeOverrideError(f"range for {name!r} has unknown keys {sorted(unknown)}")
        return Range(value.get("min"), value.get("max"), value.get("opt"))
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        return Range(*value)
    raise RangeOverrideError(
        f"range for {name!r} must be Range(min, max, opt), (min, max), (min, max, opt) or a "
        f"dict with min/max/opt; got {value!r}"
    )


def apply_ranges(
    iface: Interface, ranges: Mapping[str, RangeLike], aliases: Mapping[str, str] | None = None
) -> Interface:
    """Narrow symbols' ranges (or set opt). Widening the exported range is refused: the
    program was only proven correct inside it. A key may be a symbol's manifest name or, via
    ``aliases``, the user's ``Dim`` name for it."""
    symbols = dict(iface.symbols)
    for key, raw in ranges.items():
        name = key if key in symbols else (aliases or {}).get(key, key)
        if name not in symbols:
            known = ", ".join(sorted(symbols)) or "none"
            raise RangeOverrideError(f"no symbol named {name!r} (symbols: {known})")
        old = symbols[name]
        r = _as_range(name, raw)
        lo = old.min if r.min is None else r.min
        hi = old.max if r.max is None else r.max
        if lo < old.min or (old.max is not None and (hi is None or hi > old.max)):
            raise RangeOverrideError(
                f"range for {name!r} [{lo}, {_fmt(hi)}] widens the exported range "
                f"[{old.min}, {_fmt(old.max)}]; re-export with a wider torch.export.Dim instead"
            )
        if hi is not None and lo > hi:
            raise RangeOverrideError(f"range for {name!r}: min {lo} > max {hi}")
        if r.opt is not None:
            if r.opt < lo or (hi is not None and r.opt > hi):
                raise RangeOverrideError(f"opt {r.opt} for {name!r} is outside [{lo}, {_fmt(hi)}]")
            symbols[name] = Symbol(lo, hi, r.opt, "override")
        elif lo <= old.opt and (hi is None or old.opt <= hi):
            symbols[name] = Symbol(lo, hi, old.opt, old.opt_source)
        else:
            symbols[name] = Symbol(lo, hi, opt_rule(lo, hi), "rule")
    return dataclasses.replace(iface, symbols=symbols)


def _fmt(v: int | None) -> str:
    return "inf" if v is None else str(v)


def symbol_names(ep: ExportedProgram, inputs: tuple[IOSpec, ...]) -> dict[str, str]:
    """torch's symbol name (``s31``) -> the manifest's (``batch``), matched through the
    placeholders of ``ep``'s user inputs and the manifest's description of them."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    for spec in inputs:
        node = placeholders.get(spec.name)
        val = node.meta.get("val") if node is not None else None
        if spec.is_tensor and isinstance(val, torch.Tensor):
            pairs: list[tuple[Any, Any]] = list(zip(spec.shape or (), val.shape))
        elif spec.symbol is not None:
            pairs = [(spec.symbol, val)]
        else:
            continue
        for dim, actual in pairs:
            if isinstance(dim, str) and isinstance(actual, torch.SymInt):
                free = actual.node.expr.free_symbols
                if len(free) == 1:
                    names[str(next(iter(free)))] = parse_dim(dim).symbol
    return names


def annotate(
    ep: ExportedProgram, inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> None:
    """Record on a loaded program which torch symbol is which manifest symbol (see
    ``SYMBOLS_META_KEY``)."""
    ep.graph_module.meta[SYMBOLS_META_KEY] = {
        torch_name: (name, dataclasses.asdict(symbols[name]))
        for torch_name, name in symbol_names(ep, inputs).items()
        if name in symbols
    }
