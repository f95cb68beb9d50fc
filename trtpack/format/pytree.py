"""Pytree specs as manifest JSON: leaf paths, output names, calls rebuilt from leaves. No torch
(the torch ``TreeSpec`` side is ``trtpack/program/treespec.py``).

A tree is ``{"type": "leaf"}`` or a container with ``children``: ``tuple``, ``list``,
``dict`` (with ``keys``), ``namedtuple`` (with ``name`` and ``fields``), ``none``, or
``custom`` (a type registered with torch's pytree, by ``name``). The input tree's root is
the ``(args, kwargs)`` tuple torch.export uses; leaf paths read ``args[0]['a']``,
``kwargs['mask']``; output paths read ``output``, ``output[0]['logits']``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import UnregisteredPytreeError

#: a pytree spec as manifest JSON (the manifest's ``input_tree``/``output_tree``)
Tree = dict[str, Any]


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
