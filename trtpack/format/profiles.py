"""Engine-profile maths: a tensor input's optimization profile from its symbols, the symbol
ranges each profile accepts, the ranges the engines narrow, and how a whole-graph engine's
bindings differ from the manifest's inputs and outputs. No torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .dims import parse_dim
from .records import EngineSpec, IOSpec, Symbol, Variant


def input_profile(
    spec: IOSpec, symbols: Mapping[str, Symbol]
) -> tuple[tuple[tuple[int, int, int], ...], str | None]:
    """A tensor input's (min, opt, max) per dim from its symbols' ranges — the optimization
    profile an engine for it is built with — and the first unbounded symbol (whose max the
    profile cannot have), or None."""
    rows = []
    for d in spec.shape or ():
        if isinstance(d, int):
            rows.append((d, d, d))
            continue
        expr = parse_dim(d)
        sym = symbols[expr.symbol]
        if sym.max is None:
            return tuple(rows), expr.symbol
        rows.append((expr.value(sym.min), expr.value(sym.opt), expr.value(sym.max)))
    return tuple(rows), None


def profile_boxes(
    engines: Sequence[EngineSpec], inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> list[dict[str, tuple[int, int | None]]]:
    """For each optimization profile index, the range of every symbol that all the engines'
    profiles of that index accept (a symbol not in a box is unconstrained by it). A call runs
    on the first profile whose box holds its symbols."""
    by_name = {i.name: i for i in inputs if i.is_tensor}
    count = max((len(b.profiles) for e in engines for b in e.inputs), default=0)
    boxes: list[dict[str, tuple[int, int | None]]] = []
    for k in range(count):
        box: dict[str, tuple[int, int | None]] = {}
        for engine in engines:
            for binding in engine.inputs:
                spec, profiles = by_name.get(binding.name), binding.profiles
                if spec is None or not profiles:
                    continue
                rows = profiles[min(k, len(profiles) - 1)]
                for dim, (pmin, _, pmax) in zip(spec.shape or (), rows):
                    if not isinstance(dim, str):
                        continue
                    expr = parse_dim(dim)
                    sym = symbols[expr.symbol]
                    lo = -(-(pmin - expr.offset) // expr.coef)  # ceil: the smallest root it takes
                    hi = None if pmax < 0 else (pmax - expr.offset) // expr.coef
                    cur_lo, cur_hi = box.get(expr.symbol, (sym.min, sym.max))
                    box[expr.symbol] = (
                        max(cur_lo, lo),
                        cur_hi if hi is None else (hi if cur_hi is None else min(cur_hi, hi)),
                    )
        boxes.append(box)
    return boxes


def narrowed_ranges(
    engines: Sequence[EngineSpec], inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> dict[str, tuple[int, int | None]]:
    """Symbols whose exported range the engines' profiles only partly cover: the contract
    checks calls against these when the engines run (three ways: manifest, program, profiles).
    With several profiles, a symbol's range spans them all (the contract also refuses a call
    that falls between two)."""
    out: dict[str, tuple[int, int | None]] = {}
    boxes = profile_boxes(engines, inputs, symbols)
    for name in sorted({n for box in boxes for n in box}):
        sym = symbols[name]
        spans = [box.get(name, (sym.min, sym.max)) for box in boxes]
        lo = min(s[0] for s in spans)
        his = [s[1] for s in spans]
        hi = None if None in his else max(h for h in his if h is not None)
        if (lo, hi) != (sym.min, sym.max):
            out[name] = (lo, hi)
    return out


def whole_graph_mismatch(
    variant: Variant, inputs: tuple[IOSpec, ...], outputs: tuple[IOSpec, ...]
) -> str | None:
    """How a whole-graph engine's bindings differ from the tensor inputs and outputs they
    must be (names, dtypes, ranks, static dims, output count), or None."""
    if len(variant.engines) != 1:
        return (
            f"engine variant {variant.name!r} is whole-graph but has {len(variant.engines)} engines"
        )
    (engine,) = variant.engines
    tensors = {i.name: i for i in inputs if i.is_tensor}
    where = f"engine variant {variant.name!r}"
    if sorted(b.name for b in engine.inputs) != sorted(tensors):
        return (
            f"{where}: engine inputs {[b.name for b in engine.inputs]} are not the manifest's "
            f"tensor inputs {list(tensors)}"
        )
    for b in engine.inputs:
        spec = tensors[b.name]
        if b.dtype != spec.dtype or len(b.shape) != len(spec.shape or ()):
            return (
                f"{where}: engine input {b.name!r} is {b.dtype}{list(b.shape)}, the manifest "
                f"says {spec.dtype}{list(spec.shape or ())}"
            )
        for i, (got, want) in enumerate(zip(b.shape, spec.shape or ())):
            if isinstance(want, int) and got != want:
                return (
                    f"{where}: engine input {b.name!r} dim {i} is {got}, the manifest says {want}"
                )
    if len(engine.outputs) != len(outputs):
        return f"{where}: the engine has {len(engine.outputs)} outputs, the manifest {len(outputs)}"
    for b, spec in zip(engine.outputs, outputs):
        if not spec.is_tensor or b.dtype != spec.dtype:
            return (
                f"{where}: engine output {b.name!r} is {b.dtype}, the manifest's {spec.path} is "
                f"{spec.dtype or spec.kind}"
            )
    return None
