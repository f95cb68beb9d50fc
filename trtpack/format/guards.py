"""Input guards: the conditions torch.export recorded beyond plain ranges, as data. No torch.

torch.export keeps, beside ``range_constraints``, the guards its tracer relied on
(``guards_code`` in the serialized program): Python text over the call's inputs such as
``L['x'].size()[0] != 3``, ``(L['x'].size()[1] % 4) == 0`` or
``L['x'].size()[0] <= L['y'].size()[0]``. A call that breaks one runs a program that was
traced for other shapes and returns wrong numbers, so every guard is kept in the manifest and
checked on every call.

The manifest's guard language (schema/SPEC.md §5a) names inputs by their manifest names:

    x.shape[0] != 3        x.shape[1] % 4 == 0        x.shape[0] <= y.shape[0]
    n >= 2 * x.shape[1]    Max(x.shape[0], 8) <= 64   x.stride[1] == 1

integers, ``NAME.shape[i]``, ``NAME.stride[i]``, ``NAME.storage_offset`` of a tensor input and
``NAME`` of an input that is not a tensor; ``+ - * / // % **`` and unary minus;
comparisons; ``and or not``; ``Max``, ``Min``, ``Mod``, ``FloorDiv``, ``Abs``, ``Eq``, ``Ne``,
``Lt``, ``Le``, ``Gt``, ``Ge`` and Python's ``round``, ``abs``, ``min``, ``max``, ``int``,
``float``. A guard is
parsed with :mod:`ast` and compiled into closures: nothing is evaluated as code. A torch guard
outside the language is kept as its torch text with ``expr`` null, and calls are then checked
by the program's own guard code (``runtime.py``), never run unchecked.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..errors import ManifestError, UnsafePackError


# The language stands below the manifest's records (manifest.check() compiles every guard), so
# it names what it reads of them structurally instead of importing them.
class Input(Protocol):
    """What a guard reads of an input (a manifest ``IOSpec``)."""

    @property
    def name(self) -> str: ...

    @property
    def is_tensor(self) -> bool: ...


class Dim(Protocol):
    """A parsed dim expression ``coef * symbol + offset`` (a manifest ``DimExpr``)."""

    @property
    def symbol(self) -> str: ...

    @property
    def coef(self) -> int: ...

    @property
    def offset(self) -> int: ...


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS: dict[str, Callable[..., Any]] = {
    "Max": max,
    "Min": min,
    "Mod": operator.mod,
    "PythonMod": operator.mod,
    "FloorDiv": operator.floordiv,
    "Abs": abs,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "int": int,
    "float": float,
    "Eq": operator.eq,
    "Ne": operator.ne,
    "Lt": operator.lt,
    "Le": operator.le,
    "Gt": operator.gt,
    "Ge": operator.ge,
}
#: functions torch may write in a guard that are safe to name (sympy printers' output); a guard
#: calling one outside ``_FUNCS`` is kept unexpressed, anything else is refused as unsafe
_TORCH_FUNCS = frozenset(_FUNCS) | {
    "CeilToInt", "FloorToInt", "TruncToInt", "RoundToInt", "IntTrueDiv", "FloatTrueDiv",
    "ToFloat", "Pow", "PowByNatural", "FloatPow", "Where", "OpaqueUnaryFn_sqrt", "sqrt",
    "floor", "ceil", "IsNonOverlappingAndDenseIndicator", "CleanDiv", "Identity",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "LShift", "RShift", "TruncToFloat",
    "RoundDecimal", "math",
}  # fmt: skip
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})


# --- torch's guard text -> the manifest's language ---------------------------------------------


def check_torch_guard(text: Any, where: str) -> ast.expr:
    """Parse a torch guard and refuse anything but arithmetic over the call's inputs: torch
    turns guards into a function with ``exec`` (``ep.module()``), so a guard is code."""
    if not isinstance(text, str) or len(text) > 10_000:
        raise UnsafePackError(f"{where}: a guard must be a string of at most 10,000 characters",
                              field=where, value=str(text)[:80])  # fmt: skip
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise UnsafePackError(f"{where}: guard {text[:80]!r} is not an expression",
                              field=where, value=text[:80]) from None  # fmt: skip
    for node in ast.walk(tree):
        ok = isinstance(
            node,
            (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Constant, ast.Subscript,
             ast.Name, ast.Call, ast.Attribute, ast.Load, ast.operator, ast.unaryop, ast.cmpop,
             ast.boolop, ast.Tuple),
        )  # fmt: skip
        if isinstance(node, ast.Constant):
            ok = type(node.value) in (int, float, bool, str) and (
                not isinstance(node.value, str) or len(node.value) < 256
            )
        elif isinstance(node, ast.Name):
            ok = node.id == "L" or node.id in _TORCH_FUNCS
        elif isinstance(node, ast.Attribute):
            ok = node.attr in _TENSOR_METHODS or (
                isinstance(node.value, ast.Name) and node.value.id == "math"
            )
        elif isinstance(node, ast.Call):
            ok = not node.keywords and (
                isinstance(node.func, ast.Name)
                or (isinstance(node.func, ast.Attribute) and node.func.attr in _TENSOR_METHODS)
                or (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "math")
            )  # fmt: skip
        if not ok:
            raise UnsafePackError(
                f"{where}: guard {text[:80]!r} uses {type(node).__name__}"
                f"{' ' + repr(getattr(node, 'id', getattr(node, 'attr', '')))}, which is not "
                "arithmetic over the call's inputs",
                field=where,
                value=text[:80],
            )
    return tree


def _source_of(node: ast.expr) -> str | None:
    """``L['x']['k'][0]`` -> "L['x']['k'][0]" (the key path as torch prints it), else None."""
    keys: list[str] = []
    while isinstance(node, ast.Subscript):
        key = node.slice
        if not isinstance(key, ast.Constant) or type(key.value) not in (int, str):
            return None
        keys.append(f"[{key.value!r}]")
        node = node.value
    if isinstance(node, ast.Name) and node.id == "L" and keys:
        return "L" + "".join(reversed(keys))
    return None


class _Unexpressed(Exception):
    pass


def _translate(node: ast.expr, names: Mapping[str, str]) -> ast.expr:
    """A torch guard's AST -> the manifest language's AST (raises _Unexpressed)."""
    # x.size()[i] / x.stride()[i] / x.size(i)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
        call = node.value
        if (
            isinstance(call.func, ast.Attribute)
            and call.func.attr in ("size", "stride")
            and not call.args
            and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int
        ):
            name = names.get(_source_of(call.func.value) or "")
            if name is None:
                raise _Unexpressed
            attr = "shape" if call.func.attr == "size" else "stride"
            return ast.Subscript(ast.Attribute(ast.Name(name), attr), node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        name = names.get(_source_of(node.func.value) or "")
        if name is None:
            raise _Unexpressed
        if node.func.attr in ("size", "stride") and len(node.args) == 1:
            (arg,) = node.args
            if isinstance(arg, ast.Constant) and type(arg.value) is int:
                attr = "shape" if node.func.attr == "size" else "stride"
                return ast.Subscript(ast.Attribute(ast.Name(name), attr), arg)
        if node.func.attr == "storage_offset" and not node.args:
            return ast.Attribute(ast.Name(name), "storage_offset")
        raise _Unexpressed
    source = _source_of(node)
    if source is not None:  # an int input itself
        name = names.get(source)
        if name is None:
            raise _Unexpressed
        return ast.Name(name)
    if isinstance(node, ast.Constant) and type(node.value) in (int, bool):
        return node
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return ast.BinOp(_translate(node.left, names), node.op, _translate(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
        return ast.UnaryOp(node.op, _translate(node.operand, names))
    if isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
        return ast.Compare(_translate(node.left, names), node.ops,
                           [_translate(c, names) for c in node.comparators])  # fmt: skip
    if isinstance(node, ast.BoolOp):
        return ast.BoolOp(node.op, [_translate(v, names) for v in node.values])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        return ast.Call(ast.Name(node.func.id), [_translate(a, names) for a in node.args], [])
    raise _Unexpressed


def sources(paths: Sequence[tuple[str, str]], forward_arg_names: Sequence[str]) -> dict[str, str]:
    """torch's guard sources -> manifest input names, from each input's (name, path): the
    path ``args[0]['k']`` is ``L['<first argument's name>']['k']`` in a guard, and the flat
    input i is also ``L['flat_args'][i]``."""
    out: dict[str, str] = {}
    for i, (name, path) in enumerate(paths):
        out[f"L['flat_args'][{i}]"] = name
        if path.startswith("args["):
            index, _, rest = path[len("args[") :].partition("]")
            if index.isdigit() and int(index) < len(forward_arg_names):
                # the manifest writes path tails as torch's keystr does: ['k'], [0], .field
                out[f"L[{forward_arg_names[int(index)]!r}]" + rest] = name
        elif path.startswith("kwargs["):
            out["L" + path[len("kwargs") :]] = name
    return out


def from_torch(
    guards_code: Sequence[str],
    names: Mapping[str, str],
    inputs: Sequence[Input],
    *,
    where: str = "guards_code",
) -> tuple[tuple[str, str | None], ...]:
    """torch.export's guards -> manifest guards as ``(source, expr)`` pairs, sorted by source
    (torch's order depends on the path the program took), duplicates dropped. A guard that
    translates into something the language refuses over ``inputs`` (a tensor used as a
    number) stays unexpressed (``expr`` None)."""
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for i, text in enumerate(sorted(guards_code, key=str)):
        tree = check_torch_guard(text, f"{where}[{i}]")
        expr: str | None
        try:
            expr = ast.unparse(_translate(tree, names))
            compile_guard(expr, inputs)
        except (_Unexpressed, ManifestError):
            expr = None
        if text not in seen:
            seen.add(text)
            out.append((text, expr))
    return tuple(out)


# --- the manifest's language -> a check ------------------------------------------------------

#: a compiled guard: leaves of the call -> value
Compiled = Callable[[Sequence[Any]], Any]


def compile_guard(
    expr: str, inputs: Sequence[Input]
) -> tuple[Compiled, tuple[str, int | None] | None]:
    """Compile a guard of the manifest language over the flat leaves (one per input, in
    order). Returns the check and the first (input, dim) it reads, which the error names.
    Raises ManifestError for anything outside the language, and for a tensor input used as a
    number or a shape read off an input that is not a tensor."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError):
        raise ManifestError(f"guard {expr!r} is not an expression of the guard language") from None
    positions = {spec.name: i for i, spec in enumerate(inputs)}
    tensors = {spec.name for spec in inputs if spec.is_tensor}
    first: list[tuple[str, int | None]] = []

    def leaf(name: str, *, tensor: bool) -> int:
        if name not in positions:
            raise ManifestError(f"guard {expr!r} names {name!r}, which is not an input",
                                field="guards", got=name)  # fmt: skip
        if tensor != (name in tensors):
            raise ManifestError(
                f"guard {expr!r} uses {name!r} as {'a tensor' if tensor else 'a number'}, "
                f"but it is {'not a tensor' if tensor else 'a tensor'} input",
                field="guards",
                expected="a tensor input" if tensor else "an int, float or bool input",
                got=name,
            )
        return positions[name]

    def simple(node: ast.expr) -> tuple[Any, ...] | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return ("const", node.value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "shape"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id in tensors
            and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int
        ):
            return ("shape", positions[node.value.value.id], node.slice.value)
        return None

    def build(node: ast.expr) -> Compiled:
        if isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            value = node.value
            return lambda leaves: value
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("shape", "stride")
            and isinstance(node.value.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int
        ):
            k, dim = leaf(node.value.value.id, tensor=True), node.slice.value
            first.append((node.value.value.id, dim))
            if node.value.attr == "shape":
                return lambda leaves: leaves[k].shape[dim]
            return lambda leaves: leaves[k].stride(dim)
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "storage_offset"
            and isinstance(node.value, ast.Name)
        ):
            k = leaf(node.value.id, tensor=True)
            first.append((node.value.id, None))
            return lambda leaves: leaves[k].storage_offset()
        if isinstance(node, ast.Name):
            k = leaf(node.id, tensor=False)
            first.append((node.id, None))
            return lambda leaves: leaves[k]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            fn, a, b = _BINOPS[type(node.op)], build(node.left), build(node.right)
            sa, sb = simple(node.left), simple(node.right)
            if sa is not None and sa[0] == "shape" and sb is not None and sb[0] == "const":
                k, d, c = sa[1], sa[2], sb[1]  # x.shape[1] % 4
                return lambda leaves: fn(leaves[k].shape[d], c)
            return lambda leaves: fn(a(leaves), b(leaves))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            a = build(node.operand)
            return lambda leaves: -a(leaves)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            a = build(node.operand)
            return lambda leaves: not a(leaves)
        if isinstance(node, ast.Compare) and all(type(op) in _CMPOPS for op in node.ops):
            parts = [build(node.left), *(build(c) for c in node.comparators)]
            ops = [_CMPOPS[type(op)] for op in node.ops]
            if len(ops) == 1:  # the common case, without the loop
                op, a, b = ops[0], parts[0], parts[1]
                sa, sb = simple(node.left), simple(node.comparators[0])
                if sa is not None and sb is not None:  # dim vs dim or constant: one call
                    if sa[0] == "shape" and sb[0] == "const":
                        k, d, c = sa[1], sa[2], sb[1]
                        return lambda leaves: op(leaves[k].shape[d], c)
                    if sa[0] == "shape" and sb[0] == "shape":
                        k, d, k2, d2 = sa[1], sa[2], sb[1], sb[2]
                        return lambda leaves: op(leaves[k].shape[d], leaves[k2].shape[d2])
                return lambda leaves: op(a(leaves), b(leaves))

            def compare(leaves: Sequence[Any]) -> bool:
                values = [p(leaves) for p in parts]
                return all(op(values[i], values[i + 1]) for i, op in enumerate(ops))

            return compare
        if isinstance(node, ast.BoolOp):
            values = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda leaves: all(v(leaves) for v in values)
            return lambda leaves: any(v(leaves) for v in values)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            fn, args = _FUNCS[node.func.id], [build(a) for a in node.args]
            return lambda leaves: fn(*(a(leaves) for a in args))
        raise ManifestError(
            f"guard {expr!r}: {ast.unparse(node)!r} is outside the guard language (schema/SPEC.md)"
        )

    return build(tree), (first[0] if first else None)


def implied(expr: str, shapes: Mapping[str, Sequence[int | Dim | None]]) -> bool:
    """Whether the per-input checks already enforce ``expr``: an equality of linear
    expressions over dims that the manifest's dim expressions make identical (a shared symbol,
    ``y.shape[0] == 2 * x.shape[0]`` for ``y: [2*n]``, equal static sizes). Such guards are
    not compiled again (they are most of torch's guards). ``shapes`` holds each input's dims
    parsed (None for a dim that does not parse)."""
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return False
    if not (
        isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq)
    ):
        return False

    def linear(node: ast.expr) -> dict[str, int] | None:
        """``node`` as {symbol: coefficient, "": constant} over the manifest's dims."""
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return {"": node.value}
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "shape"
            and isinstance(node.value.value, ast.Name)
            and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int
        ):
            shape = shapes.get(node.value.value.id)
            if shape is None or not 0 <= node.slice.value < len(shape):
                return None
            d = shape[node.slice.value]
            if isinstance(d, int):
                return {"": d}
            if d is None:
                return None
            return {d.symbol: d.coef, "": d.offset}
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = linear(node.left), linear(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Mult):
                if set(a) <= {""}:
                    a, b = b, a
                if not set(b) <= {""}:
                    return None  # a product of symbols: not linear
                k = b.get("", 0)
                return {s: c * k for s, c in a.items()}
            sign = 1 if isinstance(node.op, ast.Add) else -1
            out = dict(a)
            for s, c in b.items():
                out[s] = out.get(s, 0) + sign * c
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            a = linear(node.operand)
            return None if a is None else {s: -c for s, c in a.items()}
        return None

    left, right = linear(tree.left), linear(tree.comparators[0])
    if left is None or right is None:
        return False
    diff = dict(left)
    for sym, c in right.items():
        diff[sym] = diff.get(sym, 0) - c
    return all(c == 0 for c in diff.values())
