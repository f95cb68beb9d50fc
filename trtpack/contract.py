"""The per-call input check, compiled once from the manifest.

Before anything runs, a call is checked against the manifest: the nesting of args and
kwargs, each input's kind, dtype, rank, static dims and device, each dynamic dim within its
symbol's range, shared dims equal, derived dims (``2*n``) consistent. The error names the
input, its path, the dim, the value and the allowed range. The check is plain Python over
precomputed tuples: a few microseconds per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .errors import InputMismatchError
from .manifest import IOSpec, Manifest, Symbol, Tree, parse_dim
from .tree import leaf_paths

_CONTAINER = {"tuple": tuple, "list": list, "namedtuple": tuple}


class OutsideEngineProfile(InputMismatchError):
    """A call inside the exported ranges but outside the running engines' profiles."""


class Contract:
    """Callable check: ``contract(args, kwargs) -> flat list of input leaves``.

    ``engine_ranges`` (from the running engine variant) narrows symbols whose range the
    engines' optimization profiles cover only in part; a call outside them, but inside the
    exported range, raises OutsideEngineProfile naming both ranges.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        device: torch.device | None = None,
        engine_ranges: Mapping[str, tuple[int, int | None]] | None = None,
        variant: str | None = None,
    ) -> None:
        self.manifest = manifest
        self.symbols: dict[str, Symbol] = dict(manifest.symbols)
        self.engine_ranges = dict(engine_ranges or {})
        self.variant = variant
        self.device = device
        args_tree, kwargs_tree = manifest.input_tree["children"]
        self._args_tree: Tree = args_tree
        self._kwargs_tree: Tree = kwargs_tree
        self._num_args = len(args_tree.get("children", ()))
        self._kwarg_names = tuple(kwargs_tree.get("keys", ()))
        self._kwarg_set = frozenset(self._kwarg_names)
        self._simple = all(c["type"] == "leaf" for c in args_tree.get("children", ())) and all(
            c["type"] == "leaf" for c in kwargs_tree.get("children", ())
        )
        paths = leaf_paths(manifest.input_tree, "call")
        self._checks = tuple(
            self._compile(spec, path) for spec, path in zip(manifest.inputs, paths)
        )

    # -- compile ------------------------------------------------------------------------------

    def _compile(self, spec: IOSpec, path: str) -> tuple:
        label = spec.name if path.endswith(f"[{spec.name!r}]") else f"{spec.name} ({path})"
        if spec.is_tensor:
            dims = []
            for i, d in enumerate(spec.shape or ()):
                if isinstance(d, int):
                    dims.append((i, d, None))
                else:
                    expr = parse_dim(d)
                    dims.append((i, None, expr))
            dtype = getattr(torch, spec.dtype or "")
            return ("tensor", label, dtype, len(dims), tuple(dims))
        if spec.symbol is not None:
            return ("symint", label, parse_dim(spec.symbol))
        return ("const", label, spec.kind, spec.value)

    # -- check ---------------------------------------------------------------------------------

    def __call__(self, args: tuple, kwargs: Mapping[str, Any]) -> list[Any]:
        leaves = self.flatten(args, kwargs)
        bound: dict[str, tuple[int, str]] = {}
        device = self.device
        for check, value in zip(self._checks, leaves):
            kind = check[0]
            if kind == "tensor":
                _, label, dtype, rank, dims = check
                if not isinstance(value, torch.Tensor):
                    raise InputMismatchError(
                        f"input {label} must be a tensor, got {type(value).__name__}"
                    )
                if value.dtype is not dtype:
                    raise InputMismatchError(
                        f"input {label} has dtype {_dt(value.dtype)}, expected {_dt(dtype)}"
                    )
                shape = value.shape
                if len(shape) != rank:
                    raise InputMismatchError(
                        f"input {label} has {len(shape)} dims {list(shape)}, expected {rank} dims "
                        f"{self._expected_shape(dims)}"
                    )
                for i, fixed, expr in dims:
                    size = shape[i]
                    if expr is None:
                        if size != fixed:
                            raise InputMismatchError(
                                f"input {label} dim {i} is {size}, expected {fixed} "
                                f"(shape {list(shape)}, expected {self._expected_shape(dims)})"
                            )
                    else:
                        self._bind(expr, size, f"input {label} dim {i}", bound)
                if device is not None and value.device != device:
                    raise InputMismatchError(
                        f"input {label} is on {value.device}; this pack runs on {device}. "
                        f"Move it with .to({str(device)!r})"
                    )
            elif kind == "symint":
                _, label, expr = check
                if type(value) is not int:
                    raise InputMismatchError(
                        f"input {label} must be an int, got {type(value).__name__}"
                    )
                self._bind(expr, value, f"input {label}", bound)
            else:
                _, label, want_kind, want = check
                if value != want or type(value) is not type(want):
                    raise InputMismatchError(
                        f"input {label} must be {want!r} ({want_kind}): torch.export "
                        f"specialized the program to this value; got {value!r}"
                    )
        return leaves

    def _bind(self, expr: Any, size: int, where: str, bound: dict[str, tuple[int, str]]) -> None:
        name = expr.symbol
        root = expr.solve(size)
        if root is None:
            raise InputMismatchError(
                f"{where} is {size}, but it must be {expr} for an integer {name}"
            )
        seen = bound.get(name)
        if seen is not None:
            if seen[0] != root:
                raise InputMismatchError(
                    f"{where} is {size}, which makes {name} = {root}, but {seen[1]} "
                    f"already set {name} = {seen[0]}; these dims must agree"
                )
            return
        sym = self.symbols[name]
        if root < sym.min or (sym.max is not None and root > sym.max):
            rng = _range(sym.min, sym.max)
            if expr.coef == 1 and expr.offset == 0:
                msg = f"{where} is {size}, outside the allowed range of {name}: {rng}"
            else:
                msg = (
                    f"{where} is {size} = {expr} with {name} = {root}, outside {name}'s range {rng}"
                )
            raise InputMismatchError(msg)
        narrow = self.engine_ranges.get(name)
        if narrow is not None and (
            root < narrow[0] or (narrow[1] is not None and root > narrow[1])
        ):
            raise OutsideEngineProfile(
                f"{where} makes {name} = {root}: inside the exported range "
                f"{_range(sym.min, sym.max)}, but outside the optimization profile of engine "
                f"variant {self.variant!r}, {_range(*narrow)}. Load with "
                "outside_profile='fallback' to run such calls on the ExportedProgram"
            )
        bound[name] = (root, where)

    @staticmethod
    def _expected_shape(dims: tuple) -> list[Any]:
        return [fixed if expr is None else str(expr) for _, fixed, expr in dims]

    # -- structure -------------------------------------------------------------------------------

    def flatten(self, args: tuple, kwargs: Mapping[str, Any]) -> list[Any]:
        """The call's leaves in manifest order, after checking its structure."""
        if len(args) != self._num_args:
            raise InputMismatchError(
                f"expected {self._num_args} positional input(s), got {len(args)}"
                + self._signature_hint()
            )
        if kwargs.keys() != self._kwarg_set:
            missing = [k for k in self._kwarg_names if k not in kwargs]
            extra = sorted(k for k in kwargs if k not in self._kwarg_set)
            parts = []
            if missing:
                parts.append(f"missing keyword input(s) {missing}")
            if extra:
                parts.append(f"unexpected keyword input(s) {extra} (not in the exported signature)")
            raise InputMismatchError("; ".join(parts) + self._signature_hint())
        if self._simple:
            return [*args, *(kwargs[k] for k in self._kwarg_names)]
        leaves: list[Any] = []
        for i, (child, value) in enumerate(zip(self._args_tree["children"], args)):
            _flatten(child, value, f"args[{i}]", leaves)
        for key, child in zip(self._kwarg_names, self._kwargs_tree["children"]):
            _flatten(child, kwargs[key], f"kwargs[{key!r}]", leaves)
        return leaves

    def _signature_hint(self) -> str:
        names = ", ".join(i.name for i in self.manifest.inputs)
        return (
            f"; the exported call takes {self._num_args} positional input(s) and keywords "
            f"{list(self._kwarg_names)} (inputs: {names})"
        )


def _flatten(tree: Tree, value: Any, path: str, out: list[Any]) -> None:
    kind = tree["type"]
    if kind == "leaf":
        out.append(value)
        return
    children = tree.get("children", ())
    if kind == "none":
        if value is not None:
            raise InputMismatchError(f"{path} must be None, got {type(value).__name__}")
        return
    if kind == "dict":
        if not isinstance(value, Mapping):
            raise InputMismatchError(f"{path} must be a dict, got {type(value).__name__}")
        keys = tree["keys"]
        if set(value.keys()) != set(keys):
            raise InputMismatchError(f"{path} must have keys {keys}, got {list(value.keys())}")
        for key, child in zip(keys, children):
            _flatten(child, value[key], f"{path}[{key!r}]", out)
        return
    want = _CONTAINER.get(kind)
    if want is None or not isinstance(value, want) or len(value) != len(children):
        got = (
            f"{type(value).__name__} of {len(value)}"
            if hasattr(value, "__len__")
            else type(value).__name__
        )
        raise InputMismatchError(f"{path} must be a {kind} of {len(children)}, got {got}")
    for i, (child, item) in enumerate(zip(children, value)):
        _flatten(child, item, f"{path}[{i}]", out)


def _range(lo: int, hi: int | None) -> str:
    return f"[{lo}, {'inf' if hi is None else hi}]"


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
