"""jsonschema, the reference implementation of JSON Schema, run on manifests beside trtpack's
generated validator (trtpack/format/schema_check.py): tests/conftest.py does it for every
manifest the suite validates, tests/test_schema_check.py for fixtures and mutations."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema

from trtpack.format.manifest import load_schema


def lenient_schema(schema: Any) -> Any:
    """The schema a reader of a newer minor version validates against: every
    ``additionalProperties: false`` lifted (as trtpack did with jsonschema)."""
    if isinstance(schema, dict):
        return {k: lenient_schema(v) for k, v in schema.items()
                if not (k == "additionalProperties" and v is False)}  # fmt: skip
    if isinstance(schema, list):
        return [lenient_schema(v) for v in schema]
    return schema


@functools.cache
def validator(lenient: bool) -> jsonschema.Draft202012Validator:
    schema = load_schema()
    return jsonschema.Draft202012Validator(lenient_schema(schema) if lenient else schema)


def by_path(errors: list[tuple]) -> list[tuple]:
    """Sorted by JSON path, as trtpack reports them (stable: same-path errors keep their
    order, the schema's keyword order in both validators)."""
    return sorted(errors, key=lambda e: e[0])


def errors(data: Any, lenient: bool) -> list[tuple]:
    """jsonschema's errors as (path, message, keyword, expected, got), sorted by path: the
    error's ``absolute_path``, ``message``, ``validator``, ``validator_value``, ``instance``."""
    found = validator(lenient).iter_errors(data)
    return by_path(
        [(tuple(e.absolute_path), e.message, e.validator, e.validator_value, e.instance)
         for e in found]
    )  # fmt: skip


def comparable(errors: list[tuple]) -> str:
    """Tuples and lists alike, NaN equal to itself: the errors as JSON text."""
    return json.dumps(by_path(errors), default=repr)


def assert_same(got: list[tuple], data: Any, lenient: bool) -> list[tuple]:
    """The generated validator's errors ``got`` are jsonschema's; returns jsonschema's."""
    want = errors(data, lenient)
    assert comparable(got) == comparable(want), (
        f"the generated validator disagrees with jsonschema (lenient={lenient}):\n"
        f"  generated:  {[e[:3] for e in by_path(got)][:5]}\n"
        f"  jsonschema: {[e[:3] for e in want][:5]}"
    )
    return want
