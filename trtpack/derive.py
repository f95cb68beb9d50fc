"""ExportedProgram -> the manifest's description of inputs, outputs and symbols.

One derivation: the program is serialized as torch.export writes it and the interface is
read from that JSON by the torch-free reader (``migrations/serde_json.py``) that also reads
``torch.export.save`` files — so ``save`` and ``migrate`` of the same program give the same
manifest. This module only adds what the torch objects know beyond the JSON: the opts a
program loaded from a pack recorded, and the user's ``Dim`` names as aliases for ``ranges=``.
Range overrides (``apply_ranges``) and the loaded-program annotations live here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from .errors import DeriveError, RangeOverrideError
from .manifest import (
    Interface,
    IOSpec,
    Symbol,
    opt_rule,
    parse_dim,
)

#: What a user may pass to override a symbol's range at save.
RangeLike = Any  # Range | tuple[min, max] | tuple[min, max, opt] | Mapping with min/max/opt


#: ``graph_module.meta`` key where ``trtpack.load`` records the manifest's symbols by torch's
#: symbol name, so that saving a loaded program keeps the user's names and opts.
SYMBOLS_META_KEY = "trtpack_symbols"


@dataclass(frozen=True)
class Range:
    """A symbol's range for ``trtpack.save(..., ranges={"batch": Range(1, 32, opt=8)})``."""

    min: int | None = None
    max: int | None = None
    opt: int | None = None


# --- the entry point ---------------------------------------------------------------------


def derive_interface(
    ep: ExportedProgram,
    *,
    ranges: Mapping[str, RangeLike] | None = None,
    graph: bytes | None = None,
) -> Interface:
    """Describe ``ep``'s inputs, outputs and dynamic dims, applying range overrides (keyed
    by manifest symbol name or by the user's ``Dim`` name)."""
    iface, aliases = _derive(ep, graph)
    return apply_ranges(iface, ranges, aliases) if ranges else iface


def _derive(ep: ExportedProgram, graph: bytes | None = None) -> tuple[Interface, dict[str, str]]:
    """The one derivation: serialize ``ep`` as torch.export does and read the interface from
    that JSON with the torch-free reader that also reads legacy ``.pt2`` files
    (``migrations/serde_json.py``), so every route gives the same facts. The torch side adds
    only what a program loaded from a pack recorded (its symbols' opts) and the user's Dim
    names as aliases for ``ranges=``."""
    if not isinstance(ep, ExportedProgram):
        raise DeriveError(f"expected a torch.export.ExportedProgram, got {type(ep).__name__}")
    import json

    from .errors import MigrationError
    from .migrations.serde_json import SerializedProgram
    from .program import program_graph

    if graph is None:
        graph = program_graph(ep)
    try:
        program = SerializedProgram(json.loads(graph), where="the ExportedProgram")
        iface, by_torch = program.interface()
    except MigrationError as e:
        raise DeriveError(str(e)) from None
    recorded = ep.graph_module.meta.get(SYMBOLS_META_KEY) or {}
    if recorded:  # a program loaded from a pack: keep the opts its manifest chose
        symbols = dict(iface.symbols)
        for torch_name, name in by_torch.items():
            entry = recorded.get(torch_name)
            if entry is None or name not in symbols:
                continue
            kept, now = Symbol(**entry[1]), symbols[name]
            if now.min <= kept.opt and (now.max is None or kept.opt <= now.max):
                symbols[name] = Symbol(now.min, now.max, kept.opt, kept.opt_source)
        iface = dataclasses.replace(iface, symbols=symbols)
    aliases: dict[str, str] = {}
    for user, torch_names in _shape_env_dim_names(ep).items():
        found = next((by_torch[t] for t in torch_names if t in by_torch), None)
        if found is not None:
            aliases[user] = found
    return iface, aliases


def dim_aliases(ep: ExportedProgram) -> dict[str, str]:
    """The user's ``Dim`` names of ``ep`` -> the manifest's symbol names (for ``ranges=``)."""
    return _derive(ep)[1]


def _shape_env_dim_names(ep: ExportedProgram) -> dict[str, list[str]]:
    """The user's Dim name -> the torch symbols it named, from the shape environment of a
    freshly exported program (one Dim may name several symbols before export unified them).
    Used only to accept those names in ``ranges=``: the manifest never carries them."""
    env = None
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        sizes = val.shape if isinstance(val, torch.Tensor) else [val]
        env = next((d.node.shape_env for d in sizes if isinstance(d, torch.SymInt)), None)
        if env is not None:
            break
    if env is None:
        return {}
    debug = getattr(env, "source_name_to_debug_name", {}) or {}
    out: dict[str, list[str]] = {}
    for sym, sources in getattr(env, "var_to_sources", {}).items():
        for src in sources:
            name = src.name() if callable(src.name) else src.name
            candidate = debug.get(name)
            if candidate is None and type(src).__name__ == "ConstantSource":
                candidate = name  # the root of a derived Dim carries its name directly
            if candidate and candidate.isidentifier():
                out.setdefault(candidate, []).append(str(sym))
                break
    return out


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


def symbol_names(ep: ExportedProgram, inputs: tuple[IOSpec, ...]) -> dict[str, str]:
    """torch's symbol name (``s31``) -> the manifest's (``batch``), matched through the
    placeholders of ``ep``'s user inputs and the manifest's description of them."""
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    for spec in inputs:
        node = placeholders.get(spec.name)
        val = node.meta.get("val") if node is not None else None
        if spec.is_tensor and isinstance(val, torch.Tensor):
            pairs: list[tuple[Any, Any]] = list(zip(spec.shape or (), val.shape))
        elif spec.symbol is not None:
            pairs = [(spec.symbol, val)]
        else:
            continue
        for dim, actual in pairs:
            if isinstance(dim, str) and isinstance(actual, torch.SymInt):
                free = actual.node.expr.free_symbols
                if len(free) == 1:
                    names[str(next(iter(free)))] = parse_dim(dim).symbol
    return names


def annotate(
    ep: ExportedProgram, inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> None:
    """Record on a loaded program which torch symbol is which manifest symbol (see
    ``SYMBOLS_META_KEY``)."""
    ep.graph_module.meta[SYMBOLS_META_KEY] = {
        torch_name: (name, dataclasses.asdict(symbols[name]))
        for torch_name, name in symbol_names(ep, inputs).items()
        if name in symbols
    }
