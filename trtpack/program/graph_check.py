"""Refuse a serialized torch.export graph that would run code when torch rebuilds it.

torch.fx generates Python source from the graph's names (``def forward(self, x, bias=...)``)
and ``exec``s it, and torch's deserializer resolves call targets by name. So before torch
sees a graph, every name must be a plain identifier (or a dotted path of them where torch
uses qualified names) and every call target an operator from a fixed allowlist.
No torch import: this runs on every load and on torch-free paths.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import keyword
import re
from collections.abc import Sequence
from typing import Any

from ..errors import IntegrityError, UnsafePackError
from .gcpause import paused_gc
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
            elif node.func.id == "Float":
                # Float('0.5', precision=53): a float's decimal text and its precision
                if not (
                    len(node.args) == 1
                    and isinstance(node.args[0], ast.Constant)
                    and _decimal(node.args[0].value)
                    and all(
                        kw.arg == "precision"
                        and isinstance(kw.value, ast.Constant)
                        and type(kw.value.value) is int
                        for kw in node.keywords
                    )
                ):
                    return False
                allowed_strings.add(id(node.args[0]))
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


_DECIMAL = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z")


def _decimal(s: Any) -> bool:
    """A float's text as sympy's srepr writes it (``'0.5'``, ``'1.0e-5'``); also a number."""
    return type(s) in (int, float) or (
        isinstance(s, str) and len(s) < 64 and bool(_DECIMAL.match(s))
    )


def _ident(s: Any) -> bool:
    return isinstance(s, str) and bool(_IDENT.match(s)) and not keyword.iskeyword(s)


# A part of a qualified name that is not an identifier reaches generated code only quoted:
# torch.fx writes ``getattr(self, "foo:bar")`` for it (``torch.fx.graph._format_target``, for
# get_attr and call_module targets). So it may hold any printable ASCII but the characters that
# end or escape that literal. torch itself emits such names: a parameter registered as
# ``foo:bar``; ``n@1``, the second call of submodule ``n`` in the module call graph.
_QUOTABLE = re.compile(r"[ !#-&(-\[\]-~]+\Z")


def _dotted(s: Any, allow_empty: bool) -> bool:
    if not isinstance(s, str):
        return False
    if s == "":
        return allow_empty
    return all(_ident(p) or bool(_QUOTABLE.match(p)) for p in s.split("."))


def safe_target(t: Any) -> bool:
    return isinstance(t, str) and (t in _PLAIN_TARGETS or bool(_OP.match(t)))


#: every key the check looks at; any other key only leads to what it holds
_CHECKED_KEYS = _NAME_KEYS | _DOTTED_KEYS | _EXPR_KEYS | _VALUE_TABLES | {
    "target", "in_spec", "guards_code", "range_constraints"
}  # fmt: skip
#: a JSON path as a chain: None at the root, else (parent, dict key or list index, is_index)
_Chain = tuple[Any, Any, bool] | None


def _path(chain: _Chain) -> str:
    """The chain spelled as the check's messages spell a path: ``a.b[3].c``."""
    keys: list[tuple[Any, bool]] = []
    while chain is not None:
        chain, key, is_index = chain
        keys.append((key, is_index))
    out = ""
    for key, is_index in reversed(keys):
        if is_index:
            out = f"{out}[{key}]"
        else:
            out = f"{out}.{key}" if out else str(key)
    return out


def _positional_input(chain: _Chain) -> bool:
    """``_path(chain)`` ends with ``.inputs[N]`` (a node argument), without spelling the
    path out: on torch 2.11's graphs every positional argument asks."""
    if chain is None or not chain[2]:
        return False
    parent = chain[0]
    if parent is None or parent[2] or not isinstance(parent[1], str):
        return False
    key = parent[1]
    if key.endswith(".inputs"):  # a key with a dot: its own text supplies the dot
        return True
    # spelled with a dot before it unless all before it spells "" (an index never does)
    above = parent[0]
    return key == "inputs" and above is not None and (above[2] or _path(above) != "")


def _last_segment(chain: _Chain) -> str:
    """``_path(chain).split(".")[-1]``: the last key's text after its last dot, then the
    indexes after it."""
    indexes: list[str] = []
    while chain is not None and chain[2]:
        indexes.append(f"[{chain[1]}]")
        chain = chain[0]
    indexes.reverse()
    if chain is None:
        return "".join(indexes)
    return str(chain[1]).rsplit(".", 1)[-1] + "".join(indexes)


# an operator of any other namespace: a custom operator (torch.library), whose kernel is code
# the pack cannot carry; run only where the user allows it and it is registered in the process
_CUSTOM_OP = re.compile(
    r"torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\Z"
)


def custom_op(target: Any) -> str | None:
    """``torch.ops.mylib.twice.default`` -> ``"mylib::twice"`` (torch's qualified name), for
    an operator outside the namespaces every torch has; else None."""
    m = _CUSTOM_OP.match(target) if isinstance(target, str) else None
    if m is None or m.group(1) in _OP_NAMESPACES or keyword.iskeyword(m.group(1)):
        return None
    return f"{m.group(1)}::{m.group(2)}"


def op_allowed(name: str, allow_ops: Sequence[str]) -> bool:
    """Whether ``allow_ops`` (qualified names or patterns: ``mylib::twice``, ``mylib::*``)
    covers the custom operator ``name``."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow_ops)


def custom_ops(data: Any) -> list[str]:
    """The custom operators a checked graph calls (every node, subgraphs included), sorted."""
    found: set[str] = set()
    stack = [data]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            nodes = obj.get("nodes")
            if isinstance(nodes, list):
                for node in nodes:
                    name = custom_op(node.get("target")) if isinstance(node, dict) else None
                    if name is not None:
                        found.add(name)
            stack.extend(v for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend(v for v in obj if isinstance(v, (dict, list)))
    return sorted(found)


def check_graph(data: Any, member: str, allow_ops: Sequence[str] = ()) -> Any:
    """Raise :class:`UnsafePackError` naming ``member`` and the JSON path of the first name
    or call target in ``data`` (bytes/str of JSON or the parsed object) that torch could
    turn into code. A custom operator passes when ``allow_ops`` covers it (see
    :func:`op_allowed`); those it does not are refused together, by name. Returns the parsed
    JSON."""
    return checked_graph(data, member, allow_ops)[0]


def checked_graph(data: Any, member: str, allow_ops: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """:func:`check_graph`, returning the parsed JSON and the custom operators the graph calls
    (sorted, as :func:`custom_ops` gives them) from the same walk: a load needs both, and a
    second walk was a third of the check's time on a 950-node graph."""
    with paused_gc():  # the decoding and the walk allocate, and free, nothing else
        return _checked_graph(data, member, allow_ops)


def _checked_graph(data: Any, member: str, allow_ops: Sequence[str]) -> tuple[Any, list[str]]:
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            # corrupt rather than hostile: nothing of it reaches torch either way
            raise IntegrityError(
                f"{member}: cannot read the program: not valid JSON ({e})", member=member
            ) from None
    # Each container's JSON path is kept as a chain (parent, key, is_index) and spelled out
    # only where a check or an error needs it: building every key's path string was most of
    # the check's time on a big graph (issue 27, item 7).
    stack: list[tuple[_Chain, Any]] = [(None, data)]
    refused_ops: dict[str, tuple[str, str]] = {}  # custom operator -> (first path, target)
    called: set[str] = set()
    while stack:
        chain, obj = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k not in _CHECKED_KEYS:  # most keys: nothing to check but what they hold
                    if isinstance(v, (dict, list)):
                        stack.append(((chain, k, False), v))
                    continue
                here = (chain, k, False)
                if k in _NAME_KEYS:
                    vals = v if isinstance(v, list) else [v]
                    for i, s in enumerate(vals):
                        if isinstance(s, (dict, list)):
                            stack.append((here, s))
                        elif s == "" and k == "name" and _positional_input(chain):
                            continue  # a node argument passed positionally has no name
                        elif s is not None and not _ident(s):
                            p = _path(here)
                            _bad(member, p if vals is not v else f"{p}[{i}]", s)
                        elif k == "forward_arg_names" and s in vals[:i]:
                            # each is a parameter of the generated forward(): a repeated one
                            # makes source that does not compile
                            _bad(member, f"{_path(here)}[{i}]", s, "a parameter name given twice")
                    continue
                if k in _DOTTED_KEYS:
                    if v is not None and not isinstance(v, (dict, list)):
                        if not _dotted(v, allow_empty=k == "fqn"):
                            _bad(member, _path(here), v)
                        continue
                if k == "target" and _last_segment(chain).startswith("nodes["):
                    name = custom_op(v)
                    if name is not None:
                        called.add(name)
                        if not op_allowed(name, allow_ops):
                            refused_ops.setdefault(name, (_path(here), v))
                    elif not safe_target(v):
                        _bad(member, _path(here), v, "a call target outside the operator allowlist")
                    continue
                if k == "in_spec" and isinstance(v, str):
                    _check_call_keys(member, _path(here), v)
                    continue
                if k in _EXPR_KEYS and isinstance(v, str):
                    if not safe_expr(v):
                        _bad(member, _path(here), v, "not a plain symbolic expression")
                    continue
                if k == "guards_code" and not _path(chain):
                    # ep.module() turns these into a function with exec (torch/export/_unlift.py)
                    from ..format.guards import check_torch_guard

                    p = _path(here)
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
                            _bad(
                                member, f"{_path(here)}[{name!r}]", name,
                                "not a plain symbolic expression",
                            )  # fmt: skip
                if k in _VALUE_TABLES and isinstance(v, dict):
                    for name in v:
                        if not _ident(name):
                            _bad(member, f"{_path(here)}[{name!r}]", name)
                stack.append((here, v))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                if isinstance(v, (dict, list)):
                    stack.append(((chain, i, True), v))
    if refused_ops:
        names = sorted(refused_ops)
        first, target = refused_ops[names[0]]
        listed = ", ".join(names)
        raise UnsafePackError(
            f"{member}: the program calls custom operators outside the operator allowlist: "
            f"{listed} (first at {first}). A custom operator's kernel is code the pack cannot "
            "carry: register it in this process (import the library that defines it) and allow "
            f"it with load(..., allow_ops={names!r}) or `--allow-op "
            f"{' --allow-op '.join(names)}` (patterns such as 'mylib::*' work too)",
            member=member, field=first, value=target,
        )  # fmt: skip
    return data, sorted(called)


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
