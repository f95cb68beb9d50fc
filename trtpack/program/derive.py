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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ManifestError, MigrationError, RangeOverrideError, UnsafePackError
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
from .serde import NOT_IN_MANIFEST, SCALAR_TYPES, SCHEMA_MAJOR

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
        if fn == "Integer" and len(args) == 1:
            # srepr writes a negative integer as Integer(-1): a unary minus on a constant
            value = _int_literal(args[0])
            if value is not None:
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


def _int_literal(node: ast.AST) -> int | None:
    """``3`` or ``-3`` as an int (bool is not an int here)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sign * node.value
    return None


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
    """torch symbol -> manifest name at the symbol's first appearance: the user's ``Dim``
    name where the caller knows it (``user``: torch symbol -> name; a live program's shape
    environment), else ``<input>_dim<i>``; unique either way."""

    def __init__(self, user: Mapping[str, str] | None = None) -> None:
        self.names: dict[str, str] = {}
        self.user = user or {}

    def name(self, sym: str, input_name: str, dim: int | None) -> str:
        if sym not in self.names:
            user = self.user.get(sym)
            self.names[sym] = symbol_name(input_name, dim, self.names.values(), user=user)
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
        if "schema_version" in data and self.schema[0] != SCHEMA_MAJOR:
            # a major bump removes or renames fields: read as 8.x, such a program would be
            # described wrongly, not refused
            raise MigrationError(
                f"{where}: torch.export schema {self.schema[0]}.{self.schema[1]} (written by "
                f"torch {self.torch_version or 'unknown'}): trtpack reads schema major "
                f"{SCHEMA_MAJOR} only; export and save with a torch whose schema major is "
                f"{SCHEMA_MAJOR}, or upgrade trtpack"
            )
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

    def interface(
        self, user_names: Mapping[str, str] | None = None
    ) -> tuple[Interface, dict[str, str]]:
        """The manifest's interface, and the torch-symbol -> manifest-name map (``user_names``:
        see :func:`derive_from_graph`)."""
        fields = self.module.get("treespec_namedtuple_fields") or {}
        input_tree = tree_from_json(self.call["in_spec"], fields)
        output_tree = tree_from_json(self.call["out_spec"], fields)
        names = _Names(user_names)
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
        guards = [Guard(source=text, expr=expr) for text, expr in found]
        # the graph's runtime assertions over input sizes are preconditions too (torch
        # 2.14's shapes API exports ``assumptions=[B % 16 == 0]`` only as such asserts): kept
        # as guards, so a call that breaks one is refused by the contract with the input named
        seen = {g.expr for g in guards if g.expr}
        for message, text in self.input_assertions():
            try:
                ((_, expr),) = guards_from_torch(
                    [text], names, inputs, where=f"{self.where}: {message}"
                )
            except (ManifestError, UnsafePackError):  # beyond the guard language's limits:
                continue  # the program's own assertion still checks it
            if expr is not None and expr not in seen:
                seen.add(expr)
                guards.append(Guard(source=message, expr=expr))
        return tuple(guards)

    def input_assertions(self) -> list[tuple[str, str]]:
        """``(torch's expression, the same in torch's guard text)`` of each top-level
        ``_assert_scalar`` whose condition is computed from the call's input sizes and ints
        alone (``sym_size``/``sym_stride`` of a user input, Python arithmetic, comparisons).
        Assertions over anything else (a value read from a tensor) stay the program's own."""
        flat = {name: f"L['flat_args'][{i}]" for i, (name, _) in enumerate(self.user_inputs())
                if isinstance(name, str)}  # fmt: skip
        known: dict[str, str] = {}  # a sym node's output name -> its text over the inputs
        found: list[tuple[str, str]] = []

        def value(arg: Any) -> str | None:
            if not isinstance(arg, dict) or len(arg) != 1:
                return None
            kind, v = next(iter(arg.items()))
            if kind in ("as_int", "as_bool") and type(v) in (int, bool):
                return repr(int(v)) if kind == "as_int" else repr(v)
            if kind in ("as_sym_int", "as_sym_bool") and isinstance(v, dict):
                name = v.get("as_name")
                return (flat.get(name) or known.get(name)) if isinstance(name, str) else None
            return None

        nodes = self.graph.get("nodes")
        for node in nodes if isinstance(nodes, list) else ():
            if not isinstance(node, dict):
                continue  # the graph check refuses such a graph; derive only skips it
            target = node.get("target")
            inputs = node.get("inputs")
            args = [i.get("arg") if isinstance(i, dict) else None
                    for i in (inputs if isinstance(inputs, list) else ())]  # fmt: skip
            outs = node.get("outputs")
            outs = outs if isinstance(outs, list) else []
            out: dict[str, Any] = outs[0] if len(outs) == 1 and isinstance(outs[0], dict) else {}
            out_value = next(iter(out.values())) if len(out) == 1 else None
            out_name = out_value.get("as_name") if isinstance(out_value, dict) else None
            text: str | None = None
            if target in _SIZE_OPS and len(args) == 2:
                first = args[0] if isinstance(args[0], dict) else {}
                tensor = first.get("as_tensor")
                tensor = tensor.get("name") if isinstance(tensor, dict) else None
                dim = value(args[1]) or ""
                if isinstance(tensor, str) and tensor in flat and dim.lstrip("-").isdigit():
                    text = f"{flat[tensor]}.{_SIZE_OPS[target]}()[{dim}]"
            elif target in _SYM_BINARY and len(args) == 2:
                a, b = value(args[0]), value(args[1])
                if a is not None and b is not None:
                    text = f"({a} {_SYM_BINARY[target]} {b})"
            elif target == "_operator.neg" and len(args) == 1:
                a = value(args[0])
                text = f"(-{a})" if a is not None else None
            elif target == "torch.sym_not" and len(args) == 1:
                a = value(args[0])
                text = f"(not {a})" if a is not None else None
            elif target == "torch.ops.aten._assert_scalar.default" and args:
                cond = value(args[0])
                message = value_of_string(args[1]) if len(args) > 1 else None
                if cond is not None:
                    found.append((_assertion_expression(message) or cond, cond))
            if text is not None and len(text) <= _MAX_ASSERTION and isinstance(out_name, str):
                known[out_name] = text  # bounded: a long chain of ops stops being followed
        return found

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


#: ops that read an input's size: the serialized target -> the method torch's guards call
_SIZE_OPS = {"torch.ops.aten.sym_size.int": "size", "torch.ops.aten.sym_stride.int": "stride"}
#: Python's operators on SymInts/SymBools as torch serializes them -> the operator's text
_SYM_BINARY = {
    "_operator.add": "+", "_operator.sub": "-", "_operator.mul": "*", "_operator.floordiv": "//",
    "_operator.mod": "%", "_operator.eq": "==", "_operator.ne": "!=", "_operator.lt": "<",
    "_operator.le": "<=", "_operator.gt": ">", "_operator.ge": ">=", "_operator.and_": "and",
    "_operator.or_": "or",
}  # fmt: skip
#: the longest expression followed through the graph (a guard's text is capped at 10,000)
_MAX_ASSERTION = 4096
_ASSERTION = re.compile(r"Runtime assertion failed for expression (.+) on node '[^']*'$")


def value_of_string(arg: Any) -> str | None:
    """A serialized ``as_string`` argument's text, else None."""
    if isinstance(arg, dict) and isinstance(arg.get("as_string"), str):
        return arg["as_string"]
    return None


def _assertion_expression(message: str | None) -> str | None:
    """torch's expression in an ``_assert_scalar`` message (``Eq(Mod(u0, 16), 0)``)."""
    match = _ASSERTION.match(message or "")
    return match.group(1)[:200] if match else None


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
    graph: bytes | dict[str, Any], *, where: str, user_names: Mapping[str, str] | None = None
) -> tuple[Interface, dict[str, str]]:
    """The interface of a serialized program, and torch's symbol name -> the manifest's.
    ``graph`` is torch.export's JSON (bytes, or already parsed). ``user_names``: torch's
    symbol name -> the user's ``Dim`` name, where the live program knows them (save,
    compile); the JSON does not keep them, so ``migrate`` names symbols ``<input>_dim<i>``."""
    from ..format.limits import loads
    from .gcpause import paused_gc

    data = graph
    if not isinstance(data, dict):
        with paused_gc():
            data = loads(bytes(data), where, MigrationError)
    return SerializedProgram(data, where=where).interface(user_names)


def _matched_symbols(iface: Interface, recorded: Interface) -> Iterator[tuple[str, str]]:
    """(symbol in ``iface``, symbol in ``recorded``) for each dim of the same input at the same
    place with the same ``a*s+b`` form: how a reloaded program's symbols meet its pack's."""
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
                if (a.coef, a.offset) == (b.coef, b.offset):
                    yield a.symbol, b.symbol


def recorded_names(
    iface: Interface, by_torch: Mapping[str, str], recorded: Interface
) -> dict[str, str]:
    """torch symbol -> the name a pack's manifest gave it (``recorded``: the interface of the
    pack a program was loaded from), matched by input and dim as :func:`keep_opts` matches."""
    kept: dict[str, str] = {}
    for now, then in _matched_symbols(iface, recorded):
        kept.setdefault(now, then)
    return {t: kept[n] for t, n in by_torch.items() if n in kept}


def keep_opts(iface: Interface, recorded: Interface) -> Interface:
    """``iface`` with the opts a pack's manifest chose (``recorded``: the interface of the pack
    a program was loaded from), matched by input and dim; a kept opt must lie in the range."""
    kept: dict[str, Symbol] = {}
    for now, then in _matched_symbols(iface, recorded):
        if then in recorded.symbols:
            kept.setdefault(now, recorded.symbols[then])
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
