"""State of multi-entry packs (format 1.4, docs/multi-entry.md): what a program writes in
place, derived from its graph; the pack's state declaration over several programs; and why
an entry point cannot run a TensorRT engine. Below ``engines/`` and ``writing/``: both
``trtpack.compile`` and the writers ask it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.export import ExportedProgram

from ..errors import TrtpackError
from ..format.manifest import State, StateTensor, StateUse


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
