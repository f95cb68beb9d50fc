"""The one derivation: torch.export's serialized program JSON -> the manifest's interface
(inputs, outputs, symbols, guards, pytrees, names). No torch.

torch.export writes a program as JSON (``torch/_export/serde/schema.py``): the graph's
tensor metadata (dtype enum, sizes as ints or sympy expressions with example hints), the
signature (user inputs, constants, outputs), the range constraints, the call's pytree specs
and its guards. That is everything a manifest needs. ``save`` serializes a program
(``program/serialize.py``) and derives from those bytes; ``migrate`` and ``inspect`` derive from the
JSON inside a ``torch.export.save`` file: the same function, so the same program gives the
same manifest bytes by every route. Range overrides (``ranges=`` at save) live here too.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import MigrationError, RangeOverrideError
from ..format.guards import from_torch as guards_from_torch
from ..format.guards import sources as guard_sources
from ..format.manifest import (
    DimExpr,
    Guard,
    Interface,
    IOSpec,
    Kind,
    Symbol,
    Tree,
    memory_format_of,
    opt_rule,
    parse_dim,
    symbol_name,
)
from ..format.pytree import leaf_paths, output_names
from .serde import NOT_IN_MANIFEST, SCALAR_TYPES

_UNBOUNDED = 2**62  # torch writes int_oo as a huge int in some versions


# --- sympy expressions as torch writes them (srepr, or plain text in older files) ------------


@dataclass(frozen=True)
class Linear:
    """``sum(coef * symbol) + const``; ``terms`` None when the expression is not linear."""

    terms: dict[str, int] | None
    const: int = 0
    text: str = ""


def parse_expr(text: str) -> Linear:
    """``Symbol('s31', ...)``, ``Mul(Integer(2), Symbol(...))``, ``Add(..., Integer(1))``, or
    plain ``s31``, ``2*s31 + 1``: parsed with ``ast`` (nothing is evaluated)."""
    try:
        node = ast.parse(text, mode="eval").body
        return _linear(node, text)
    except (SyntaxError, ValueError, RecursionError):
        return Linear(None, 0, text)


def _linear(node: ast.AST, text: str) -> Linear:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return Linear({}, node.value, text)
    if isinstance(node, ast.Name):
        return Linear({node.id: 1}, 0, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        fn, args = node.func.id, node.args
        if fn == "Symbol" and args and isinstance(args[0], ast.Constant):
            return Linear({str(args[0].value): 1}, 0, text)
        if fn == "Integer" and args and isinstance(args[0], ast.Constant):
            value = args[0].value
            if isinstance(value, int):
                return Linear({}, value, text)
        if fn in ("Add", "Mul"):
            parts = [_linear(a, text) for a in args]
            return _add(parts, text) if fn == "Add" else _mul(parts, text)
        return Linear(None, 0, text)
    if isinstance(node, ast.BinOp):
        left, right = _linear(node.left, text), _linear(node.right, text)
        if isinstance(node.op, ast.Add):
            return _add([left, right], text)
        if isinstance(node.op, ast.Sub):
            return _add([left, _mul([Linear({}, -1, text), right], text)], text)
        if isinstance(node.op, ast.Mult):
            return _mul([left, right], text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _mul([Linear({}, -1, text), _linear(node.operand, text)], text)
    return Linear(None, 0, text)


def _add(parts: list[Linear], text: str) -> Linear:
    if any(p.terms is None for p in parts):
        return Linear(None, 0, text)
    terms: dict[str, int] = {}
    for p in parts:
        for s, c in (p.terms or {}).items():
            terms[s] = terms.get(s, 0) + c
    return Linear({s: c for s, c in terms.items() if c}, sum(p.const for p in parts), text)


def _mul(parts: list[Linear], text: str) -> Linear:
    if any(p.terms is None for p in parts) or sum(1 for p in parts if p.terms) > 1:
        return Linear(None, 0, text)
    factor = 1
    for p in parts:
        if not p.terms:
            factor *= p.const
    symbolic = next((p for p in parts if p.terms), None)
    if symbolic is None:
        return Linear({}, factor, text)
    terms = symbolic.terms or {}
    return Linear({s: c * factor for s, c in terms.items()}, symbolic.const * factor, text)


def _sym_int(value: dict) -> tuple[int | None, Linear | None, int | None]:
    """A serialized SymInt: (int value, expression, example hint)."""
    if "as_int" in value:
        return int(value["as_int"]), None, None
    expr = value.get("as_expr") or {}
    hint = expr.get("hint") or {}
    return None, parse_expr(expr.get("expr_str", "")), hint.get("as_int")


# --- pytree specs ----------------------------------------------------------------------------


def tree_from_json(spec: Any, namedtuple_fields: dict[str, Any] | None = None) -> Tree:
    """torch's ``treespec_dumps`` JSON -> manifest tree."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    if isinstance(spec, list):  # [protocol, node]
        spec = spec[1]
    if not isinstance(spec, dict):
        raise MigrationError(f"a pytree spec is not an object: {str(spec)[:80]!r}")
    kind = spec.get("type")
    if kind is None:
        return {"type": "leaf"}
    children = [tree_from_json(c, namedtuple_fields) for c in spec.get("children_spec", [])]
    context = spec.get("context")
    try:  # a JSON document, except for namedtuples, whose context is their type name
        ctx = json.loads(context) if isinstance(context, str) else context
    except ValueError:
        ctx = context
    if kind == "builtins.tuple":
        return {"type": "tuple", "children": children}
    if kind == "builtins.list":
        return {"type": "list", "children": children}
    if kind in ("builtins.dict", "collections.OrderedDict"):
        return {"type": "dict", "keys": list(ctx or []), "children": children}
    if kind == "builtins.NoneType":
        return {"type": "none", "children": []}
    if kind == "collections.namedtuple":
        fields = ((namedtuple_fields or {}).get(str(ctx)) or {}).get("field_names")
        if fields is not None:
            return {"type": "namedtuple", "name": ctx, "fields": list(fields), "children": children}
    node: Tree = {"type": "custom", "name": kind, "children": children}
    if context is not None:
        node["context"] = context if isinstance(context, str) else json.dumps(context)
    return node


# --- the interface -----------------------------------------------------------------------------


class _Names:
    """torch symbol -> manifest name: ``<input>_dim<i>`` at the symbol's first appearance."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def name(self, sym: str, input_name: str, dim: int | None) -> str:
        if sym not in self.names:
            self.names[sym] = symbol_name(input_name, dim, self.names.values())
        return self.names[sym]


class SerializedProgram:
    """torch.export's serialized program (a parsed ``model.json``)."""

    def __init__(self, data: dict[str, Any], *, where: str) -> None:
        try:
            self.where = where
            self.data = data
            self.module = data["graph_module"]
            self.graph = self.module["graph"]
            self.signature = self.module["signature"]
            self.call = self.module["module_call_graph"][0]["signature"]
            self.tensors: dict[str, dict] = self.graph.get("tensor_values", {})
            self.sym_ints: dict[str, dict] = self.graph.get("sym_int_values", {})
            version = data.get("schema_version") or {}
            self.schema = (int(version.get("major", 0)), int(version.get("minor", 0)))
            self.torch_version: str | None = data.get("torch_version")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise MigrationError(
                f"{where}: not a torch.export program JSON (missing {e})"
            ) from None
        self.ranges: dict[str, tuple[int, int | None]] = {}
        for sym, r in (data.get("range_constraints") or {}).items():
            if sym.isidentifier():
                hi = r.get("max_val")
                lo = r.get("min_val")
                self.ranges[sym] = (
                    max(int(lo), 0) if lo is not None else 0,
                    None if hi is None or int(hi) >= _UNBOUNDED else int(hi),
                )

    # -- inputs and outputs ------------------------------------------------------------------

    def user_inputs(self) -> list[tuple[Any, Any]]:
        """(name, argument) of each user input, in order, constants included."""
        out = []
        for spec in self.signature["input_specs"]:
            if "user_input" in spec:
                arg = spec["user_input"]["arg"]
                if not isinstance(arg, dict) or len(arg) != 1:  # a union: exactly one field
                    raise MigrationError(
                        f"{self.where}: a user input's argument is not a one-field union: "
                        f"{str(arg)[:80]!r}"
                    )
                value = next(iter(arg.values()))
                name = value.get("name") if isinstance(value, dict) else None
                if "as_sym_int" in arg:
                    name = value.get("as_name") if isinstance(value, dict) else None
                out.append((name, arg))
            elif "constant_input" in spec:
                c = spec["constant_input"]
                out.append((c["name"], c["value"]))
        return out

    def custom_objects(self) -> dict[str, str]:
        """placeholder name -> constant FQN of lifted custom objects (engines)."""
        out = {}
        for spec in self.signature["input_specs"]:
            if "custom_obj" in spec:
                c = spec["custom_obj"]
                out[c["arg"]["name"]] = c["custom_obj_name"]
        return out

    def interface(self) -> tuple[Interface, dict[str, str]]:
        """The manifest's interface, and the torch-symbol -> manifest-name map."""
        fields = self.module.get("treespec_namedtuple_fields") or {}
        input_tree = tree_from_json(self.call["in_spec"], fields)
        output_tree = tree_from_json(self.call["out_spec"], fields)
        names = _Names()
        hints: dict[str, int] = {}
        inputs = []
        users = self.user_inputs()
        paths = leaf_paths(input_tree, "call")
        if len(paths) != len(users):
            raise MigrationError(
                f"{self.where}: the input spec has {len(paths)} leaves, the signature "
                f"{len(users)} user inputs"
            )
        for (name, arg), path in zip(users, paths):
            inputs.append(self._input(name, arg, path, names, hints))
        symbols = {}
        for sym, name in names.names.items():
            lo, hi = self.ranges.get(sym, (0, None))
            opt = hints.get(sym)
            if opt is not None and lo <= opt and (hi is None or opt <= hi):
                symbols[name] = Symbol(lo, hi, opt, "example")
            else:
                symbols[name] = Symbol(lo, hi, opt_rule(lo, hi), "rule")
        values = {s: hints.get(s, symbols[n].opt) for s, n in names.names.items()}
        inputs = [
            IOSpec(**{**i.__dict__, "memory_format": self._memory_format(i.name, values)})
            if i.is_tensor
            else i
            for i in inputs
        ]
        out_paths = leaf_paths(output_tree, "output")
        user_outputs = [s["user_output"]["arg"] for s in self.signature["output_specs"]
                        if "user_output" in s]  # fmt: skip
        if len(out_paths) != len(user_outputs):
            raise MigrationError(
                f"{self.where}: the output spec has {len(out_paths)} leaves, the signature "
                f"{len(user_outputs)} user outputs"
            )
        outputs = [
            IOSpec(**{**self._output(a, p, names.names).__dict__, "name": n})
            for a, p, n in zip(user_outputs, out_paths, output_names(out_paths))
        ]
        iface = Interface(tuple(inputs), tuple(outputs), dict(sorted(symbols.items())),
                          input_tree, output_tree, self.guards(inputs))  # fmt: skip
        return iface, dict(names.names)

    def guards(self, inputs: list[IOSpec]) -> tuple[Guard, ...]:
        """The program's input guards (its ``guards_code``) in the manifest's language."""
        codes = self.data.get("guards_code") or []
        if not isinstance(codes, list):
            raise MigrationError(f"{self.where}: guards_code is not a list")
        arg_names = self.call.get("forward_arg_names") or []
        names = guard_sources([(i.name, i.path) for i in inputs], arg_names)
        found = guards_from_torch(codes, names, inputs, where=f"{self.where}: guards_code")
        return tuple(Guard(source=text, expr=expr) for text, expr in found)

    def _input(self, name: str, arg: dict, path: str, names: _Names, hints: dict) -> IOSpec:
        if "as_tensor" in arg:
            meta = self.tensors.get(name)
            if meta is None:
                raise MigrationError(f"{self.where}: input {name!r} has no tensor metadata")
            shape: list[int | str] = []
            for i, size in enumerate(meta["sizes"]):
                value, expr, hint = _sym_int(size)
                if expr is None:
                    shape.append(int(value or 0))
                    continue
                shape.append(self._input_dim(expr, hint, name, i, names, hints))
            return IOSpec(name=name, path=path, kind="tensor", dtype=self.dtype(meta, name),
                          shape=tuple(shape))  # fmt: skip
        if "as_sym_int" in arg:
            meta = self.sym_ints.get(name, {})
            _, expr, hint = _sym_int(meta) if meta else (None, None, None)
            if expr is None:
                raise MigrationError(f"{self.where}: dynamic int input {name!r} has no symbol")
            return IOSpec(name=name, path=path, kind="int",
                          symbol=self._input_dim(expr, hint, name, None, names, hints))  # fmt: skip
        kind, value = _constant(arg, f"{self.where}: input {name!r}")
        return IOSpec(name=name, path=path, kind=kind, value=value)

    def _input_dim(self, expr: Linear, hint: int | None, name: str, dim: int | None,
                   names: _Names, hints: dict) -> str:  # fmt: skip
        if expr.terms is None or len(expr.terms) != 1:
            raise MigrationError(
                f"{self.where}: input {name!r} dim {dim} is {expr.text!r}; trtpack supports dims "
                "of the form a*s+b"
            )
        ((sym, coef),) = expr.terms.items()
        root = DimExpr(names.name(sym, name, dim), coef, expr.const)
        if hint is not None and sym not in hints:
            solved = root.solve(hint)
            if solved is not None:
                hints[sym] = solved
        return str(root)

    def _output(self, arg: dict, path: str, names: dict[str, str]) -> IOSpec:
        if "as_tensor" in arg:
            name = arg["as_tensor"]["name"]
            meta = self.tensors.get(name)
            if meta is None:
                raise MigrationError(f"{self.where}: output {name!r} has no tensor metadata")
            shape = tuple(self.dim_text(s, names) for s in meta["sizes"])
            return IOSpec(name=name, path=path, kind="tensor", dtype=self.dtype(meta, name),
                          shape=shape)  # fmt: skip
        if "as_sym_int" in arg:
            return IOSpec(name=arg["as_sym_int"].get("as_name") or path, path=path, kind="int")
        kind, value = _constant(arg, f"{self.where}: output {path}")
        return IOSpec(name=path, path=path, kind=kind, value=value)

    def dim_text(self, size: dict, names: dict[str, str]) -> int | str:
        """A size as the manifest writes it: an int, or an expression in manifest names."""
        value, expr, _ = _sym_int(size)
        if expr is None:
            return value  # type: ignore[return-value]
        if expr.terms is not None and len(expr.terms) == 1:
            ((sym, coef),) = expr.terms.items()
            return str(DimExpr(names.get(sym, sym), coef, expr.const))
        if expr.terms is not None:
            parts = [f"{c}*{names.get(s, s)}" if c != 1 else names.get(s, s)
                     for s, c in expr.terms.items()]  # fmt: skip
            text = "+".join(parts) + (f"{expr.const:+d}" if expr.const else "")
            return text.replace("+-", "-")
        return re.sub(r"[^A-Za-z0-9_*+\-() ]", "", expr.text) or "?"

    def evaluate(self, size: dict, values: dict[str, int]) -> int | None:
        value, expr, _ = _sym_int(size)
        if expr is None:
            return value
        if expr.terms is None or any(s not in values for s in expr.terms):
            return None
        return sum(c * values[s] for s, c in expr.terms.items()) + expr.const

    def dtype(self, meta: dict, name: str) -> str:
        code = meta.get("dtype")
        dtype = SCALAR_TYPES.get(code) if isinstance(code, int) else None
        if dtype is None or dtype in NOT_IN_MANIFEST:
            raise MigrationError(
                f"{self.where}: {name!r} has dtype code {meta.get('dtype')}, unknown"
            )
        return dtype

    def _memory_format(self, name: str, values: dict[str, int]) -> str:
        meta = self.tensors[name]
        sizes = [self.evaluate(s, values) for s in meta["sizes"]]
        strides = [self.evaluate(s, values) for s in meta.get("strides", [])]
        if None in sizes or None in strides or len(strides) != len(sizes):
            return "contiguous"
        return memory_format_of(sizes, strides)  # type: ignore[arg-type]


def _constant(arg: dict, where: str) -> tuple[Kind, Any]:
    pairs: tuple[tuple[str, Kind], ...] = (("as_none", "none"), ("as_bool", "bool"),
                                           ("as_int", "int"), ("as_float", "float"),
                                           ("as_string", "str"))  # fmt: skip
    for key, kind in pairs:
        if key in arg:
            return kind, None if kind == "none" else arg[key]
    found = next(iter(arg), "empty")
    raise MigrationError(f"{where} is {found}; not a storable constant")


# --- the entry point ---------------------------------------------------------------------


def derive_from_graph(
    graph: bytes | dict[str, Any], *, where: str
) -> tuple[Interface, dict[str, str]]:
    """The interface of a serialized program, and torch's symbol name -> the manifest's.
    ``graph`` is torch.export's JSON (bytes, or already parsed)."""
    from ..format.limits import loads

    data = loads(bytes(graph), where, MigrationError) if not isinstance(graph, dict) else graph
    return SerializedProgram(data, where=where).interface()


def keep_opts(iface: Interface, recorded: Interface) -> Interface:
    """``iface`` with the opts a pack's manifest chose (``recorded``: the interface of the pack
    a program was loaded from), matched by input and dim; a kept opt must lie in the range."""
    kept: dict[str, Symbol] = {}
    old_inputs = {spec.name: spec for spec in recorded.inputs}
    for spec in iface.inputs:
        before = old_inputs.get(spec.name)
        if before is None:
            continue
        pairs = list(zip(spec.shape or (), before.shape or ()))
        if spec.symbol is not None and before.symbol is not None:
            pairs.append((spec.symbol, before.symbol))
        for now, then in pairs:
            if isinstance(now, str) and isinstance(then, str):
                a, b = parse_dim(now), parse_dim(then)
                if (a.coef, a.offset) == (b.coef, b.offset) and b.symbol in recorded.symbols:
                    kept.setdefault(a.symbol, recorded.symbols[b.symbol])
    symbols = dict(iface.symbols)
    for name, old_sym in kept.items():
        now_sym = symbols.get(name)
        if (
            now_sym is not None
            and now_sym.min <= old_sym.opt
            and (now_sym.max is None or old_sym.opt <= now_sym.max)
        ):
            symbols[name] = Symbol(now_sym.min, now_sym.max, old_sym.opt, old_sym.opt_source)
    return dataclasses.replace(iface, symbols=symbols)


#: What a user may pass to override a symbol's range at save.
RangeLike = Any  # Range | tuple[min, max] | tuple[min, max, opt] | Mapping with min/max/opt


@dataclass(frozen=True)
class Range:
    """A symbol's range for ``trtpack.save(..., ranges={"batch": Range(1, 32, opt=8)})``."""

    min: int | None = None
    max: int | None = None
    opt: int | None = None


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
