"""Generate trtpack/format/schema_check.py, the manifest's validator, from the JSON Schema.

    python tools/gen_validator.py          # rewrite trtpack/format/schema_check.py
    python tools/gen_validator.py --check  # exit 1 if it is out of date (the tests do this)

The schema (schema/manifest.v1.schema.json) stays the source of truth. Reading a pack needs
it checked, and importing jsonschema (attrs, referencing, rpds) took longer than the rest of
``trtpack inspect``; so this script compiles the schema into plain Python that checks what
Draft 2020-12 says and reports each error as jsonschema's ``Draft202012Validator`` does: the
same JSON path and the same message. ``tests/test_schema_check.py`` runs both on every
fixture manifest and on thousands of mutated ones and requires them to agree.

Only the keywords in SUPPORTED are compiled, each the way jsonschema 4's ``_keywords.py``
does it. Any other keyword (a new one that a schema change brings in) stops the generator
with an error naming it and where it is, so a check can never be dropped silently: support
it here and in the equivalence test's mutations, then regenerate.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema" / "manifest.v1.schema.json"
OUT = ROOT / "trtpack" / "format" / "schema_check.py"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
WIDTH = 100

#: keyword -> what the generated code checks (jsonschema 4's semantics and messages)
SUPPORTED = {
    "$ref": "a local reference, #/$defs/<name>: that definition's checks, at the same path",
    "type": "object, array, string, integer (a float without a fraction is one), number, "
    "boolean (never an integer), null; or a list of them",
    "enum": "equal to one of the values (JSON equality: true is not 1, 1.0 is 1)",
    "const": "equal to the value (JSON equality)",
    "pattern": "strings: Python's re.search, as jsonschema (unanchored unless the pattern "
    "anchors itself)",
    "minLength": "strings: at least N code points",
    "maxLength": "strings: at most N code points",
    "minimum": "numbers: >= N",
    "minItems": "arrays: at least N items",
    "required": "objects: each listed property present",
    "properties": "objects: each present property checked by its subschema",
    "additionalProperties": "objects: the properties not in `properties` refused (false) or "
    "checked by a subschema; lenient mode (a newer minor version) lifts false",
    "propertyNames": "objects: each property name checked by the subschema",
    "prefixItems": "arrays: item i checked by subschema i",
    "items": "arrays: the items after prefixItems refused (false) or checked by the subschema",
    "allOf": "every subschema holds",
    "anyOf": "at least one subschema holds",
    "oneOf": "exactly one subschema holds",
    "not": "the subschema does not hold",
    "if": "then (if given) when `if` holds, else (if given) when it does not",
    "then": "see if",
    "else": "see if",
}
#: annotations: no effect on validity
ANNOTATIONS = {"title", "description", "$comment"}
#: allowed at the top level only (an $id deeper down would change what a $ref resolves to)
TOP_LEVEL = {"$schema", "$id", "$defs"}
TYPES = {
    "object": "isinstance(x, dict)",
    "array": "isinstance(x, list)",
    "string": "isinstance(x, str)",
    "integer": "_is_integer(x)",
    "number": "_is_number(x)",
    "boolean": "isinstance(x, bool)",
    "null": "x is None",
}
#: the negations that read better than ``not <test>``
NEGATED = {"x is None": "x is not None"}
SIGNATURE = "x: Any, p: Path, e: Errors, lenient: bool"


class SchemaError(Exception):
    """The schema uses something this generator does not compile."""


def lenient_schema(schema: Any) -> Any:
    """What a reader of a newer minor version validates against: every
    ``additionalProperties: false`` lifted (SPEC: unknown fields are allowed and ignored)."""
    if isinstance(schema, dict):
        return {
            k: lenient_schema(v)
            for k, v in schema.items()
            if not (k == "additionalProperties" and v is False)
        }
    if isinstance(schema, list):
        return [lenient_schema(v) for v in schema]
    return schema


# --- Python source, laid out as ruff formats it (line length 100) -------------------------


def py(value: Any) -> str:
    """A Python literal for a JSON value (strings in double quotes, unless single quotes need
    fewer escapes)."""
    if isinstance(value, str):
        if value.count('"') > value.count("'"):  # fewer escapes in single quotes (as ruff)
            return repr(value)
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\x7f")
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(py(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(py(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py(k)}: {py(v)}" for k, v in value.items()) + "}"
    raise SchemaError(f"cannot write {value!r} as a Python literal")


def assign(name: str, value: tuple | list) -> list[str]:
    """``NAME = <tuple or list>``, one item a line when it does not fit on one."""
    line = f"{name} = {py(value)}"
    if len(line) <= WIDTH:
        return [line]
    opener, closer = ("(", ")") if isinstance(value, tuple) else ("[", "]")
    return [f"{name} = {opener}", *(f"    {py(v)}," for v in value), closer]


def string_lines(head: str, text: str, tail: str = "") -> list[str]:
    """``head + "text" + tail`` (``NAME = `` or ``NAME = re.compile(``) on one line, or with
    the text on its own line, or split into implicitly concatenated parts, one a line."""
    line = head + py(text) + tail
    if len(line) <= WIDTH:
        return [line]
    opener, closer = (head, tail) if head.endswith("(") else (head + "(", tail + ")")
    if len(f"    {py(text)}") <= WIDTH:
        return [opener, f"    {py(text)}", closer]
    parts = textwrap.wrap(text, WIDTH - 10, drop_whitespace=False, replace_whitespace=False,
                          expand_tabs=False, break_on_hyphens=False)  # fmt: skip
    assert "".join(parts) == text
    return [opener, *(f"    {py(part)}" for part in parts), closer]


def call(fn: str, args: list[str], indent: int) -> list[str]:
    """``fn(args)`` at ``indent``, wrapped as ruff wraps a call that does not fit."""
    pad = " " * indent
    line = f"{pad}{fn}({', '.join(args)})"
    if len(line) <= WIDTH:
        return [line]
    inner = f"{pad}    {', '.join(args)}"
    if len(inner) <= WIDTH:
        return [f"{pad}{fn}(", inner, f"{pad})"]
    return [f"{pad}{fn}(", *(f"{pad}    {a}," for a in args), f"{pad})"]


def report(message: str, keyword: str, expected: str) -> str:
    """The line that records one error: its path, message (an expression), the keyword that
    failed, what the schema expected there (an expression: the keyword's value) and the
    value found."""
    return f"e.append((p, {message}, {py(keyword)}, {expected}, x))"


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` outside brackets and strings."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    return [*parts, text[start:]]


def wrap(line: str) -> list[str]:
    """A line of a check function wrapped as ruff wraps it, when it is too long: an ``if``
    whose test is split at ``or``/``and``, or an ``e.append((path, message))``."""
    if len(line) <= WIDTH:
        return [line]
    pad = line[: len(line) - len(line.lstrip())]
    m = re.fullmatch(r"if (not )?\((.*)\):", line.strip())
    if not m or len(split_top(m[2], ")")) > 1:  # not (a) or (b): not one parenthesis
        m = re.fullmatch(r"if ()(.*):", line.strip())
    if m:
        neg, test = m[1] or "", m[2]
        if len(f"{pad}    {test}") <= WIDTH:
            return [f"{pad}if {neg}(", f"{pad}    {test}", f"{pad}):"]
        for op in (" or ", " and "):
            parts = split_top(test, op)
            if len(parts) > 1:
                first, *rest = parts
                return [
                    f"{pad}if {neg}(",
                    f"{pad}    {first}",
                    *(f"{pad}    {op.strip()} {part}" for part in rest),
                    f"{pad}):",
                ]
        return [line]
    m = re.fullmatch(r"e\.append\(\((.*)\)\)", line.strip())
    if m:
        if len(f"{pad}    ({m[1]})") <= WIDTH:
            return [f"{pad}e.append(", f"{pad}    ({m[1]})", f"{pad})"]
        items = split_top(m[1], ", ")
        return [f"{pad}e.append(", f"{pad}    (", *(f"{pad}        {i}," for i in items),
                f"{pad}    )", f"{pad})"]  # fmt: skip
    return [line]


def define(name: str, comment: str, body: list[str]) -> list[str]:
    head = f"def {name}({SIGNATURE}) -> None:"
    if len(head) > WIDTH:
        head = f"def {name}(\n    {SIGNATURE}\n) -> None:"
    return [head, f"    # {comment}", *[w for line in body or ["    pass"] for w in wrap(line)]]


# --- the compiler ----------------------------------------------------------------------------


class Generator:
    def __init__(self, schema: Any) -> None:
        if not isinstance(schema, dict):
            raise SchemaError("the schema must be an object")
        if schema.get("$schema") != DRAFT:
            raise SchemaError(f"$schema must be {DRAFT!r}, got {schema.get('$schema')!r}")
        self.schema = schema
        self.defs: dict[str, Any] = schema.get("$defs", {})
        if not isinstance(self.defs, dict):
            raise SchemaError("$defs must be an object")
        for name in self.defs:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SchemaError(f"$defs name {name!r} is not an identifier")
        self.functions: list[list[str]] = []
        self.constants: list[str] = []
        self.names: set[str] = {"_manifest"}
        self.keywords_used: set[str] = set()
        self.def_names = {name: self.name(f"def_{name}") for name in self.defs}

    def name(self, hint: str, upper: bool = False) -> str:
        if upper:  # a constant: _IO_KIND_ENUM, _MANIFEST_REQUIRED
            hint = hint.removeprefix("def_").upper()
        base = "_" + re.sub(r"[^A-Za-z0-9_]", "_", hint)
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def constant(self, hint: str, value: tuple | list) -> str:
        name = self.name(hint, upper=True)
        self.constants += assign(name, value)
        return name

    def subschema(self, schema: Any, hint: str) -> str:
        """An expression for a subschema as jsonschema sees it, strict or lenient (quoted in
        messages and reported as what was expected; kept as JSON text, parsed on an error)."""
        strict = json.dumps(schema, ensure_ascii=False)
        lenient = json.dumps(lenient_schema(schema), ensure_ascii=False)
        if strict == lenient:
            return f"_schema({self.string_constant(f'{hint}_schema', strict)})"
        return (
            f"_schema({self.string_constant(f'{hint}_lenient_schema', lenient)} if lenient "
            f"else {self.string_constant(f'{hint}_schema', strict)})"
        )

    def string_constant(self, hint: str, text: str) -> str:
        name = self.name(hint, upper=True)
        self.constants += string_lines(f"{name} = ", text)
        return name

    def compile(self) -> None:
        self.node(self.schema, "#", "manifest", fixed="_manifest", top=True)
        for name, definition in self.defs.items():
            self.node(definition, f"#/$defs/{name}", f"def_{name}", fixed=self.def_names[name])

    def node(
        self, schema: Any, where: str, hint: str, *, fixed: str | None = None, top: bool = False
    ) -> str | None:
        """Compile one subschema into ``f(x, p, e, lenient)``, which appends ``(path,
        message)`` to ``e`` for each error of ``x`` (found at path ``p``). Returns the
        function's name, or None when the subschema checks nothing (no call is written)."""
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a subschema must be an object here, got {schema!r}")
        for key in schema:
            if key in TOP_LEVEL and not top:
                raise SchemaError(f"{where}: {key} is supported at the top level only")
            if key not in SUPPORTED and key not in ANNOTATIONS and key not in TOP_LEVEL:
                raise SchemaError(
                    f"{where}: keyword {key!r} is not supported by tools/gen_validator.py "
                    f"(it compiles {', '.join(sorted(SUPPORTED))}); add it there and to the "
                    "mutations of tests/test_schema_check.py, then regenerate"
                )
        checks = [k for k in schema if k in SUPPORTED]
        if fixed is None:
            if not checks:
                return None
            if checks == ["$ref"]:
                return self.ref(schema["$ref"], where)
        name = fixed or self.name(hint)
        blocks: list[tuple[str | None, list[str]]] = []
        for k in checks:
            self.keywords_used.add(k)
            blocks += self.keyword(k, schema[k], schema, f"{where}/{k}", hint)
        body: list[str] = []
        guard_before = object()
        for guard, lines in blocks:  # consecutive blocks under the same test share one `if`
            if guard is None:
                body += [f"    {line}" for line in lines]
            elif guard == guard_before:
                body += [f"        {line}" for line in lines]
            else:
                body += [f"    if {guard}:", *(f"        {line}" for line in lines)]
            guard_before = guard
        self.functions.append(define(name, where, body))
        return name

    def ref(self, ref: Any, where: str) -> str:
        m = re.fullmatch(r"#/\$defs/([A-Za-z_][A-Za-z0-9_]*)", ref if isinstance(ref, str) else "")
        if not m or m[1] not in self.defs:
            raise SchemaError(f"{where}: $ref {ref!r} is not #/$defs/<a definition>")
        return self.def_names[m[1]]

    def holds(self, fn: str | None) -> str:
        return f"_holds({fn}, x, p, lenient)" if fn else "True"

    def keyword(
        self, key: str, value: Any, schema: dict[str, Any], where: str, hint: str
    ) -> list[tuple[str | None, list[str]]]:
        """The code of one keyword, as (the test it runs under, lines)."""
        if key == "$ref":
            return [(None, [f"{self.ref(value, where)}(x, p, e, lenient)"])]
        if key == "type":
            types = [value] if isinstance(value, str) else value
            if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
                raise SchemaError(f"{where}: type {value!r} is not one of {sorted(TYPES)}")
            test = " or ".join(TYPES[t] for t in types)
            shown = py(", ".join(repr(t) for t in types))[1:-1]
            return [
                (
                    f"not ({test})" if len(types) > 1 else NEGATED.get(test, f"not {test}"),
                    [report(f'f"{{x!r}} is not of type {shown}"', key, py(value))],
                )
            ]
        if key == "enum":
            if not isinstance(value, list) or not value:
                raise SchemaError(f"{where}: enum must be a non-empty array")
            values = self.constant(f"{hint}_enum", tuple(value))  # constants are immutable
            if all(isinstance(v, str) for v in value):
                test = f"not (isinstance(x, str) and x in {values})"
            else:
                test = f"not any(_equal(v, x) for v in {values})"
            message = f'f"{{x!r}} is not one of {{list({values})!r}}"'
            return [(test, [report(message, key, values)])]
        if key == "const":
            if isinstance(value, str):
                test = f"not (isinstance(x, str) and x == {py(value)})"
            else:
                test = f"not _equal(x, {py(value)})"
            return [(test, [report(py(f"{value!r} was expected"), key, py(value))])]
        if key == "pattern":
            if not isinstance(value, str):
                raise SchemaError(f"{where}: pattern must be a string")
            try:
                re.compile(value)
            except re.error as err:
                raise SchemaError(f"{where}: pattern {value!r} is no Python regex: {err}") from None
            rx = self.name(f"{hint}_pattern", upper=True)
            self.constants += string_lines(f"{rx} = re.compile(", value, ")")
            return [
                (
                    f"isinstance(x, str) and not {rx}.search(x)",
                    [report(f'f"{{x!r}} does not match {{{rx}.pattern!r}}"', key, f"{rx}.pattern")],
                )
            ]
        if key in ("minLength", "maxLength", "minItems"):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise SchemaError(f"{where}: {key} must be a non-negative integer")
            kind = "list" if key == "minItems" else "str"
            if key == "maxLength":
                op, text = ">", "is expected to be empty" if value == 0 else "is too long"
            else:
                op, text = "<", "should be non-empty" if value == 1 else "is too short"
            return [
                (
                    f"isinstance(x, {kind}) and len(x) {op} {value}",
                    [report(f'f"{{x!r}} {text}"', key, repr(value))],
                )
            ]
        if key == "minimum":
            if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise SchemaError(f"{where}: minimum must be a number")
            return [
                (
                    f"_is_number(x) and x < {value!r}",
                    [report(f'f"{{x!r}} is less than the minimum of {value!r}"', key, repr(value))],
                )
            ]
        if key == "required":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SchemaError(f"{where}: required must be an array of strings")
            names = self.constant(f"{hint}_required", tuple(value))
            missing = report('f"{k!r} is a required property"', key, names)
            return [
                (
                    "isinstance(x, dict)",
                    [
                        f"for k in {names}:",
                        "    if k not in x:",
                        f"        {missing}",
                    ],
                )
            ]
        if key == "properties":
            if not isinstance(value, dict):
                raise SchemaError(f"{where}: properties must be an object")
            lines = []
            for prop, subschema in value.items():
                fn = self.node(subschema, f"{where}/{prop}", f"{hint}_{prop}")
                if fn is not None:
                    lines += [f"if {py(prop)} in x:"]
                    lines += call(fn, [f"x[{py(prop)}]", f"(*p, {py(prop)})", "e", "lenient"], 12)
            return [("isinstance(x, dict)", [line.removeprefix(" " * 8) for line in lines])]
        if key == "additionalProperties":
            if "patternProperties" in schema:
                raise SchemaError(f"{where}: patternProperties is not supported")
            if value is True:
                return []
            if value is False:
                known = self.constant(f"{hint}_properties", tuple(schema.get("properties", {})))
                return [
                    (
                        "not lenient and isinstance(x, dict)",
                        [
                            f"extra = sorted((k for k in x if k not in {known}), key=str)",
                            "if extra:",
                            '    were = "was" if len(extra) == 1 else "were"',
                            '    listed = ", ".join(repr(k) for k in extra)',
                            '    message = f"Additional properties are not allowed ({listed} '
                            '{were} unexpected)"',
                            f"    {report('message', key, 'False')}",
                        ],
                    )
                ]
            fn = self.node(value, where, f"{hint}_value")
            if fn is None:
                return []
            if not schema.get("properties"):
                lines = ["for k, v in x.items():", f"    {fn}(v, (*p, k), e, lenient)"]
            else:
                known = self.constant(f"{hint}_properties", tuple(schema["properties"]))
                lines = [
                    "for k, v in x.items():",
                    f"    if k not in {known}:",
                    f"        {fn}(v, (*p, k), e, lenient)",
                ]
            return [("isinstance(x, dict)", lines)]
        if key == "propertyNames":
            fn = self.node(value, where, f"{hint}_name")
            if fn is None:
                return []
            return [("isinstance(x, dict)", ["for k in x:", f"    {fn}(k, p, e, lenient)"])]
        if key == "prefixItems":
            if not isinstance(value, list):
                raise SchemaError(f"{where}: prefixItems must be an array")
            lines = []
            for i, subschema in enumerate(value):
                fn = self.node(subschema, f"{where}/{i}", f"{hint}_{i}")
                if fn is not None:
                    lines += [f"if len(x) > {i}:", f"    {fn}(x[{i}], (*p, {i}), e, lenient)"]
            return [("isinstance(x, list)", lines)] if lines else []
        if key == "items":
            prefix = len(schema.get("prefixItems", []))
            if value is True:
                return []
            if value is False:
                item = "items" if prefix != 1 else "item"
                return [
                    (
                        f"isinstance(x, list) and len(x) > {prefix}",
                        [
                            f"extra = len(x) - {prefix}",
                            f"rest = x[{prefix}:] if extra != 1 else x[{prefix}]",
                            f'message = f"Expected at most {prefix} {item} but found {{extra}} '
                            'extra: {rest!r}"',
                            report("message", key, "False"),
                        ],
                    )
                ]
            fn = self.node(value, where, f"{hint}_item")
            if fn is None:
                return []
            start = f"{prefix}, len(x)" if prefix else "len(x)"
            return [
                (
                    "isinstance(x, list)",
                    [f"for i in range({start}):", f"    {fn}(x[i], (*p, i), e, lenient)"],
                )
            ]
        if key in ("allOf", "anyOf", "oneOf"):
            if not isinstance(value, list) or not value:
                raise SchemaError(f"{where}: {key} must be a non-empty array")
            fns = [self.node(s, f"{where}/{i}", f"{hint}_{key}_{i}") for i, s in enumerate(value)]
            if key == "allOf":
                return [(None, [f"{fn}(x, p, e, lenient)" for fn in fns if fn is not None])]
            tests = [self.holds(fn) for fn in fns]
            subschemas = self.subschema(value, f"{hint}_{key}")
            none = '"{x!r} is not valid under any of the given schemas"'
            each = 'f"{x!r} is valid under each of {each}"'
            if key == "anyOf":
                return [(f"not ({' or '.join(tests)})", [report(f"f{none}", key, subschemas)])]
            return [
                (
                    None,
                    [
                        "holds = (",
                        *(f"    {t}," for t in tests),
                        ")",
                        "valid = [i for i, ok in enumerate(holds) if ok]",
                        "if not valid:",
                        f"    {report(f'f{none}', key, subschemas)}",
                        "elif len(valid) > 1:",
                        f"    shown = {subschemas}",
                        '    each = ", ".join(repr(shown[i]) for i in valid[1:] + valid[:1])',
                        f"    {report(each, key, 'shown')}",
                    ],
                )
            ]
        if key == "not":
            fn = self.node(value, where, f"{hint}_not")
            return [
                (
                    self.holds(fn),
                    [
                        f"schema = {self.subschema(value, f'{hint}_not')}",
                        report('f"{x!r} should not be valid under {schema!r}"', key, "schema"),
                    ],
                )
            ]
        if key == "if":
            base = where.rsplit("/", 1)[0]
            cond = self.node(value, where, f"{hint}_if")
            then = else_ = None
            if "then" in schema:
                then = self.node(schema["then"], f"{base}/then", f"{hint}_then")
            if "else" in schema:
                else_ = self.node(schema["else"], f"{base}/else", f"{hint}_else")
            self.keywords_used.update(k for k in ("then", "else") if k in schema)
            if then and else_:
                return [
                    (
                        None,
                        [
                            f"if {self.holds(cond)}:",
                            f"    {then}(x, p, e, lenient)",
                            "else:",
                            f"    {else_}(x, p, e, lenient)",
                        ],
                    )
                ]
            if then:
                return [(self.holds(cond), [f"{then}(x, p, e, lenient)"])]
            if else_:
                return [(f"not {self.holds(cond)}", [f"{else_}(x, p, e, lenient)"])]
            return []
        if key in ("then", "else"):
            if "if" not in schema:
                raise SchemaError(f"{where}: {key} without if")
            return []  # compiled with if
        raise AssertionError(key)


HEADER = '''\
# GENERATED by tools/gen_validator.py from schema/{schema}: do not edit.
# Regenerate with `python tools/gen_validator.py`; the tests fail while this file is stale.
"""The manifest's JSON Schema (schema/{schema}), compiled to plain Python.

``errors(data, lenient)`` lists every way ``data`` fails the schema, as ``(path, message,
keyword, expected, got)``: the errors that jsonschema's
``Draft202012Validator(schema).iter_errors(data)`` yields, with the same ``absolute_path``,
``message``, ``validator``, ``validator_value`` and ``instance`` (tests/test_schema_check.py
runs both and compares them sorted by path). ``lenient``: validate as a reader of a newer
minor version does, with every ``additionalProperties: false`` lifted. Standard library
only: reading a manifest never imports jsonschema.

Keywords compiled (tools/gen_validator.py refuses any other):
{keywords}
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Path = tuple[str | int, ...]
    #: (path, message, keyword, expected: the keyword's value in the schema, got)
    Error = tuple[Path, str, str, Any, Any]
    Errors = list[Error]

#: SHA-256 of the schema file this module was generated from
SCHEMA_SHA256 = "{sha256}"


def errors(data: Any, lenient: bool = False) -> list[Error]:
    """Every schema error of ``data``: (JSON path, message, keyword, expected, got)."""
    e: Errors = []
    _manifest(data, (), e, lenient)
    return e


def _holds(
    check: Callable[[Any, Path, Errors, bool], None], x: Any, p: Path, lenient: bool
) -> bool:
    """Whether ``x`` passes ``check`` (for anyOf, oneOf, not and if)."""
    found: Errors = []
    check(x, p, found, lenient)
    return not found


def _schema(text: str) -> Any:
    """A subschema, from its JSON text (for an error's message and ``expected``)."""
    import json

    return json.loads(text)


def _is_integer(x: Any) -> bool:
    """JSON Schema's integer: a number without a fraction (1.0 is one), never a bool."""
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


def _is_number(x: Any) -> bool:
    """Any number but a bool (JSON gives int and float; numbers.Number for other values)."""
    if isinstance(x, (bool, str, list, dict)) or x is None:
        return False
    if isinstance(x, (int, float)):
        return True
    import numbers

    return isinstance(x, numbers.Number)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality, as jsonschema's: true is not 1, 1.0 is 1, arrays and objects by item."""
    from collections.abc import Mapping, Sequence

    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(_equal(i, j) for i, j in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return len(a) == len(b) and all(k in b and _equal(v, b[k]) for k, v in a.items())
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)
'''


def generate(schema_bytes: bytes, schema_name: str = SCHEMA.name) -> str:
    """The module's source for a schema file's bytes."""
    gen = Generator(json.loads(schema_bytes))
    gen.compile()
    keywords = textwrap.fill(", ".join(sorted(gen.keywords_used)) + ".", WIDTH - 4,
                             initial_indent="    ", subsequent_indent="    ")  # fmt: skip
    out = HEADER.format(
        schema=schema_name, keywords=keywords, sha256=hashlib.sha256(schema_bytes).hexdigest()
    )
    out += "\n\n" + "\n".join(gen.constants) + "\n"
    for lines in gen.functions:
        out += "\n\n" + "\n".join(lines) + "\n"
    out += "\n\n#: each definition's check, by its name in $defs (for tests)\nDEFINITIONS = {\n"
    out += "".join(f"    {py(n)}: {f},\n" for n, f in gen.def_names.items()) + "}\n"
    return out


def main() -> int:
    new = generate(SCHEMA.read_bytes())
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != new:
            print(
                f"{OUT.relative_to(ROOT)} is out of date with {SCHEMA.relative_to(ROOT)}: "
                "run python tools/gen_validator.py",
                file=sys.stderr,
            )
            return 1
        return 0
    OUT.write_text(new, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SchemaError as e:
        print(f"tools/gen_validator.py: {SCHEMA.relative_to(ROOT)}: {e}", file=sys.stderr)
        sys.exit(2)
