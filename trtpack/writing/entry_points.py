"""Multi-entry-point, stateful packs (format 1.4; docs/multi-entry.md, SPEC §5c).

``save({"prefill": ep1, "decode": ep2}, path)`` writes the first program as the pack's
default entry point (the top level of the manifest, complete), the others under
``entry_points/<name>/`` with only the tensors the default does not hold, and declares the
state: the tensors some entry point writes in place, shared by every entry point that names
them. What a program writes in place is derived from its graph, here at save and again from
the loaded module at load, where the two must agree.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.export import ExportedProgram

from ..errors import ArgumentTypeError, ManifestError, TrtpackError
from ..format.manifest import EntryPoint, State, StateTensor, StateUse

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _root(node: Any) -> Any:
    """The node a view chain starts from (``x[0].view(...)`` -> ``x``)."""
    seen = 0
    while (
        isinstance(node, torch.fx.Node)
        and node.op == "call_function"
        and isinstance(node.target, torch._ops.OpOverload)
        and node.target._schema.arguments
        and node.target._schema.arguments[0].alias_info is not None
        and not node.target._schema.arguments[0].alias_info.is_write
        and node.args
        and seen < 10_000
    ):
        node, seen = node.args[0], seen + 1
    return node


def written_nodes(graph: torch.fx.Graph) -> Iterable[Any]:
    """Every placeholder or get_attr node some operator writes in place (directly, or
    through a view of it): an argument whose schema says it is written (``Tensor(a!)``)."""
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        for i, arg in enumerate(target._schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
            values = value if isinstance(value, (list, tuple)) else (value,)
            for v in values:
                root = _root(v)
                if isinstance(root, torch.fx.Node) and root.op in ("placeholder", "get_attr"):
                    yield root


def program_state(ep: ExportedProgram) -> tuple[set[str], set[str]]:
    """What ``ep`` writes in place: (its parameters, buffers and constants by name, its user
    inputs by placeholder name, which is the manifest's input name)."""
    sig = ep.graph_signature
    lifted = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **sig.inputs_to_lifted_tensor_constants,
    }
    tensors = set(sig.buffers_to_mutate.values())
    inputs = set(sig.user_inputs_to_mutate.values())
    user = set(sig.user_inputs)
    for node in written_nodes(ep.graph):
        if node.name in lifted:
            tensors.add(lifted[node.name])
        elif node.name in user:
            inputs.add(node.name)
    return tensors, inputs


def module_state(module: Any) -> set[str] | None:
    """The attributes a loaded program module writes in place (by dotted name), or None for
    a runner that is not a torch.fx graph (an engine)."""
    graph = getattr(module, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    return {str(n.target) for n in written_nodes(graph) if n.op == "get_attr"}


def _tensors_of(ep: ExportedProgram) -> dict[str, torch.Tensor]:
    return {
        **dict(ep.state_dict),
        **{k: v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)},
    }


def check_programs(programs: Any) -> dict[str, ExportedProgram]:
    """The ``{name: ExportedProgram}`` a multi-entry save takes, checked."""
    if not isinstance(programs, Mapping) or not programs:
        raise ArgumentTypeError("obj", "a non-empty dict of entry point name -> program", programs)
    out: dict[str, ExportedProgram] = {}
    for name, ep in programs.items():
        if not isinstance(name, str) or not _NAME.match(name) or keyword.iskeyword(name):
            raise TrtpackError(
                f"entry point name {name!r} must be a Python identifier ([A-Za-z_][A-Za-z0-9_]*)"
            )
        if not isinstance(ep, ExportedProgram):
            raise ArgumentTypeError(
                f"obj[{name!r}]", "a torch.export.ExportedProgram (a multi-entry pack of "
                "compiled modules is not supported yet: save the programs, then add engines)",
                ep,
            )  # fmt: skip
        out[name] = ep
    return out


def declare_state(programs: Mapping[str, ExportedProgram], default: str) -> State | None:
    """The pack's state declaration, or None when no entry point writes anything in place.
    Refuses what the format cannot share faithfully: two distinct mutable tensors of one
    name, and a mutable tensor shared by entry points that the default does not hold."""
    written = {name: program_state(ep) for name, ep in programs.items()}
    mutable = set().union(*(t for t, _ in written.values()))
    if not mutable and not any(i for _, i in written.values()):
        return None
    tensors = {name: _tensors_of(ep) for name, ep in programs.items()}
    declared: dict[str, StateTensor] = {}
    for t in sorted(mutable):
        holders = [n for n in programs if t in tensors[n]]
        storages = {tensors[n][t].untyped_storage().data_ptr() for n in holders}
        if len(storages) > 1:
            raise TrtpackError(
                f"entry points {holders} each have their own tensor {t!r}, which one of them "
                "writes in place; a pack shares state by name, so the tensors must be one (export "
                "the entry points from the same module) or have different names",
            )
        if len(holders) > 1 and default not in holders:
            raise TrtpackError(
                f"entry points {holders} share the state tensor {t!r}, which the default entry "
                f"point {default!r} does not have; put one of {holders} first",
            )
        first = tensors[holders[0]][t]
        declared[t] = StateTensor(str(first.dtype).removeprefix("torch."), tuple(first.shape))
    uses = {
        name: StateUse(
            reads=tuple(sorted(mutable & set(tensors[name]))),
            mutates=tuple(sorted(written[name][0])),
            mutated_inputs=tuple(sorted(written[name][1])),
        )
        for name in sorted(programs)
    }
    return State(tensors=declared, entry_points=uses)


def parts_of_programs(
    programs: Mapping[str, ExportedProgram], *, ranges: Any = None
) -> tuple[Any, dict[str, EntryPoint]]:
    """The parts of a multi-entry pack: the default program's ``PackParts`` (its members,
    interface and reference) with the other entry points' members added, and the other
    entry points' records."""
    from ..program.serialize import SharedWeights, derive_interface, program_members
    from .assemble import PackParts

    names = list(programs)
    default = names[0]
    state = declare_state(programs, default)
    members, ref = program_members(programs[default])
    graph = members[ref.graph]
    assert isinstance(graph, bytes)
    parts = PackParts(derive_interface(programs[default], ranges=ranges, graph=graph),
                      dict(members), ref)  # fmt: skip
    mutable = frozenset(state.tensors) if state else frozenset()
    shared = SharedWeights(programs[default], ref.weights, mutable)
    others: dict[str, EntryPoint] = {}
    for name in names[1:]:
        ep = programs[name]
        m, r = program_members(ep, folder=f"entry_points/{name}", shared=shared)
        g = m[r.graph]
        assert isinstance(g, bytes)
        others[name] = EntryPoint(derive_interface(ep, ranges=ranges, graph=g), r)
        parts.members.update(m)
    parts.entry_point = default
    parts.entry_points = others or None
    parts.state = state
    return parts, others


def check_loaded_state(manifest: Any, name: str, module: Any) -> set[str]:
    """What the loaded entry point's module writes in place, which must be what the manifest
    declares for it (a pack whose declaration differs is refused: it is checked, not
    trusted). A pack without a declaration (before 1.4) gets the derived set."""
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
