"""Listing and removing a local pack's engine variants. No torch.

    trtpack.engine_variants("model.trtpack")          # [Variant(name="rtx_sm86", ...), ...]
    trtpack.remove_engine("model.trtpack", "rtx_sm86")  # in place, or out=... (overwrite=)
    $ trtpack engines model.trtpack [--json]
    $ trtpack remove-engine model.trtpack rtx_sm86 [-o OUT [--force]]

The pack's other members are copied byte for byte (same SHA-256), through the one writer
(``assemble.py``), as ``add_engine`` does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import EngineError
from ..format.atomic import pack_lock
from ..format.container import PathLike
from ..format.manifest import Variant
from ..reading import PackInfo, inspect, open_pack
from .add import refuse_existing
from .assemble import PackParts, write


def engine_variants(pack: PathLike) -> list[Variant]:
    """The engine variants of a local pack, in manifest order (read from its manifest alone)."""
    return list(inspect(pack).manifest.engines)


def _members_of(v: Variant) -> set[str]:
    names = {e.member for e in v.engines}
    if v.program is not None:
        names |= {v.program.graph, v.program.weights}
    return names


def remove_engine(
    pack: PathLike,
    variant: str,
    *,
    out: PathLike | None = None,
    overwrite: bool = False,
    entry_point: str | None = None,
) -> PackInfo:
    """``pack`` without engine variant ``variant`` and the members only it used, written
    atomically to ``out`` (default: in place; an existing ``out`` other than ``pack`` is
    replaced only with ``overwrite=True``). EngineError names the variants if it has none of
    that name. ``entry_point`` (format 1.4): the entry point the variant belongs to (default:
    the default one); the other entry points and the state are kept."""
    target = Path(out) if out is not None else Path(pack)
    refuse_existing(pack, out, overwrite)
    # the lock held from before the read until after the rename, as add_engine holds it
    with pack_lock(target), open_pack(pack) as (reader, info):
        whole = info.manifest
        name = whole.default_entry_point if entry_point is None else entry_point
        m = whole.entry(name)  # an unknown name: ManifestError naming the entry points
        names = [v.name for v in m.engines]
        if variant not in names:
            raise EngineError(
                f"{info.path} has no engine variant {variant!r} (variants: "
                f"{', '.join(names) or 'none'})",
                field="variant",
                expected=names,
                got=variant,
            )
        kept = tuple(v for v in m.engines if v.name != variant)
        still_used = set().union(*(_members_of(v) for v in kept))
        if m.program is not None:
            still_used |= {m.program.graph, m.program.weights}
        if m.samples is not None:
            still_used.add(m.samples.member)
        for other in whole.entry_point_names:  # what the other entry points use stays
            if other != name:
                o = whole.entry(other)
                still_used |= set().union(*(_members_of(v) for v in o.engines))
                if o.program is not None:
                    still_used |= {o.program.graph, o.program.weights}
                if o.samples is not None:
                    still_used.add(o.samples.member)
        gone = _members_of(next(v for v in m.engines if v.name == variant)) - still_used
        if m.program is None and not kept:
            raise EngineError(
                f"{info.path} holds no program, and {variant!r} is its last engine variant: "
                "removing it would leave nothing to run",
                field="variant",
                got=variant,
            )
        samples = m.samples
        if samples is not None and variant in samples.variants:
            tolerances = {k: t for k, t in samples.variants.items() if k != variant}
            samples = dataclasses.replace(samples, variants=tolerances)
        members = {n: reader.slice(n) for n in m.members if n not in gone}
        top, entry_points = whole, whole.entry_points
        if name != whole.default_entry_point:  # another entry point's variant
            assert entry_points is not None
            entry = dataclasses.replace(entry_points[name], engines=kept, samples=samples)
            entry_points = {**entry_points, name: entry}
        else:
            top = dataclasses.replace(whole, engines=kept, samples=samples)
        # every entry point and the state carried over: an edit of one keeps the others
        parts = PackParts(top.interface, members, top.program, top.engines, dict(top.metadata),
                          top.producer, samples=top.samples, entry_point=top.entry_point,
                          entry_points=entry_points, state=top.state)  # fmt: skip
        return write(parts, target, overwrite=True)
