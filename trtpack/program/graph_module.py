"""The runnable module of a pack's program, built straight from torch.export's JSON.

``program.runnable(load_program(...))`` — torch's deserializer, then ``ep.module()`` — is
what a pack runs on when no engine does, and its cost in a fresh process is mostly imports:
the deserializer imports ``torch._dynamo`` (through ``torch._export.non_strict_utils``),
seconds before the first inference. This module builds the same ``torch.fx.GraphModule``
that ``ep.module(check_guards=False)`` returns, from the parsed JSON, with only torch.fx:

- placeholders for the user inputs, in flat order; parameters, buffers and tensor constants
  as attributes (the tensors ``serialize._rebuild_state`` made), read by ``get_attr`` nodes at
  the positions of their lifted placeholders, as ``ep.module()`` unlifts them;
- one ``call_function`` node per serialized node, its arguments mapped the way
  ``GraphModuleDeserializer.deserialize_node`` / ``deserialize_inputs`` / ``deserialize_input``
  map them (torch/_export/serde/serialize.py), multiple results unpacked by ``getitem`` nodes
  like ``deserialize_outputs`` does;
- buffer, parameter and user-input mutations copied back with ``aten.copy_`` before the
  output, the user outputs returned through the program's own pytree specs
  (``_unlift._insert_copy_for_mutations`` and ``_get_codegen``);
- on a non-CPU device, device arguments moved as ``torch.export.passes.move_to_device_pass``
  moves them (every ``device=`` keyword, and the device of ``aten.to.device``).

Higher-order ops that only run a subgraph (``wrap_with_set_grad_enabled``, which a model
exported under ``torch.no_grad()`` carries, ``wrap_with_autocast``, ``cond``) are built the way
``deserialize_input`` builds an ``as_graph`` argument: the subgraph as a GraphModule of its
own, registered on the module and read by a ``get_attr`` node.

Whatever it does not reproduce exactly — other higher-order ops, custom
objects, effect tokens, training outputs, an argument kind or target it does not know, a
schema major it does not know — raises :class:`Unsupported` with the reason, and the loader
takes torch's deserializer instead: this path is sometimes not taken, never different.

Targets resolve only to operator overloads under ``torch.ops.aten`` / ``torch.ops.prims`` and
to a fixed table of Python functions (``operator``, ``math``, ``torch.sym_*``); nothing is
imported by name. The caller has run ``graph_check.check_graph`` on the same JSON first.
"""

from __future__ import annotations

import functools
import keyword
import math
import operator
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

from .gcpause import paused_gc
from .serde import (
    KEYWORD,
    LAYOUTS,
    MEMORY_FORMATS,
    POSITIONAL,
    PYTHON_CALLS,
    SCALAR_TYPES,
    SCHEMA_MAJOR,
    TESTED_SCHEMA_MINORS,
)
from .treespec import _children


class Unsupported(Exception):
    """The graph holds something this builder does not reproduce exactly (the message says
    what); torch's deserializer builds the program instead."""


# serde enum values -> the torch attribute their deserializer maps them to (serde.py)
_DTYPES, _LAYOUTS, _MEMORY_FORMATS = SCALAR_TYPES, LAYOUTS, MEMORY_FORMATS
_POSITIONAL, _KEYWORD = POSITIONAL, KEYWORD

# The Python callables a serialized program may call, by their serialized name -> (module,
# attribute path), resolved by getattr like torch's deserializer does (which follows any
# dotted path under torch, operator and math): serde.PYTHON_CALLS, the subset of
# graph_check's allowlist this builder reproduces.
_MODULES = {"operator": operator, "torch": torch, "math": math}
_FUNCTIONS = {name: (_MODULES[module], path) for name, (module, path) in PYTHON_CALLS.items()}

# torch's _SYM_OPS (serialize.py): these nodes take every input positionally and name their
# one symbolic result. Nodes of them are accepted only in that form, where torch's two code
# paths for callables agree, so a torch whose _SYM_OPS differs builds the same node.
_SYM_OPS = frozenset(
    [
        operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt,
        operator.neg, operator.pos, math.trunc, torch.sym_not, operator.mul, operator.add,
        operator.sub, operator.floordiv, operator.mod, operator.pow, torch.sym_int,
        torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min, torch.sym_sqrt,
        operator.truediv, operator.and_, operator.or_, operator.lshift, operator.rshift,
    ]
)  # fmt: skip

#: higher-order ops built here: each only runs its subgraph(s) on its operands, under a grad
#: mode or autocast, or picking one branch (``cond``). Others (map's and scan's carried
#: state, effects, invoke_subgraph's caching, torch_tensorrt's engines) take torch's path.
_HOPS = frozenset(["wrap_with_set_grad_enabled", "wrap_with_autocast", "cond"])

_OP = re.compile(r"torch\.ops\.(aten|prims)\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)\Z")
_SYM_KINDS = ("as_sym_int", "as_sym_float", "as_sym_bool")
# multiple results: the list kinds torch's generate_getitems unpacks into a getitem of a getitem
_LIST_RESULTS = ("as_tensors", "as_sym_ints", "as_sym_floats", "as_ints", "as_floats",
                 "as_strings", "as_bools", "as_sym_bools")  # fmt: skip


def schema_major() -> int | None:
    """The serde schema major of this torch (None if it has none where expected)."""
    try:
        from torch._export.serde.schema import SCHEMA_VERSION  # a plain dataclass module
    except ImportError:
        return None
    return int(SCHEMA_VERSION[0])


def build_module(
    program: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    constants: Mapping[str, Any],
    device: torch.device | None = None,
) -> torch.fx.GraphModule:
    """The module ``ep.module(check_guards=False)`` would be for the parsed torch.export JSON
    ``program`` with these weights, on ``device``. Raises :class:`Unsupported`."""
    version = program.get("schema_version") or {}
    major = version.get("major") if isinstance(version, dict) else None
    minor = version.get("minor") if isinstance(version, dict) else None
    if major != SCHEMA_MAJOR or schema_major() != SCHEMA_MAJOR:
        raise Unsupported(
            f"export schema major {major} (this builder follows {SCHEMA_MAJOR}, this torch "
            f"{schema_major()})"
        )
    if not isinstance(minor, int) or minor not in TESTED_SCHEMA_MINORS:
        # torch's deserializer accepts any minor of its major; this builder only the ones a
        # node-for-node test ran on (a newer minor may carry a field it would not see)
        tested = ", ".join(f"{SCHEMA_MAJOR}.{m}" for m in sorted(TESTED_SCHEMA_MINORS))
        raise Unsupported(
            f"export schema {major}.{minor} is not one the direct build was tested on ({tested})"
        )
    try:
        with paused_gc():  # a node is several objects, none of them garbage (program/gcpause.py)
            return _Builder(state_dict, constants).build(program["graph_module"], device)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        # malformed beyond what the checks above name: torch's deserializer says what is wrong
        raise Unsupported(f"unexpected graph JSON ({type(e).__name__}: {e})") from None


class _Builder:
    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        constants: Mapping[str, Any],
        targets: dict[str, Any] | None = None,
    ):
        self.state_dict = state_dict
        self.constants = constants
        #: serialized call target -> what ``_target`` resolved it to, shared with subgraphs'
        #: builders: a graph names the same few targets at every node
        self.targets: dict[str, Any] = {} if targets is None else targets
        self.graph = torch.fx.Graph()
        #: serialized value name -> the node that produces it (torch's serialized_name_to_node)
        self.values: dict[str, torch.fx.Node] = {}
        #: the module subgraphs (a higher-order op's ``as_graph`` arguments) are registered on:
        #: the graph module for the top graph, a fresh module for a subgraph, as torch's
        #: ``save_graph_module`` swaps them
        self.module = torch.nn.Module()
        #: every subgraph built, for the device move (``move_to_device_pass`` walks them all)
        self.subgraphs: list[torch.fx.Graph] = []

    def build(self, gm: Mapping[str, Any], device: torch.device | None) -> torch.fx.GraphModule:
        graph, signature = gm["graph"], gm["signature"]
        if graph.get("custom_obj_values"):
            raise Unsupported("the graph holds custom objects")
        module = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
        self.module = module
        lifted, user_inputs = self._inputs(module, graph["inputs"], signature["input_specs"])
        self._constants_left(module)
        for node in graph["nodes"]:
            self._node(node)
        self._outputs(graph["outputs"], signature["output_specs"], lifted, user_inputs)
        if device is not None and device.type != "cpu":
            self._move(str(device))
        self.graph._codegen = _codegen(gm["module_call_graph"])
        module.graph = self.graph  # recompiles: the generated forward() flattens the call
        return module

    # -- inputs: placeholders, and the lifted ones as attributes ---------------------------

    def _inputs(
        self, module: torch.nn.Module, inputs: list, specs: list
    ) -> tuple[dict[str, torch.fx.Node], dict[str, torch.fx.Node]]:
        if len(inputs) != len(specs):
            raise Unsupported(f"{len(inputs)} graph inputs but {len(specs)} input specs")
        lifted: dict[str, torch.fx.Node] = {}  # attribute name -> its get_attr node
        user_inputs: dict[str, torch.fx.Node] = {}  # placeholder name -> placeholder
        for i, (inp, spec) in enumerate(zip(inputs, specs)):
            kind, value = _union(inp)
            spec_kind, s = _union(spec)
            if spec_kind in ("parameter", "buffer", "tensor_constant"):
                if kind != "as_tensor":
                    raise Unsupported(f"a lifted {spec_kind} input of kind {kind}")
                target = self._lift(module, spec_kind, s)
                node = self.graph.get_attr(target)
                self._define(_str(value["name"]), node)
                lifted[target] = node
            elif spec_kind in ("user_input", "constant_input"):
                if kind == "as_tensor" or kind == "as_sym_int":
                    name = _str(value["name"] if kind == "as_tensor" else _named(value))
                    node = self.graph.placeholder(name)
                    self._define(name, node)
                    user_inputs[name] = node
                elif kind in ("as_int", "as_float", "as_bool", "as_none", "as_string"):
                    # a constant input: a placeholder nothing reads, named as torch names it
                    given = s.get("name") if spec_kind == "constant_input" else None
                    self.graph.placeholder(given if isinstance(given, str) and given else f"arg{i}")
                else:
                    raise Unsupported(f"a user input of kind {kind}")
            else:
                raise Unsupported(f"an input of kind {spec_kind}")  # custom_obj, token
        return lifted, user_inputs

    def _lift(self, module: torch.nn.Module, kind: str, spec: Mapping[str, Any]) -> str:
        """Assign a lifted input's tensor to the module as ``ep.module()`` does
        (``_register_attrs_to_new_gm``) and return its attribute path."""
        if kind == "parameter":
            target = _str(spec["parameter_name"])
            value = self.state_dict.get(target)
            if not isinstance(value, torch.nn.Parameter):
                raise Unsupported(f"parameter {target!r} is not a stored Parameter")
            _assign(module, target, lambda m, f: m.register_parameter(f, value))
        elif kind == "buffer":
            target = _str(spec["buffer_name"])
            persistent = spec["persistent"]
            if type(persistent) is not bool:
                raise Unsupported(f"buffer {target!r} has no persistent flag")
            # torch keeps a non-persistent buffer among the constants
            value = (self.state_dict if persistent else self.constants).get(target)
            if not isinstance(value, torch.Tensor):
                raise Unsupported(f"buffer {target!r} is not stored")
            _assign(module, target, lambda m, f: m.register_buffer(f, value, persistent))
        else:
            target = _str(spec["tensor_constant_name"])
            self._constant(module, target)
        return target

    def _constant(self, module: torch.nn.Module, target: str) -> None:
        value = self.constants.get(target)
        if not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter):
            raise Unsupported(f"constant {target!r} is not a stored plain tensor")
        if value.requires_grad:  # torch detaches it, with a warning
            raise Unsupported(f"constant {target!r} requires grad")
        _assign(module, target, lambda m, f: setattr(m, f, value))

    def _constants_left(self, module: torch.nn.Module) -> None:
        """Constants the signature does not name are attributes too (``ep.module()`` adds
        every constant not yet assigned)."""
        for name in self.constants:
            if not _has_attr(module, name):
                self._constant(module, name)

    # -- nodes ---------------------------------------------------------------------------

    def _node(self, node: Mapping[str, Any]) -> None:
        serialized_target = node["target"]
        target = self.targets.get(serialized_target) if isinstance(serialized_target, str) else None
        if target is None:
            target = _target(serialized_target)
            self.targets[serialized_target] = target
        inputs, outputs = node["inputs"], node["outputs"]
        name = node.get("name") or None
        if target in _SYM_OPS or target is torch.ops.aten.item.default:
            if any(i.get("kind") != _POSITIONAL for i in inputs) or len(outputs) != 1:
                raise Unsupported(f"{node['target']} with a keyword input or not one result")
            kind, value = _union(outputs[0])
            if kind not in _SYM_KINDS:
                raise Unsupported(f"{node['target']} with a result of kind {kind}")
            result = _named(value)
            args = tuple(self._arg(i["arg"]) for i in inputs)
            self._define(result, self._call(target, args, {}, name or result))
            return
        if isinstance(target, torch._ops.HigherOrderOperator):
            self._hop(node, target, name)
            return
        if isinstance(target, torch._ops.OpOverload):
            args, kwargs = self._schema_inputs(target, inputs)
        else:
            args, kwargs = self._plain_inputs(inputs)
        self._results(self._call(target, args, kwargs, name), outputs)

    def _hop(self, node: Mapping[str, Any], target: Any, name: str | None) -> None:
        """A higher-order op of ``_HOPS`` as torch's ``deserialize_node`` builds it: inputs
        as ``deserialize_hoo_inputs`` reads them (subgraphs built and registered on the way),
        and the results as ``deserialize_outputs`` maps them, where a single result not
        marked as a bare tensor is item 0 of a tuple."""
        outputs = node["outputs"]
        if name is None:  # torch's fallback naming depends on its version: its path instead
            raise Unsupported(f"{node['target']} node without a name")
        args, kwargs = self._plain_inputs(node["inputs"], self._hop_arg)
        fx_node = self._call(target, args, kwargs, name)
        single = node.get("is_hop_single_tensor_return")
        if single is not None and type(single) is not bool:
            raise Unsupported(f"{node['target']}: is_hop_single_tensor_return {single!r}")
        if len(outputs) == 1 and not single and _union(outputs[0])[0] != "as_none":
            kind, value = _union(outputs[0])
            if kind == "as_tensor":
                result = _str(value["name"])
            elif kind in _SYM_KINDS:
                result = _named(value)
            else:
                raise Unsupported(f"{node['target']} with one result of kind {kind}")
            self._getitem(fx_node, 0, result)
            self.values[fx_node.name] = fx_node  # torch maps the op's own name to it too
            return
        self._results(fx_node, outputs)

    def _hop_arg(self, arg: Any) -> Any:
        kind, value = _union(arg)
        return self._subgraph(value) if kind == "as_graph" else self._arg(arg)

    def _subgraph(self, value: Any) -> torch.fx.Node:
        """An ``as_graph`` argument, as torch's ``deserialize_input`` builds it: the subgraph
        in a fresh builder (its own names, its own module for nested subgraphs), a
        GraphModule of it registered on this builder's module, read by a get_attr node."""
        if not isinstance(value, dict):
            raise Unsupported("an as_graph argument that is not an object")
        name = _str(value["name"])
        if not name.isidentifier() or hasattr(self.module, name):
            raise Unsupported(f"subgraph name {name!r} is not a free attribute name")
        sub = _Builder(self.state_dict, self.constants, self.targets)
        graph = sub._graph_body(value["graph"])
        try:
            gm = torch.fx.GraphModule(sub.module, graph)
        except SyntaxError:  # torch keeps an uncallable module then: its path, not this one
            raise Unsupported(f"subgraph {name!r} does not compile") from None
        self.module.register_module(name, gm)
        self.subgraphs += [graph, *sub.subgraphs]
        return self.graph.create_node("get_attr", name, name=name)

    def _graph_body(self, graph: Mapping[str, Any]) -> torch.fx.Graph:
        """A subgraph: ``deserialize_graph`` (placeholders named as serialized, the nodes, one
        output: the value itself for a single tensor return, else a tuple)."""
        if graph.get("custom_obj_values"):
            raise Unsupported("a subgraph holds custom objects")
        for inp in graph["inputs"]:
            kind, value = _union(inp)
            if kind == "as_tensor":
                name = _str(value["name"])
            elif kind == "as_sym_int":
                name = _named(value)
            else:  # torch names a constant input of a subgraph from the top signature
                raise Unsupported(f"a subgraph input of kind {kind}")
            node = self.graph.placeholder(name)
            node.name = name  # as torch: the serialized name, even one FX would avoid
            self._define(name, node)
        for node in graph["nodes"]:
            self._node(node)
        outputs = [self._graph_output(out) for out in graph["outputs"]]
        single = graph.get("is_single_tensor_return", False)
        if type(single) is not bool or (single and len(outputs) != 1):
            raise Unsupported("a subgraph's is_single_tensor_return does not fit its outputs")
        self.graph.output(outputs[0] if single else tuple(outputs))
        return self.graph

    def _schema_inputs(self, op: torch._ops.OpOverload, inputs: list) -> tuple[tuple, dict]:
        """torch's ``deserialize_inputs``: each argument positional or keyword as its recorded
        kind says, else by the operator's schema."""
        kinds = {i["name"]: i.get("kind") for i in inputs}
        actual = {i["name"]: self._arg(i["arg"]) for i in inputs}
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, required, kwarg_only, is_keyword in _schema_arguments(op):
            if name in actual:
                if kinds[name] == _POSITIONAL:
                    args.append(actual[name])
                    continue
                if kinds[name] == _KEYWORD and not is_keyword:
                    kwargs[name] = actual[name]
                    continue
            if required:
                if name not in actual:
                    raise Unsupported(f"{op} lacks its required argument {name!r}")
                args.append(actual[name])
            elif is_keyword:
                # torch passes it positionally, dropping any keyword collected before it
                if kwargs or kwarg_only or name not in actual:
                    raise Unsupported(f"{op}: argument {name!r} is a Python keyword")
                args.append(actual[name])
            elif name in actual:
                kwargs[name] = actual[name]
        return tuple(args), kwargs

    def _plain_inputs(self, inputs: list, read: Any = None) -> tuple[tuple, dict]:
        """torch's ``deserialize_hoo_inputs`` (a callable without a schema): positional when
        unnamed, else by keyword. torch 2.13 takes a named input recorded as positional
        positionally, 2.11 by keyword; torch's serializer writes none, and none is taken."""
        read = read or self._arg
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for i in inputs:
            if i.get("kind") == _POSITIONAL and i["name"] != "":
                raise Unsupported(f"a positional input named {i['name']!r} of a plain callable")
            if i["name"] == "":
                args.append(read(i["arg"]))
            else:
                kwargs[_str(i["name"])] = read(i["arg"])
        return tuple(args), kwargs

    def _arg(self, arg: Any) -> Any:
        """torch's ``deserialize_input``, for the argument kinds built here."""
        kind, value = _union(arg)
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            return self._value(value["name"])
        if kind == "as_int":
            return _int(value)
        if kind == "as_float":
            return _float(value)
        if kind == "as_bool":
            return _bool(value)
        if kind == "as_string":
            return _str(value)
        if kind == "as_scalar_type":
            return _enum(_DTYPES, value, kind)
        if kind == "as_layout":
            return _enum(_LAYOUTS, value, kind)
        if kind == "as_memory_format":
            return _enum(_MEMORY_FORMATS, value, kind)
        if kind == "as_device":
            return _device(value)
        if kind == "as_complex":
            return complex(_float(value["real"]), _float(value["imag"]))
        if kind in _SYM_KINDS:
            return self._sym(kind, value)
        items = {
            "as_tensors": lambda v: self._value(v["name"]),
            "as_ints": _int,
            "as_floats": _float,
            "as_bools": _bool,
            "as_strings": _str,
            "as_sym_ints": lambda v: self._sym("as_sym_int", v),
            "as_sym_floats": lambda v: self._sym("as_sym_float", v),
            "as_sym_bools": lambda v: self._sym("as_sym_bool", v),
            "as_optional_tensors": self._optional_tensor,
        }.get(kind)
        if items is None:  # as_graph (outside a higher-order op), as_custom_obj, ...
            raise Unsupported(f"an argument of kind {kind}")
        if not isinstance(value, list):
            raise Unsupported(f"{kind} that is not a list")
        return [items(v) for v in value]

    def _sym(self, kind: str, value: Any) -> Any:
        """A symbolic argument: a node by name, or its constant."""
        sub, v = _union(value)
        if sub == "as_name":
            return self._value(v)
        constant = {"as_sym_int": ("as_int", _int), "as_sym_float": ("as_float", _float),
                    "as_sym_bool": ("as_bool", _bool)}[kind]  # fmt: skip
        if sub != constant[0]:
            raise Unsupported(f"{kind} of kind {sub}")
        return constant[1](v)

    def _optional_tensor(self, value: Any) -> Any:
        kind, v = _union(value)
        if kind == "as_none":
            return None
        if kind == "as_tensor":
            return self._value(v["name"])
        raise Unsupported(f"an optional tensor of kind {kind}")

    def _value(self, name: Any) -> torch.fx.Node:
        node = self.values.get(name) if isinstance(name, str) else None
        if node is None:
            raise Unsupported(f"a node reads {name!r}, which no earlier node defines")
        return node

    def _define(self, name: str, node: torch.fx.Node) -> None:
        if name in self.values:
            raise Unsupported(f"value {name!r} is defined twice")
        self.values[name] = node

    # -- results: torch's deserialize_outputs / generate_getitems -------------------------

    def _results(self, node: torch.fx.Node, outputs: list) -> None:
        if not outputs:
            return
        if len(outputs) == 1:
            kind, value = _union(outputs[0])
            if kind == "as_tensor":
                self._define(_str(value["name"]), node)
                return
            if kind in _SYM_KINDS:
                self._define(_named(value), node)
                return
            if kind == "as_none":
                return
            if kind != "as_tensors" or not value:
                raise Unsupported(f"{node.target} with one result of kind {kind}")
            for i, t in enumerate(value):
                self._getitem(node, i, _str(t["name"]))
            return
        for i, out in enumerate(outputs):
            kind, value = _union(out)
            if kind == "as_tensor":
                self._getitem(node, i, _str(value["name"]))
            elif kind in ("as_sym_int", "as_sym_float"):
                self._getitem(node, i, _named(value))
            elif kind in _LIST_RESULTS:
                inner = self._call(operator.getitem, (node, i))
                for j, item in enumerate(value):
                    if kind == "as_tensors":
                        self._getitem(inner, j, _str(item["name"]))
                    elif kind in ("as_sym_ints", "as_sym_floats"):
                        self._getitem(inner, j, _named(item))
                    else:  # plain values: torch's generate_getitems refuses them
                        raise Unsupported(f"{node.target} with a result of kind {kind}")
            elif kind == "as_none":
                self._call(operator.getitem, (node, i), name="as_none")
            else:
                raise Unsupported(f"{node.target} with a result of kind {kind}")

    def _getitem(self, node: torch.fx.Node, index: int, name: str) -> None:
        self._define(name, self._call(operator.getitem, (node, index), name=name))

    def _call(
        self, target: Any, args: tuple, kwargs: dict | None = None, name: str | None = None
    ) -> torch.fx.Node:
        # FX makes ``name`` a fresh identifier (deduplicated, never a builtin it would shadow)
        return self.graph.create_node("call_function", target, args, kwargs or {}, name)

    # -- outputs: user outputs, and mutations copied back -----------------------------------

    def _outputs(
        self,
        outputs: list,
        specs: list,
        lifted: Mapping[str, torch.fx.Node],
        user_inputs: Mapping[str, torch.fx.Node],
    ) -> None:
        if len(outputs) != len(specs):
            raise Unsupported(f"{len(outputs)} graph outputs but {len(specs)} output specs")
        user: list[Any] = []
        copies: dict[torch.fx.Node, torch.fx.Node] = {}
        targets = {"buffer_mutation": "buffer_name", "parameter_mutation": "parameter_name",
                   "user_input_mutation": "user_input_name"}  # fmt: skip
        for out, spec in zip(outputs, specs):
            value = self._graph_output(out)
            kind, s = _union(spec)
            if kind == "user_output":
                user.append(value)
            elif kind in targets:
                # torch looks the name up among the lifted attributes, then the user inputs
                name = s[targets[kind]]
                dest = lifted.get(name) or user_inputs.get(name)
                if dest is None or not isinstance(value, torch.fx.Node):
                    raise Unsupported(f"a {kind} of {name!r} that has no input to copy into")
                copies[value] = self._call(torch.ops.aten.copy_.default, (dest, value))
            else:
                raise Unsupported(f"an output of kind {kind}")  # loss, gradients, tokens
        self.graph.output(
            tuple(copies.get(v, v) if isinstance(v, torch.fx.Node) else v for v in user)
        )

    def _graph_output(self, out: Any) -> Any:
        """torch's ``deserialize_graph_output`` (``None`` refused: ``ep.module()`` miscounts
        the outputs then)."""
        kind, value = _union(out)
        if kind == "as_tensor":
            return self._value(value["name"])
        if kind in _SYM_KINDS:
            return self._value(_named(value))
        if kind == "as_int":
            return _int(value)
        if kind == "as_float":
            return _float(value)
        if kind == "as_bool":
            return _bool(value)
        raise Unsupported(f"a graph output of kind {kind}")

    # -- device --------------------------------------------------------------------------

    def _move(self, device: str) -> None:
        """``move_to_device_pass``: every ``device=`` keyword, whatever its value, and the
        device argument of ``aten.to.device`` become the load device, as a string like
        torch's. The pass of torch 2.11 and later moves the latter (2.11, 2.13 and 2.14 read
        alike); an older one may not, so there such a graph takes torch's own path."""
        for sub in self.subgraphs:
            # torch's pass edits a subgraph's nodes without regenerating its code, so what
            # the subgraph runs keeps the old device: a device in one takes torch's path
            for node in sub.nodes:
                if "device" in node.kwargs or node.target is torch.ops.aten.to.device:
                    raise Unsupported("a device argument inside a subgraph, off the CPU")
        for node in self.graph.nodes:
            if "device" in node.kwargs:
                node.kwargs = {**node.kwargs, "device": device}
            if node.op == "call_function" and node.target is torch.ops.aten.to.device:
                if torch.__version__ < "2.11" or len(node.args) < 2:  # (torch's pass: IndexError)
                    raise Unsupported(f"aten.to.device off the CPU, torch {torch.__version__}")
                node.args = (node.args[0], device, *node.args[2:])


@functools.lru_cache(maxsize=4096)  # a graph calls the same few operators at every node
def _schema_arguments(op: torch._ops.OpOverload) -> tuple[tuple[str, bool, bool, bool], ...]:
    """What ``_schema_inputs`` reads of each argument of ``op``'s schema: its name, whether it
    is required positionally (no default, not keyword-only), keyword-only, a Python keyword."""
    return tuple(
        (a.name, not a.has_default_value() and not a.kwarg_only, a.kwarg_only,
         keyword.iskeyword(a.name))
        for a in op._schema.arguments
    )  # fmt: skip


def _codegen(module_call_graph: list) -> _PyTreeCodeGen:
    """The forward() ``ep.module()`` generates: the model's own (*args, **kwargs), flattened
    and unflattened by the program's specs (``torch.export._unlift._get_codegen``)."""
    entry = module_call_graph[0]
    signature = entry.get("signature")
    if entry.get("fqn") != "" or not isinstance(signature, dict):
        raise Unsupported("the module call graph does not start with the root's signature")
    try:
        in_spec = pytree.treespec_loads(signature["in_spec"])
        out_spec = pytree.treespec_loads(signature["out_spec"])
    except (NotImplementedError, ValueError, TypeError, KeyError, IndexError) as e:
        # e.g. a type name torch's pytree does not know: torch's deserializer, which reads the
        # same specs, then says what it makes of them
        raise Unsupported(f"the call's pytree specs cannot be read: {e}") from None
    names = signature.get("forward_arg_names") or None
    if not names:
        children = _children(in_spec)
        if (
            in_spec.type is tuple
            and len(children) == 2
            and children[0].type is tuple
            and children[1].type is dict
        ):
            names = [f"arg_{i}" for i in range(len(_children(children[0])))]
            names.extend(children[1].context)
        else:
            names = [f"arg_{i}" for i in range(len(children))]
    return _PyTreeCodeGen(_PyTreeInfo(list(names), in_spec, out_spec))


# -- attributes ------------------------------------------------------------------------------


def _assign(module: torch.nn.Module, target: str, register: Any) -> None:
    """``register(submodule, field)`` on the submodule at ``target``'s prefix, creating empty
    modules along the way (``torch.export.unflatten._assign_attr``). An attribute the module
    already has (``graph``, ``forward``, a name given twice) is refused, never overwritten."""
    *prefix, field = target.split(".")
    for item in prefix:
        sub = getattr(module, item, None)
        if sub is None:
            sub = torch.nn.Module()
            setattr(module, item, sub)
        elif not isinstance(sub, torch.nn.Module):
            raise Unsupported(f"attribute path {target!r} runs through a non-module")
        module = sub
    if hasattr(module, field):
        raise Unsupported(f"attribute {target!r} is already taken")
    register(module, field)


def _has_attr(module: torch.nn.Module, target: str) -> bool:
    for item in target.split("."):
        if not hasattr(module, item):
            return False
        module = getattr(module, item)
    return True


# -- JSON values -------------------------------------------------------------------------------


def _union(value: Any) -> tuple[str, Any]:
    """A serde union (``{"as_tensor": {...}}``): its one kind and its value."""
    if not isinstance(value, dict) or len(value) != 1:
        raise Unsupported(f"not a serde union: {str(value)[:80]}")
    ((kind, inner),) = value.items()
    return kind, inner


def _named(value: Any) -> str:
    """The name of a symbolic value (``{"as_name": "s0"}``)."""
    kind, name = _union(value)
    if kind != "as_name":
        raise Unsupported(f"a symbolic value of kind {kind} where a name is expected")
    return _str(name)


def _int(v: Any) -> int:
    if type(v) is not int:
        raise Unsupported(f"{v!r} is not an int")
    return v


def _float(v: Any) -> float:
    # torch's JSON writes infinities and NaN as these strings; its reader applies float()
    if type(v) in (int, float) or v in ("Infinity", "-Infinity", "NaN"):
        return float(v)
    raise Unsupported(f"{v!r} is not a float")


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise Unsupported(f"{v!r} is not a bool")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise Unsupported(f"{v!r} is not a string")
    return v


def _enum(table: Mapping[int, str], v: Any, kind: str) -> Any:
    found = getattr(torch, table.get(_int(v), ""), None)
    if found is None:
        raise Unsupported(f"{kind} {v!r} is unknown here")
    return found


def _device(v: Any) -> torch.device:
    kind, index = _str(v["type"]), v.get("index")
    if index is not None and type(index) is not int:
        raise Unsupported(f"device index {index!r}")
    try:
        return torch.device(kind) if index is None else torch.device(kind, index)
    except RuntimeError as e:
        raise Unsupported(f"device {kind!r}: {e}") from None


def _target(name: Any) -> Any:
    """A serialized call target as the callable torch's deserializer resolves it to."""
    if not isinstance(name, str):
        raise Unsupported(f"call target {name!r}")
    found = _FUNCTIONS.get(name)
    if found is not None:
        fn: Any = found[0]
        for part in found[1].split("."):
            fn = getattr(fn, part, None)
        if not callable(fn):
            raise Unsupported(f"{name} does not exist in this torch")
        return fn
    if name.startswith("torch.ops.higher_order."):
        hop = name.removeprefix("torch.ops.higher_order.")
        found = getattr(torch.ops.higher_order, hop, None) if hop in _HOPS else None
        if not isinstance(found, torch._ops.HigherOrderOperator):
            raise Unsupported(f"call target {name}")
        return found
    m = _OP.match(name)
    if m is None:  # torch_tensorrt's engine op, ...
        raise Unsupported(f"call target {name}")
    namespace, op, overload = m.groups()
    try:
        found = getattr(getattr(getattr(torch.ops, namespace), op), overload)
    except (AttributeError, RuntimeError):
        raise Unsupported(f"operator {name} is not registered in this torch") from None
    if not isinstance(found, torch._ops.OpOverload):
        raise Unsupported(f"{name} is not an operator overload")
    return found
