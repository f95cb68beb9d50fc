"""Pytree specs as manifest JSON, and back. The JSON side needs no torch.

A tree is ``{"type": "leaf"}`` or a container with ``children``: ``tuple``, ``list``,
``dict`` (with ``keys``), ``namedtuple`` (with ``name`` and ``fields``), ``none``, or
``custom`` (a type registered with torch's pytree, by ``name``). The input tree's root is
the ``(args, kwargs)`` tuple torch.export uses; leaf paths read ``args[0]['a']``,
``kwargs['mask']``; output paths read ``output``, ``output[0]['logits']``.
"""

from __future__ import annotations

import ast
import collections
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import DeriveError, UnregisteredPytreeError
from .manifest import Tree


def leaf_paths(tree: Tree, root: str) -> list[str]:
    """The path of every leaf, in flat order."""
    out: list[str] = []

    def walk(node: Tree, path: str) -> None:
        kind = node["type"]
        if kind == "leaf":
            out.append(path)
            return
        children = node.get("children", [])
        if kind == "namedtuple":
            steps = [f".{name}" for name in node["fields"]]
        elif kind == "dict":
            steps = [f"[{key!r}]" for key in node["keys"]]
        elif kind == "custom":
            steps = custom_steps(node)
        else:
            steps = [f"[{i}]" for i in range(len(children))]
        for step, child in zip(steps, children):
            walk(child, path + step)

    if root == "call":  # (args, kwargs): name the two halves instead of indexing them
        args, kwargs = tree["children"]
        for i, child in enumerate(args.get("children", [])):
            walk(child, f"args[{i}]")
        for key, child in zip(kwargs.get("keys", []), kwargs.get("children", [])):
            walk(child, f"kwargs[{key!r}]")
    else:
        walk(tree, root)
    return out


_PATH_PART = re.compile(
    r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*)"
)


def output_names(paths: Sequence[str]) -> list[str]:
    """Names for outputs from their pytree paths, the same by every derivation: the key path
    joined by dots (``output['logits']`` -> ``logits``, ``output['hidden_states'][0]`` ->
    ``hidden_states.0``, ``output.low`` -> ``low``); a bare position gets ``output_<i>``
    (``output[1]`` -> ``output_1``) and a single tensor ``output``. Characters outside
    ``[A-Za-z0-9_.]`` become ``_`` (valid Triton and MLflow names); duplicates get ``_2``,
    ``_3``, ..."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        parts: list[str] = []
        for m in _PATH_PART.finditer(path.removeprefix("output")):
            key, attr = m.groups()
            if attr is not None:
                parts.append(attr)
            elif key[0] in "'\"":
                parts.append(ast.literal_eval(key))
            else:
                parts.append(key)
        if not parts:
            name = "output"
        else:
            name = ".".join(parts)
            if parts[0].lstrip("-").isdigit():
                name = "output_" + name
        name = re.sub(r"[^A-Za-z0-9_.]", "_", name) or "output"
        base, n = name, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


def custom_steps(node: Tree) -> list[str]:
    """The key path steps of a registered pytree class's children, as torch writes them,
    read from the context torch serialized for it (no torch, no import of the class): a
    dataclass (context ``[[fields], [none fields]]``) -> ``.field``; a class whose context
    names one key per child (a transformers cache: ``["key_cache", "value_cache"]``) ->
    ``['key_cache']``; anything else -> ``[i]``."""
    n = len(node.get("children", ()))
    try:
        ctx = json.loads(node["context"]) if isinstance(node.get("context"), str) else None
    except ValueError:
        ctx = None
    if (
        isinstance(ctx, list)
        and len(ctx) == 2
        and all(isinstance(c, list) for c in ctx)
        and len(ctx[0]) == n
        and all(isinstance(f, str) and f.isidentifier() for f in ctx[0])
    ):
        return [f".{f}" for f in ctx[0]]
    if isinstance(ctx, list) and len(ctx) == n and all(isinstance(k, str) for k in ctx):
        return [f"[{k!r}]" for k in ctx]
    return [f"[{i}]" for i in range(n)]


def unflatten_call(tree: Tree, leaves: Iterable[Any]) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call from its flat leaves, nested as the input tree says
    (built-in containers: what a serving layer or torch_tensorrt is given)."""
    it = iter(leaves)

    def build(node: Tree) -> Any:
        kind = node["type"]
        if kind == "leaf":
            return next(it)
        children = [build(c) for c in node.get("children", ())]
        if kind == "dict":
            return dict(zip(node["keys"], children))
        if kind == "list":
            return children
        if kind == "none":
            return None
        return tuple(children)

    args, kwargs = tree["children"]
    return tuple(build(args)), build(kwargs)


def call_tree(num_args: int, kwarg_names: list[str]) -> Tree:
    """The input tree of a call whose every argument is one tensor: ``f(x, y, *, mask)``."""
    leaf: Tree = {"type": "leaf"}
    return {
        "type": "tuple",
        "children": [
            {"type": "tuple", "children": [leaf] * num_args},
            {"type": "dict", "keys": list(kwarg_names), "children": [leaf] * len(kwarg_names)},
        ],
    }


# --- manifest JSON -> torch TreeSpec (torch imported only when called; the other way is
# migrations/serde_json.tree_from_json over torch's own serialized spec) ---------------------


def to_treespec(tree: Tree) -> Any:
    """Manifest JSON as a torch ``TreeSpec`` (built-in container types only)."""
    import torch.utils._pytree as pytree

    kind = tree["type"]
    if kind == "leaf":
        return pytree.LeafSpec() if hasattr(pytree, "LeafSpec") else pytree.treespec_leaf()
    children = [to_treespec(c) for c in tree.get("children", [])]
    if kind == "tuple":
        return pytree.TreeSpec(tuple, None, children)
    if kind == "list":
        return pytree.TreeSpec(list, None, children)
    if kind == "dict":
        return pytree.TreeSpec(dict, list(tree["keys"]), children)
    if kind == "none":
        return pytree.TreeSpec(type(None), None, [])
    if kind == "namedtuple":
        cls = collections.namedtuple(tree["name"].rsplit(".", 1)[-1], tree["fields"])  # type: ignore[misc]
        probe = pytree.tree_flatten(cls(*range(len(tree["fields"]))))[1]
        return pytree.TreeSpec(probe.type, probe.context, children)
    raise DeriveError(
        f"cannot rebuild a pytree node of type {tree.get('name', kind)!r} without its Python "
        "type; only tuple, list, dict, namedtuple and None are rebuilt from the manifest"
    )


def _children(spec: Any) -> list[Any]:
    children = getattr(spec, "children", None)
    if callable(children):
        return list(children())
    return list(spec.children_specs)


def _qualname(t: Any) -> str:
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', repr(t))}"


# --- namedtuples: torch.export can only serialize registered ones ---------------------------


def register_namedtuples(spec: Any) -> None:
    """Register every namedtuple type in a torch TreeSpec for serialization, under the same
    ``module.qualname`` the manifest records (torch.export.save refuses unregistered ones)."""
    import torch.utils._pytree as pytree

    if spec.is_leaf():
        return
    cls = spec.context if isinstance(spec.context, type) else spec.type
    if (
        isinstance(cls, type)
        and issubclass(cls, tuple)
        and hasattr(cls, "_fields")
        and cls not in pytree.SUPPORTED_SERIALIZED_TYPES
    ):
        pytree._register_namedtuple(cls, serialized_type_name=_qualname(cls))
    for child in _children(spec):
        register_namedtuples(child)


def restore_namedtuples(tree: Tree) -> None:
    """Before deserializing a program: make each namedtuple the manifest names known to torch.
    The class is rebuilt from its recorded fields; nothing named in a pack is ever imported."""
    import torch.utils._pytree as pytree

    if tree["type"] == "namedtuple" and tree["name"] not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
        cls = collections.namedtuple(tree["name"].rsplit(".", 1)[-1], tree["fields"])  # type: ignore[misc]
        pytree._register_namedtuple(cls, serialized_type_name=tree["name"])
    for child in tree.get("children", ()):
        restore_namedtuples(child)


def custom_type_names(tree: Tree) -> list[str]:
    """The serialized type names of the custom pytree classes in a tree."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.get("type") == "custom" and node.get("name"):
            out.append(node["name"])
        stack.extend(node.get("children", ()))
    return out


def unregistered_error(type_name: str, where: str) -> UnregisteredPytreeError:
    """What to say when ``type_name`` is not registered with torch's pytree here."""
    module = type_name.rsplit(".", 1)[0] if "." in type_name else None
    hint = (
        f"import {module} (the library that defines it registers it with torch's pytree) "
        "before loading"
        if module
        else "register it with torch.utils._pytree before loading"
    )
    return UnregisteredPytreeError(
        f"{where} uses the pytree class {type_name!r}, which is not registered in this "
        f"process: {hint}. (This is not a torch version mismatch.)",
        type_name=type_name,
        module=module,
    )
