"""Refuse a serialized torch.export graph that would run code when torch rebuilds it.

torch.fx generates Python source from the graph's names (``def forward(self, x, bias=...)``)
and ``exec``s it, and torch's deserializer resolves call targets by name. So before torch
sees a graph, every name must be a plain identifier (or a dotted path of them where torch
uses qualified names) and every call target an operator from a fixed allowlist.
No torch import: this runs on every load and on torch-free paths.
"""

from __future__ import annotations

import ast
import functools
import json
import keyword
import re
from typing import Any

from ..errors import IntegrityError, UnsafePackError
from .serde import CALL_TARGETS

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# torch.ops namespaces a program may call: core ATen/prims, torch.export's higher-order ops,
# torch_tensorrt's engine op
_OP_NAMESPACES = ("aten", "prims", "higher_order", "tensorrt")
_OP = re.compile(
    r"torch\.ops\.(" + "|".join(_OP_NAMESPACES) + r")\.[A-Za-z_][A-Za-z0-9_]*"
    r"(\.[A-Za-z_][A-Za-z0-9_]*)?\Z"
)
# python callables torch.export serializes (getitem, symbolic arithmetic, sym ops, vmap)
_PLAIN_TARGETS = CALL_TARGETS
# keys whose string values become Python identifiers in generated code (forward_arg_names:
# the parameters of ep.module()'s forward)
_NAME_KEYS = frozenset(["name", "as_name", "as_names", "arg_name", "forward_arg_names"])
# keys whose values are qualified names (getattr paths, module FQNs)
_DOTTED_KEYS = frozenset(
    [
        "parameter_name",
        "buffer_name",
        "tensor_constant_name",
        "custom_obj_name",
        "fqn",
        "target_fqn",
    ]
)
# dict keys that are value names (the graph's value tables)
_VALUE_TABLES = frozenset(
    ["tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"]
)


# torch's deserializer hands every symbolic expression (``expr_str``, range-constraint keys)
# to ``sympy.sympify``, which evals it: only arithmetic over symbols and these functions pass
_EXPR_KEYS = frozenset(["expr_str"])
_EXPR_FUNCTIONS = frozenset(
    [
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "Mod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "floor",
        "ceiling",
        "sqrt",
        "Integer",
        "Rational",
        "Float",
        "Symbol",
        "StrictGreaterThan",
        "StrictLessThan",
        "GreaterThan",
        "LessThan",
        "Equality",
        "Unequality",
        "Piecewise",
        "ExprCondPair",
        "ITE",
        "Xor",
        "IntInfinity",
        "NegativeIntInfinity",
        "Infinity",
        "NegativeInfinity",
        "Add",
        "Mul",
        "Pow",
        "OpaqueUnaryFn_sqrt",
        "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or",
        "BitwiseFn_bitwise_xor",
    ]
)
_EXPR_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Name,
    ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip


@functools.lru_cache(maxsize=4096)  # a graph repeats the same few expressions
def safe_expr(text: Any) -> bool:
    """Whether ``text`` is plain arithmetic/comparison over symbols, numbers and the sympy
    functions torch serializes, in either spelling torch writes (``2*s0 + 1`` or sympy's
    ``Add(Mul(Integer(2), Symbol('s0', positive=True, integer=True)), Integer(1))``): no
    attributes, subscripts, lambdas, free strings or other calls."""
    if not isinstance(text, str) or len(text) > 10_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    allowed_strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _EXPR_FUNCTIONS:
                return False
            if node.func.id == "Symbol":
                # Symbol('s0', positive=True, integer=True): a name and boolean assumptions
                if not (len(node.args) == 1 and isinstance(node.args[0], ast.Constant)):
                    return False
                if not _ident(node.args[0].value):
                    return False
                allowed_strings.add(id(node.args[0]))
                for kw in node.keywords:
                    if not (
                        kw.arg
                        and _ident(kw.arg)
                        and isinstance(kw.value, ast.Constant)
                        and type(kw.value.value) is bool
                    ):
                        return False
                    allowed_strings.add(id(kw.value))
            elif node.keywords:
                return False
        elif isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, bool) and id(node) not in allowed_strings:
                return False
        elif isinstance(node, ast.Name):
            if not _ident(node.id) or node.id.startswith("__"):
                return False
        elif not isinstance(node, (*_EXPR_NODES, ast.keyword)):
            return False
    return True


def _ident(s: Any) -> bool:
    return isinstance(s, str) and bool(_IDENT.match(s)) and not keyword.iskeyword(s)


def _dotted(s: Any, allow_empty: bool) -> bool:
    if not isinstance(s, str):
        return False
    if s == "":
        return allow_empty
    return all(_ident(p) or p.isdigit() for p in s.split("."))


def safe_target(t: Any) -> bool:
    return isinstance(t, str) and (t in _PLAIN_TARGETS or bool(_OP.match(t)))


def check_graph(data: Any, member: str) -> Any:
    """Raise :class:`UnsafePackError` naming ``member`` and the JSON path of the first name
    or call target in ``data`` (bytes/str of JSON or the parsed object) that torch could
    turn into code. Returns the parsed JSON."""
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            # corrupt rather than hostile: nothing of it reaches torch either way
            raise IntegrityError(
                f"{member}: cannot read the program: not valid JSON ({e})", member=member
            ) from None
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                p = f"{path}.{k}" if path else str(k)
                if k in _NAME_KEYS:
                    vals = v if isinstance(v, list) else [v]
                    for i, s in enumerate(vals):
                        if isinstance(s, (dict, list)):
                            stack.append((p, s))
                        elif s == "" and k == "name" and re.search(r"\.inputs\[\d+\]\Z", path):
                            continue  # a node argument passed positionally has no name
                        elif s is not None and not _ident(s):
                            _bad(member, p if vals is not v else f"{p}[{i}]", s)
                        elif k == "forward_arg_names" and s in vals[:i]:
                            # each is a parameter of the generated forward(): a repeated one
                            # makes source that does not compile
                            _bad(member, f"{p}[{i}]", s, "a parameter name given twice")
                    continue
                if k in _DOTTED_KEYS:
                    if v is not None and not isinstance(v, (dict, list)):
                        if not _dotted(v, allow_empty=k == "fqn"):
                            _bad(member, p, v)
                        continue
                if k == "target" and path.split(".")[-1].startswith("nodes["):
                    if not safe_target(v):
                        _bad(member, p, v, "a call target outside the operator allowlist")
                    continue
                if k == "in_spec" and isinstance(v, str):
                    _check_call_keys(member, p, v)
                    continue
                if k in _EXPR_KEYS and isinstance(v, str):
                    if not safe_expr(v):
                        _bad(member, p, v, "not a plain symbolic expression")
                    continue
                if k == "guards_code" and not path:
                    # ep.module() turns these into a function with exec (torch/export/_unlift.py)
                    from ..format.guards import check_torch_guard

                    if not isinstance(v, list):
                        _bad(member, p, v, "not a list of guards")
                    for i, text in enumerate(v):
                        try:
                            check_torch_guard(text, f"{p}[{i}]")
                        except UnsafePackError as e:
                            raise UnsafePackError(
                                f"{member}: {e}", member=member, field=e.field, value=e.value
                            ) from None
                    continue
                if k == "range_constraints" and isinstance(v, dict):
                    for name in v:
                        if not safe_expr(name):
                            _bad(member, f"{p}[{name!r}]", name, "not a plain symbolic expression")
                if k in _VALUE_TABLES and isinstance(v, dict):
                    for name in v:
                        if not _ident(name):
                            _bad(member, f"{p}[{name!r}]", name)
                stack.append((p, v))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                if isinstance(v, (dict, list)):
                    stack.append((f"{path}[{i}]", v))
    return data


def _check_call_keys(member: str, field: str, in_spec: str) -> None:
    """The keyword names of the call (the keys of the ``(args, kwargs)`` root's dict in the
    serialized in_spec): ``ep.module()``'s forward() quotes each one into its source
    (``{'mask': mask}``, torch.fx ``_PyTreeCodeGen``), so a key with a quote in it is code.
    A spec of another shape puts no key into the source (or torch's reader refuses it)."""
    try:
        _protocol, root = json.loads(in_spec)
        _args, kwargs = root["children_spec"]
        if root["type"] != "builtins.tuple" or kwargs["type"] != "builtins.dict":
            return
        keys = json.loads(kwargs["context"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return
    for i, key in enumerate(keys if isinstance(keys, list) else [keys]):
        if not _ident(key):
            _bad(member, f"{field}: kwargs key [{i}]", key)


def _bad(member: str, field: str, value: Any, why: str = "not a plain Python identifier") -> None:
    raise UnsafePackError(
        f"{member}: {field} = {str(value)[:80]!r} is {why}; torch would turn it into code "
        "when loading the program, so the pack is refused",
        member=member, field=field, value=value,
    )  # fmt: skip
