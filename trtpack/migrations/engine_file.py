"""A bare serialized TensorRT engine plus an input description -> pack members. No torch.

A plan cannot tell its inputs without a GPU, so they are described, in a compact form::

    x:float32[1..64@8,3,224,224]          a dim is N, MIN..MAX@OPT or MIN..MAX (opt = max)
    x:float32[batch=1..64@8,3,224,224]    a named dim; later inputs reuse it by name:
    mask:float32[batch,10]                (one symbol, shared)

or as JSON: ``{"inputs": [{"name": "x", "dtype": "float32", "shape": [{"name": "batch",
"min": 1, "opt": 8, "max": 64}, 3, 224, 224]}], "outputs": [...]}``. Outputs use the same
forms (their dims: ints, symbol names or ``?``, unknown). Outputs must be described too: a
plan's bindings cannot be read without a GPU (``trtpack inspect PLAN`` shows the names its
bytes quote).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import MigrationError
from ..format.manifest import Interface, IOSpec, Symbol
from ..format.pytree import call_tree
from ..format.weights import DTYPES

_SPEC = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*:\s*(?P<dtype>[a-z0-9_]+)\s*\[(?P<dims>[^\]]*)\]\s*$"
)
_RANGE = re.compile(
    r"^(?:(?P<sym>[A-Za-z_][A-Za-z0-9_]*)=)?(?P<lo>\d+)\.\.(?P<hi>\d+)(?:@(?P<opt>\d+))?$"
)


def parse_description(
    inputs: Sequence[str | dict], outputs: Sequence[str | dict] = ()
) -> Interface:
    """Compact strings or JSON objects -> the manifest's interface (inputs are positional,
    in order)."""
    symbols: dict[str, Symbol] = {}
    specs = [_parse_one(s, symbols, is_input=True) for s in inputs]
    if not specs:
        raise MigrationError(
            "describe at least one input, e.g. --input-spec 'x:float32[1..64@8,3]'"
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise MigrationError(f"input names must be unique, got {names}")
    outs = [_parse_one(s, symbols, is_input=False) for s in outputs]
    if not outs:  # an invented name would not be the engine's: refused before a GPU sees it
        raise MigrationError(
            "describe the engine's outputs too, e.g. --output-spec 'out:float32[batch,10]'"
        )
    for i, o in enumerate(outs):
        path = "output" if len(outs) == 1 else f"output[{i}]"
        outs[i] = IOSpec(**{**o.__dict__, "path": path})
    out_tree: dict[str, Any] = (
        {"type": "leaf"}
        if len(outs) == 1
        else {"type": "tuple", "children": [{"type": "leaf"}] * len(outs)}
    )
    specs = [IOSpec(**{**s.__dict__, "path": f"args[{i}]"}) for i, s in enumerate(specs)]
    return Interface(tuple(specs), tuple(outs), dict(sorted(symbols.items())),
                     call_tree(len(specs), []), out_tree)  # fmt: skip


def _parse_one(spec: str | dict, symbols: dict[str, Symbol], *, is_input: bool) -> IOSpec:
    if isinstance(spec, str):
        m = _SPEC.match(spec)
        if not m:
            raise MigrationError(
                f"cannot read {spec!r}: expected NAME:DTYPE[DIMS], "
                "e.g. 'x:float32[1..64@8,3,224,224]'"
            )
        name, dtype = m["name"], m["dtype"]
        raw_dims: list[Any] = [d.strip() for d in m["dims"].split(",")] if m["dims"].strip() else []
    elif isinstance(spec, dict):
        try:
            name, dtype, raw_dims = spec["name"], spec["dtype"], list(spec["shape"])
        except KeyError as e:
            raise MigrationError(f"input description {spec!r} lacks {e}") from None
    else:
        raise MigrationError(f"an input description is a string or an object, not {spec!r}")
    if dtype not in DTYPES:
        raise MigrationError(f"{name}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    shape = []
    for i, d in enumerate(raw_dims):
        shape.append(_dim(d, name, i, symbols, is_input))
    return IOSpec(name=name, path="", kind="tensor", dtype=dtype, shape=tuple(shape))


def _dim(d: Any, name: str, i: int, symbols: dict[str, Symbol], is_input: bool) -> int | str:
    where = f"{name} dim {i}"
    if isinstance(d, int) or (isinstance(d, str) and d.isdigit()):
        return int(d)
    if isinstance(d, dict):
        sym = d.get("name") or f"{name}_dim{i}"
        try:
            lo, hi = int(d["min"]), int(d["max"])
        except (KeyError, TypeError, ValueError):
            raise MigrationError(f"{where}: {d!r} needs integer min and max") from None
        return _define(sym, lo, hi, d.get("opt"), where, symbols)
    if isinstance(d, str):
        m = _RANGE.match(d)
        if m:
            return _define(m["sym"] or f"{name}_dim{i}", int(m["lo"]), int(m["hi"]), m["opt"],
                           where, symbols)  # fmt: skip
        if d.isidentifier():
            if d not in symbols:
                raise MigrationError(
                    f"{where}: {d!r} names no dim defined before (as {d}=MIN..MAX)"
                )
            return d
        if not is_input and d == "?":
            return d
    raise MigrationError(
        f"{where}: cannot read dim {d!r}; use N, MIN..MAX@OPT or NAME=MIN..MAX@OPT"
    )


def _define(sym: str, lo: int, hi: int, opt: Any, where: str, symbols: dict[str, Symbol]) -> str:
    o = hi if opt is None else int(opt)
    if not lo <= o <= hi:
        raise MigrationError(f"{where}: needs min <= opt <= max, got {lo}..{hi}@{o}")
    new = Symbol(lo, hi, o, "override" if opt is not None else "rule")
    if sym in symbols and (symbols[sym].min, symbols[sym].max) != (lo, hi):
        raise MigrationError(f"{where}: {sym!r} is defined twice with different ranges")
    symbols.setdefault(sym, new)
    return sym


def read_description(path: str) -> tuple[list[Any], list[Any]]:
    """A JSON description file: {"inputs": [...], "outputs": [...]}."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise MigrationError(f"cannot read the input description {path}: {e}") from None
    if not isinstance(data, dict) or "inputs" not in data:
        raise MigrationError(f"{path}: expected a JSON object with 'inputs' (and 'outputs')")
    return list(data["inputs"]), list(data.get("outputs", []))
