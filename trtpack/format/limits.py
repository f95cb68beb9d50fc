"""The caps every reader enforces before it parses further. No torch.

A pack comes from anyone; without caps a small file can ask for unbounded work (600,000
directory entries, a manifest nested 100,000 levels deep). Each cap is far above what a real
model needs and is documented in schema/SPEC.md ("Limits"); a file over one is refused with
an :class:`UnsafePackError` naming the cap, the limit and the value found.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ManifestError, TrtpackError, UnsafePackError

#: entries in the zip's central directory (counted from the end record, before parsing it)
MAX_MEMBERS = 10_000
#: bytes of manifest.json (checked from the directory, before it is read)
MAX_MANIFEST_BYTES = 16 << 20
#: nesting of JSON arrays/objects in manifest.json
MAX_JSON_DEPTH = 100
#: nesting of the input and output pytrees (a tree level is two JSON levels)
MAX_TREE_DEPTH = 32
#: flat inputs, flat outputs and symbols, each
MAX_INPUTS = 10_000
MAX_OUTPUTS = 10_000
MAX_SYMBOLS = 10_000
#: engine variants, and engines in one variant
MAX_VARIANTS = 256
MAX_ENGINES = 1_024
#: entry points of one pack (format 1.4); each is held to the caps above
MAX_ENTRY_POINTS = 256
#: bytes of a signature bundle (``PACK.sig``), checked before it is read and read with this
#: cap: the bundle trtpack signs for a pack within the caps above (its statement lists each
#: member once, in base64) is smaller
MAX_SIGNATURE_BYTES = 24 << 20
#: signatures in one bundle (each costs a public-key check; trtpack writes one), and JSON
#: objects in it, counted while it is parsed (a key-based bundle has 5, a sigstore bundle
#: with transparency-log entries a few dozen)
MAX_SIGNATURES = 16
MAX_SIGNATURE_OBJECTS = 256
#: bytes of a PEM key file given to sign or verify (an EC key is a few hundred)
MAX_KEY_BYTES = 64 << 10


def refuse(what: str, limit: int, got: int, where: str) -> UnsafePackError:
    return UnsafePackError(
        f"{where}: {what} is {got}, over trtpack's limit of {limit} (schema/SPEC.md, Limits)",
        field=what,
        value=got,
    )


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, d)
        stack.extend((c, d + 1) for c in children)
    return depth


def _tree_depth(tree: Any) -> int:
    depth, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        children = node.get("children") if isinstance(node, dict) else None
        if isinstance(children, list):
            stack.extend((c, d + 1) for c in children)
    return depth


def check_manifest_data(data: Any, where: str) -> None:
    """The caps on a parsed manifest, before the schema validator walks it."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise refuse("manifest nesting depth", MAX_JSON_DEPTH, depth, where)
    if not isinstance(data, dict):
        return  # the schema check says what is wrong
    _check_program_caps(data, where)
    entry_points = data.get("entry_points")
    if isinstance(entry_points, dict):
        if len(entry_points) > MAX_ENTRY_POINTS:
            raise refuse("number of entry_points", MAX_ENTRY_POINTS, len(entry_points), where)
        for name, entry in entry_points.items():
            if isinstance(entry, dict):
                _check_program_caps(entry, f"{where}: entry point {name!r}")


def _check_program_caps(data: dict[str, Any], where: str) -> None:
    """The caps on one program's fields (the top level, or an entry point of format 1.4)."""
    for key, limit in (
        ("members", MAX_MEMBERS),
        ("inputs", MAX_INPUTS),
        ("outputs", MAX_OUTPUTS),
        ("symbols", MAX_SYMBOLS),
        ("engines", MAX_VARIANTS),
    ):
        value = data.get(key)
        if isinstance(value, (list, dict)) and len(value) > limit:
            raise refuse(f"number of {key}", limit, len(value), where)
    for key in ("input_tree", "output_tree"):
        depth = _tree_depth(data.get(key))
        if depth > MAX_TREE_DEPTH:
            raise refuse(f"{key} depth", MAX_TREE_DEPTH, depth, where)
    variants = data.get("engines")
    for variant in variants if isinstance(variants, list) else ():
        engines = variant.get("engines") if isinstance(variant, dict) else None
        if isinstance(engines, list) and len(engines) > MAX_ENGINES:
            raise refuse("engines in one variant", MAX_ENGINES, len(engines), where)


def loads(raw: bytes | str, where: str, error: type[TrtpackError] = ManifestError) -> Any:
    """JSON from a file someone else wrote: bad JSON is ``error``, nesting too deep for the
    parser an UnsafePackError (never a RecursionError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise refuse("JSON nesting depth", MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, where) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{where} is not valid JSON: {e}") from None


def parse_manifest_json(raw: bytes | str, where: str) -> Any:
    """manifest.json's bytes -> JSON value, within the caps."""
    data = loads(raw, f"{where}: manifest.json")
    check_manifest_data(data, where)
    return data
