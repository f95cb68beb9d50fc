"""``describe``: one ExportedProgram -> everything a writer needs of it, in one call.

Every writer that stores a program (``save`` of one program or of several entry points, a
compiled module's fallback, the pre-2.7 migration) asks this one function: the program is
serialized once, and those same bytes are both stored and read for the interface (so the
manifest describes exactly what the pack holds); ``ranges`` narrow it, keyed by manifest
symbol or by the user's ``Dim`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch.export import ExportedProgram

from ..format.container import Source
from ..format.manifest import Interface, ProgramRef
from .derive import RangeLike, apply_ranges
from .graph_check import checked_graph
from .serialize import (
    SharedWeights,
    derive_with_names,
    dim_aliases,
    program_graph,
    program_members,
)


@dataclass
class Described:
    """A program as a pack stores it: its members, the manifest's reference to them, and the
    interface a call must match."""

    members: dict[str, Source]
    ref: ProgramRef
    interface: Interface
    #: the graph member, checked as a writer checks it (``PackParts.checked``)
    checked: dict[str, Source] = field(default_factory=dict)


def describe(
    ep: ExportedProgram,
    *,
    ranges: Mapping[str, RangeLike] | None = None,
    interface: Interface | None = None,
    folder: str = "program",
    engines: frozenset[str] = frozenset(),
    shared: SharedWeights | None = None,
) -> Described:
    """``ep``'s members (under ``folder``; ``engines`` names constants stored as plans of their
    own; ``shared``: the default entry point's weights, which another entry point's references)
    and its interface, derived from the stored graph unless ``interface`` is given (a compiled
    module carries the one it was compiled with), then narrowed by ``ranges``."""
    graph = program_graph(ep)
    # The check every writer runs before writing (``assemble.check_loadable``), run here, once:
    # it parses the graph for every reader of it below (each parse of a 50,000-node graph is
    # seconds) and lists its custom operators from the same walk
    parsed, called = checked_graph(graph, f"{folder}/graph.json", allow_ops=("*",))
    program, ref = program_members(ep, folder=folder, engines=engines, graph=graph,
                                   shared=shared, custom_ops=called)  # fmt: skip
    members: dict[str, Source] = dict(program)
    by_torch: dict[str, str] = {}
    if interface is None or ranges:
        derived, by_torch = derive_with_names(ep, parsed)
        interface = interface if interface is not None else derived
    if ranges:
        interface = apply_ranges(interface, ranges, dim_aliases(ep, by_torch))
    return Described(members, ref, interface, checked={ref.graph: graph})
