"""Manifest trees <-> torch ``TreeSpec``, and namedtuple registration: the torch side of
``format/pytree.py`` (torch is imported only when a function is called)."""

from __future__ import annotations

import collections
from typing import Any

from ..errors import DeriveError
from ..format.manifest import Tree


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
