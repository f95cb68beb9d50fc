"""Multi-entry-point, stateful packs (format 1.4; docs/multi-entry.md, SPEC §5c).

``save({"prefill": ep1, "decode": ep2}, path)`` writes the first program as the pack's
default entry point (the top level of the manifest, complete), the others under
``entry_points/<name>/`` with only the tensors the default does not hold, and declares the
state: the tensors some entry point writes in place, shared by every entry point that names
them. What a program writes in place is derived from its graph (``program/state.py``), at
save and again from the loaded module at load, where the two must agree. A compiled
module's entry point is saved as its source program, its engines a variant of that entry
point (``save.py``), moved under ``entry_points/<name>/engines/`` here (``relocated``).
"""

from __future__ import annotations

import dataclasses
import keyword
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ArgumentTypeError, ManifestError, TrtpackError
from ..format.container import Source
from ..format.manifest import EntryPoint, ProgramRef, Variant

if TYPE_CHECKING:  # torch is imported where a program is read: add_engine (moved,
    from torch.export import ExportedProgram  # relocated) stays torch-free

__all__ = [
    "check_loaded_state",
    "check_name",
    "check_programs",
    "moved",
    "parts_of_programs",
    "relocated",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(name: Any) -> str:
    """An entry point's name: a Python identifier (it names members and attributes)."""
    if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
        raise TrtpackError(
            f"entry point name {name!r} must be a Python identifier ([A-Za-z_][A-Za-z0-9_]*)"
        )
    return name


def check_programs(programs: Any) -> dict[str, ExportedProgram]:
    """The ``{name: ExportedProgram}`` a multi-entry save takes, checked (a compiled module's
    entry point is given here as its source program)."""
    from torch.export import ExportedProgram

    if not isinstance(programs, Mapping) or not programs:
        raise ArgumentTypeError("obj", "a non-empty dict of entry point name -> program", programs)
    out: dict[str, ExportedProgram] = {}
    for name, ep in programs.items():
        check_name(name)
        if not isinstance(ep, ExportedProgram):
            raise ArgumentTypeError(
                f"obj[{name!r}]", "a torch.export.ExportedProgram or a compiled module (trtpack."
                "compile, torch_tensorrt.dynamo.compile with source=)", ep,
            )  # fmt: skip
        out[name] = ep
    return out


def moved(v: Variant, name: str, old: str, new: str, members: dict[str, Source]) -> Variant:
    """``v`` named ``name``, its members under ``old`` moved to ``new`` (in ``members`` too)."""

    def move(member: str) -> str:
        if not member.startswith(old):
            return member
        new_name = new + member[len(old) :]
        members[new_name] = members.pop(member)
        return new_name

    engines = tuple(dataclasses.replace(e, member=move(e.member)) for e in v.engines)
    program = None
    if v.program is not None:
        program = ProgramRef(move(v.program.graph), move(v.program.weights),
                             v.program.serde_schema, v.program.custom_ops)  # fmt: skip
    return Variant(name, v.target, engines, program, v.ranges)


def relocated(v: Variant, entry_point: str, members: dict[str, Source]) -> Variant:
    """``v`` of a non-default entry point: its members move from ``engines/`` to
    ``entry_points/<entry_point>/engines/``."""
    return moved(v, v.name, "engines/", f"entry_points/{entry_point}/engines/", members)


def parts_of_programs(
    programs: Mapping[str, ExportedProgram],
    *,
    ranges: Any = None,
    interfaces: Mapping[str, Any] | None = None,
    entry_ranges: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, EntryPoint]]:
    """The parts of a multi-entry pack: the default program's ``PackParts`` (its members,
    interface and reference) with the other entry points' members added, and the other
    entry points' records. ``interfaces``: the given interface of an entry point (compiled
    with ``trtpack.compile``), instead of the derived one; ``entry_ranges``: each entry
    point's ranges, instead of ``ranges`` for all."""
    from ..program.describe import describe
    from ..program.serialize import SharedWeights
    from ..program.state import declare_state
    from .assemble import PackParts

    given = dict(interfaces or {})
    names = list(programs)
    default = names[0]
    state = declare_state(programs, default)
    per = dict(entry_ranges) if entry_ranges is not None else dict.fromkeys(names, ranges)
    # each program through ``describe``, as ``save`` of one: its graph made, parsed and
    # checked once, and the interface derived from the bytes stored
    top = describe(programs[default], ranges=per.get(default), interface=given.get(default))
    parts = PackParts(top.interface, dict(top.members), top.ref, checked=dict(top.checked))
    mutable = frozenset(state.tensors) if state else frozenset()
    shared = SharedWeights(programs[default], top.ref.weights, mutable)
    others: dict[str, EntryPoint] = {}
    for name in names[1:]:
        d = describe(programs[name], ranges=per.get(name), interface=given.get(name),
                     folder=f"entry_points/{name}", shared=shared)  # fmt: skip
        others[name] = EntryPoint(d.interface, d.ref)
        parts.members.update(d.members)
        parts.checked.update(d.checked)
    parts.entry_point = default
    parts.entry_points = others or None
    parts.state = state
    return parts, others


def check_loaded_state(manifest: Any, name: str, module: Any) -> set[str]:
    """What the loaded entry point's module writes in place, which must be what the manifest
    declares for it (a pack whose declaration differs is refused: it is checked, not
    trusted). A pack without a declaration (before 1.4) gets the derived set."""
    from ..program.state import module_state

    derived = module_state(module)
    if derived is None:
        return set()
    state = manifest.state
    if state is None:
        return derived
    use = state.entry_points.get(name)
    declared = set(use.mutates) if use is not None else set()
    if declared != derived:
        raise ManifestError(
            f"entry point {name!r}: the manifest declares that it writes {sorted(declared)} in "
            f"place, its program writes {sorted(derived)}",
            field=f"state/entry_points/{name}/mutates", expected=sorted(derived),
            got=sorted(declared),
        )  # fmt: skip
    return derived
