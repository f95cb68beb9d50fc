"""torch.export's serialized program (the dataclasses of ``torch._export.serde.schema``) -> the
JSON bytes torch's ``_to_json_bytes`` writes for it, byte for byte, in a fraction of the time.

torch converts the dataclasses to plain dicts with ``_dataclass_to_dict``, which asks
``dataclasses.is_dataclass`` and ``dataclasses.fields`` of every object and reads a union's
value through its checking ``__getattribute__``: at 10,000 nodes, 400,000 objects and 40% of
serializing the program (issue 27, item 7). :func:`to_json_bytes` makes the same dicts, in the
same key order, deciding what an object is once per type (the answer depends only on its
type), with field names from ``dataclasses.fields`` of the classes this torch has: whatever
fields a torch version's schema adds or drops are written as torch writes them. The dicts are
then encoded by the very call torch makes (``json.dumps`` with torch's ``EnumEncoder``,
``allow_nan=False``). tests/test_graph_json.py compares the bytes with torch's own on programs
of the test corpus. :func:`available` says whether this torch has the pieces it follows;
where it does not, the caller uses torch's ``serialize`` unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

# how an object of a type is converted, decided by the checks torch makes, in its order:
# a union -> {its tag: its value}; a dataclass -> {field: value} in field order; a list, a
# tuple, a dict -> the same of converted items; a float -> itself or its text for infinities
# and NaN; anything else (str, int, bool, None, an Enum, bytes) -> itself, for the encoder
_UNION, _FIELDS, _LIST, _TUPLE, _DICT, _FLOAT, _LEAF = range(7)


def available(serde: Any) -> bool:
    """Whether torch's serializer module ``serde`` has what this module follows."""
    return all(
        hasattr(serde, name)
        for name in ("_Union", "_dataclass_to_dict", "_to_json_bytes", "EnumEncoder")
    )


def to_json_bytes(serde: Any, obj: Any) -> bytes:
    """``serde._to_json_bytes(obj)``: the same bytes."""
    return json.dumps(_converter(serde)(obj), cls=serde.EnumEncoder, allow_nan=False).encode(
        "utf-8"
    )


def _converter(serde: Any) -> Callable[[Any], Any]:
    """``serde._dataclass_to_dict``, with each type's kind (and a dataclass's field names)
    looked up once per conversion."""
    union = serde._Union
    get = object.__getattribute__  # a union's instance dict, past its checking __getattribute__
    kinds: dict[type, tuple[int, tuple[str, ...]]] = {}

    def kind_of(t: type, obj: Any) -> tuple[int, tuple[str, ...]]:
        found: tuple[int, tuple[str, ...]]
        if isinstance(obj, union):
            found = (_UNION, ())
        elif dataclasses.is_dataclass(obj):
            found = (_FIELDS, tuple(f.name for f in dataclasses.fields(obj)))
        elif isinstance(obj, list):
            found = (_LIST, ())
        elif isinstance(obj, tuple):
            found = (_TUPLE, ())
        elif isinstance(obj, dict):
            found = (_DICT, ())
        elif isinstance(obj, float):
            found = (_FLOAT, ())
        else:
            found = (_LEAF, ())
        kinds[t] = found
        return found

    def convert(obj: Any) -> Any:
        t = type(obj)
        kind, names = kinds.get(t) or kind_of(t, obj)
        if kind == _LEAF:
            return obj
        if kind == _FIELDS:
            return {name: convert(getattr(obj, name)) for name in names}
        if kind == _UNION:
            # ``{obj.type: convert(obj.value)}`` without the union's checking
            # __getattribute__ (several calls per union): its tag and that field's value
            fields = get(obj, "__dict__")
            tag = fields["_type"]
            return {tag: convert(fields[tag])}
        if kind == _LIST:
            return [convert(x) for x in obj]
        if kind == _DICT:
            return {k: convert(v) for k, v in obj.items()}
        if kind == _TUPLE:
            return tuple(convert(x) for x in obj)
        if obj == math.inf:  # _FLOAT
            return "Infinity"
        if obj == -math.inf:
            return "-Infinity"
        if math.isnan(obj):
            return "NaN"
        return obj

    return convert
