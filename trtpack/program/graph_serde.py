"""torch.export's serialized program (the dataclasses ``torch._export.serde.schema`` defines)
made from an ExportedProgram by torch's own serializer pieces, without the two things
``ExportedProgramSerializer.serialize`` does that change nothing in the result:

- ``GraphModuleSerializer.serialize_graph`` builds the module's whole readable source
  (``print_readable``, torch.fx code generation) as the argument of a ``log.debug`` line,
  whether or not debug logging is on: at 10,000 nodes, a quarter of torch's serializing time;
- ``canonicalize`` of a deep copy of the result, done only to test that the canonical form is
  well defined, its result dropped.

Everything that writes the program is torch's: ``GraphModuleSerializer``'s ``handle_*`` for
every node, its signature, module call graph and metadata serializers,
``serialize_range_constraints``; only the loop and the dataclass constructors of
``GraphModuleSerializer.serialize_graph`` / ``serialize`` and
``ExportedProgramSerializer.serialize`` are followed here (torch 2.13 and 2.14.1 have the same
ones). :func:`available` takes this path only where the schema's dataclasses have exactly the
fields those constructors fill, on a schema version it was compared on, and torch's serializer
logger is not asking for the debug line; elsewhere the caller runs torch's serializer.
tests/test_graph_json.py compares the JSON with torch's ``serialize`` on every test model,
tests/test_corpus.py on the ExportDB corpus.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from typing import Any

import torch
from torch.export import ExportedProgram

#: serde schema versions (major, minor) whose programs this module's output was compared on
#: byte for byte against torch's serializer (torch 2.13.0 and 2.14.1 both write 8.20)
COMPARED_SCHEMAS = frozenset([(8, 20)])

# the fields the constructors below fill, per schema dataclass
_PROGRAM_FIELDS = ("graph_module", "opset_version", "range_constraints", "schema_version",
                   "verifiers", "torch_version", "guards_code")  # fmt: skip
_MODULE_FIELDS = ("graph", "signature", "module_call_graph", "metadata",
                  "treespec_namedtuple_fields")  # fmt: skip
_SERIALIZER_METHODS = ("serialize_signature", "serialize_module_call_graph",
                       "serialize_graph_module_metadata")  # fmt: skip


def available(serde: Any) -> bool:
    """Whether :func:`serialized_program` writes what torch's ``ExportedProgramSerializer``
    would with this torch's serializer module ``serde``."""
    needed = ("GraphModuleSerializer", "GraphState", "ExportedProgram", "GraphModule", "Graph",
              "SchemaVersion", "SCHEMA_VERSION", "SerializeError", "serialize_range_constraints",
              "log")  # fmt: skip
    if not all(hasattr(serde, name) for name in needed):
        return False
    if tuple(serde.SCHEMA_VERSION) not in COMPARED_SCHEMAS:
        return False
    if serde.log.isEnabledFor(logging.DEBUG):
        return False  # the user asked for torch's debug log, readable graph included
    if not all(hasattr(serde.GraphModuleSerializer, m) for m in _SERIALIZER_METHODS):
        return False
    state = {f.name for f in dataclasses.fields(serde.GraphState)}
    return (
        _fields(serde.ExportedProgram) == set(_PROGRAM_FIELDS)
        and _fields(serde.GraphModule) == set(_MODULE_FIELDS)
        and _fields(serde.Graph) <= state  # each field of a Graph is the state's of that name
    )


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def serialized_program(serde: Any, ep: ExportedProgram) -> Any:
    """``ExportedProgramSerializer().serialize(ep).exported_program`` (weights, constants and
    example inputs are not serialized); the caller enters
    ``serde._enable_graph_inputs_of_type_nn_module`` around it as torch's ``serialize`` does."""
    ep.validate()
    gms = serde.GraphModuleSerializer(ep.graph_signature, ep.module_call_graph)
    gm = ep.graph_module
    for node in gm.graph.nodes:
        try:
            getattr(gms, f"handle_{node.op}")(node)
        except Exception as e:
            raise serde.SerializeError(
                f"Failed serializing node {node} in graph: {node.format_node()}\n Original "
                f"exception {traceback.format_exc()}"
            ) from e
    state = gms.graph_state
    graph = serde.Graph(**{f.name: getattr(state, f.name) for f in dataclasses.fields(serde.Graph)})
    module = serde.GraphModule(
        graph=graph,
        signature=gms.serialize_signature(gms.graph_signature),
        module_call_graph=gms.serialize_module_call_graph(gms.module_call_graph),
        metadata=gms.serialize_graph_module_metadata(gm.meta),
        treespec_namedtuple_fields=gms.treespec_namedtuple_fields,
    )
    range_constraints = serde.serialize_range_constraints(ep.range_constraints)
    for name in ep.constants:
        if name in gms.custom_objs:  # torch's serializer refuses the clash too
            raise AssertionError(f"constant name {name!r} already exists in constants")
    return serde.ExportedProgram(
        graph_module=module,
        opset_version={"aten": torch._C._get_max_operator_version()},
        range_constraints=range_constraints,
        schema_version=serde.SchemaVersion(
            major=serde.SCHEMA_VERSION[0], minor=serde.SCHEMA_VERSION[1]
        ),
        verifiers=[v.dialect for v in ep.verifiers],
        torch_version=torch.__version__,
        guards_code=ep._guards_code,
    )
