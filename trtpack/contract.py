"""The per-call input check, compiled once from the manifest.

Before anything runs, a call is checked against the manifest: the nesting of args and
kwargs, each input's kind, dtype, rank, static dims and device, each dynamic dim within its
symbol's range, shared dims equal, derived dims (``2*n``) consistent. The error names the
input, its path, the dim, the value and the allowed range. The check is plain Python over
precomputed tuples: a few microseconds per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .errors import InputMismatchError, ManifestError, OutsideEngineProfile
from .format.guards import compile_guard, implied
from .format.manifest import DimExpr, IOSpec, Manifest, Symbol, Tree, parse_dim
from .format.pytree import leaf_paths

_CONTAINER = {"tuple": tuple, "list": list, "namedtuple": tuple}


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
        profile_boxes: Sequence[Mapping[str, tuple[int, int | None]]] = (),
    ) -> None:
        self.manifest = manifest
        self.symbols: dict[str, Symbol] = dict(manifest.symbols)
        self.engine_ranges = dict(engine_ranges or {})
        self.variant = variant
        #: per optimization profile, the symbol ranges it takes (``format.manifest.profile_boxes``)
        self.profile_boxes = [dict(b) for b in profile_boxes]
        self.device = device
        args_tree, kwargs_tree = _resolve_custom(manifest.input_tree)["children"]
        self._args_tree: Tree = args_tree
        self._kwargs_tree: Tree = kwargs_tree
        self._num_args = len(args_tree.get("children", ()))
        self._kwarg_names = tuple(kwargs_tree.get("keys", ()))
        self._kwarg_set = frozenset(self._kwarg_names)
        # (args, kwargs) as one tree: args a tuple, kwargs a dict with the exported keys
        self._flatten_fast = compile_flattener({"type": "tuple", "children": [args_tree, {
            **kwargs_tree, "type": "dict", "keys": list(self._kwarg_names)}]})  # fmt: skip
        self._simple = all(c["type"] == "leaf" for c in args_tree.get("children", ())) and all(
            c["type"] == "leaf" for c in kwargs_tree.get("children", ())
        )
        paths = leaf_paths(manifest.input_tree, "call")
        self._checks = tuple(
            self._compile(spec, path) for spec, path in zip(manifest.inputs, paths)
        )
        self._paths = dict(zip((i.name for i in manifest.inputs), paths))
        shapes = {
            i.name: [_dim(d) for d in i.shape] for i in manifest.inputs if i.shape is not None
        }
        self._guards = tuple(
            (g.expr, *compile_guard(g.expr, manifest.inputs))
            for g in manifest.guards
            if g.expr and not implied(g.expr, shapes)
        )
        self._guard_checks: tuple[Callable[[Any], Any], ...] = tuple(c for _, c, _ in self._guards)
        #: guards the manifest cannot express: the runtime adds the program's own check
        self.unexpressed = tuple(g.source for g in manifest.guards if g.expr is None)

    # -- compile ------------------------------------------------------------------------------

    def _compile(self, spec: IOSpec, path: str) -> tuple:
        label = spec.name if path.endswith(f"[{spec.name!r}]") else f"{spec.name} ({path})"
        if spec.is_tensor:
            dims: list[tuple[int, int | None, DimExpr | None]] = []
            for i, d in enumerate(spec.shape or ()):
                if isinstance(d, int):
                    dims.append((i, d, None))
                else:
                    expr = parse_dim(d)
                    dims.append((i, None, expr))
            dtype = getattr(torch, spec.dtype or "")
            static = tuple(d for _, d, _ in dims) if all(e is None for _, _, e in dims) else None
            return ("tensor", label, dtype, len(dims), tuple(dims), spec.name, path, static)
        if spec.symbol is not None:
            return ("symint", label, parse_dim(spec.symbol))
        return ("const", label, spec.kind, spec.value)

    # -- check ---------------------------------------------------------------------------------

    def __call__(self, args: tuple, kwargs: Mapping[str, Any]) -> list[Any]:
        leaves = self.flatten(args, kwargs)
        bound: dict[str, tuple[Any, ...]] = {}  # symbol -> (value, input label, dim)
        device = self.device
        for check, value in zip(self._checks, leaves):
            kind = check[0]
            if kind == "tensor":
                _, label, dtype, rank, dims, name, path, static = check
                if not isinstance(value, torch.Tensor):
                    raise InputMismatchError(
                        f"input {label} must be a tensor, got {type(value).__name__}"
                    )
                if value.dtype is not dtype:
                    raise InputMismatchError(
                        f"input {label} has dtype {_dt(value.dtype)}, expected {_dt(dtype)}"
                    )
                shape = value.shape
                if static is not None and shape == static:  # all dims fixed, and they match
                    if device is not None and value.device != device:
                        raise InputMismatchError(
                            f"input {label} is on {value.device}; this pack runs on {device}. "
                            f"Move it with .to({str(device)!r})",
                            input=name, path=path,
                        )  # fmt: skip
                    continue
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
                        seen = bound.get(expr.symbol)
                        if seen is not None and seen[0] == size and expr.plain:
                            continue  # a symbol seen before, with the same value: in range
                        try:
                            self._bind(expr, size, label, i, bound)
                        except InputMismatchError as e:
                            e.input, e.path, e.dim, e.value = name, path, i, size
                            e.condition = e.condition or self._range_of(expr)
                            raise
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
                self._bind(expr, value, label, None, bound)
            else:
                _, label, want_kind, want = check
                if value != want or type(value) is not type(want):
                    raise InputMismatchError(
                        f"input {label} must be {want!r} ({want_kind}): torch.export "
                        f"specialized the program to this value; got {value!r}"
                    )
        if self._guard_checks:
            try:
                ok = True
                for guard in self._guard_checks:
                    if not guard(leaves):
                        ok = False
                        break
            except (ArithmeticError, TypeError, IndexError, AttributeError):
                ok = False
            if not ok:  # find which one, to name it
                for expr, guard, first in self._guards:
                    try:
                        holds = guard(leaves)
                    except (ArithmeticError, TypeError, IndexError, AttributeError):
                        holds = False  # e.g. a modulus by a zero-sized dim
                    if not holds:
                        self._guard_failed(expr, first, leaves)
        if len(self.profile_boxes) > 1:
            self._check_profiles(bound)
        return leaves

    def _check_profiles(self, bound: Mapping[str, tuple[Any, ...]]) -> None:
        """Several optimization profiles: the call must fit one of them (their union may have
        gaps; the engine runs the first that fits)."""
        for box in self.profile_boxes:
            if all(
                lo <= bound[name][0] and (hi is None or bound[name][0] <= hi)
                for name, (lo, hi) in box.items()
                if name in bound
            ):
                return
        values = ", ".join(f"{n} = {v[0]}" for n, v in sorted(bound.items()))
        shown = "; ".join(
            ", ".join(f"{n} {_range(lo, hi)}" for n, (lo, hi) in sorted(box.items())) or "any"
            for box in self.profile_boxes
        )
        raise OutsideEngineProfile(
            f"the call ({values}) fits none of the optimization profiles of engine variant "
            f"{self.variant!r} ({shown}). Load with outside_profile='fallback' to run such "
            "calls on the ExportedProgram"
        )

    def _guard_failed(self, expr: str, first: tuple[str, int | None] | None, leaves: list) -> None:
        name, dim = first if first is not None else (None, None)
        path = self._paths.get(name or "")
        value = None
        where = ""
        if name is not None:
            leaf = leaves[[i.name for i in self.manifest.inputs].index(name)]
            value = leaf.shape[dim] if dim is not None else leaf
            label = name if path and path.endswith(f"[{name!r}]") else f"{name} ({path})"
            where = f"input {label}" + (f" dim {dim} is {value}" if dim is not None else
                                        f" is {value}")  # fmt: skip
            where += ", which breaks"
        else:
            where = "the call breaks"
        raise InputMismatchError(
            f"{where} the program's guard {expr}: torch.export traced the program under this "
            "condition, so it would compute something else here",
            input=name, path=path, dim=dim, value=value, condition=expr,
        )  # fmt: skip

    def _bind(
        self, expr: Any, size: int, label: str, dim: int | None, bound: dict[str, tuple]
    ) -> None:
        """Bind ``expr``'s symbol from one dim; messages are built only on failure."""
        name = expr.symbol
        root = size if expr.plain else expr.solve(size)
        if root is None:
            raise InputMismatchError(
                f"{_where(label, dim)} is {size}, but it must be {expr} for an integer {name}"
            )
        seen = bound.get(name)
        if seen is not None:
            if seen[0] != root:
                raise InputMismatchError(
                    f"{_where(label, dim)} is {size}, which makes {name} = {root}, but "
                    f"{_where(seen[1], seen[2])} already set {name} = {seen[0]}; these dims "
                    "must agree",
                    condition=f"{name} agrees across dims",
                )
            return
        sym = self.symbols[name]
        if root < sym.min or (sym.max is not None and root > sym.max):
            where, rng = _where(label, dim), _range(sym.min, sym.max)
            if expr.plain:
                msg = f"{where} is {size}, outside the allowed range of {name}: {rng}"
            else:
                msg = (
                    f"{where} is {size} = {expr} with {name} = {root}, outside {name}'s range {rng}"
                )
            raise InputMismatchError(msg)
        narrow = self.engine_ranges.get(name) if self.engine_ranges else None
        if narrow is not None and (
            root < narrow[0] or (narrow[1] is not None and root > narrow[1])
        ):
            raise OutsideEngineProfile(
                f"{_where(label, dim)} makes {name} = {root}: inside the exported range "
                f"{_range(sym.min, sym.max)}, but outside the optimization profile of engine "
                f"variant {self.variant!r}, {_range(*narrow)}. Load with "
                "outside_profile='fallback' to run such calls on the ExportedProgram"
            )
        bound[name] = (root, label, dim)

    def _range_of(self, expr: Any) -> str:
        sym = self.symbols[expr.symbol]
        hi = "" if sym.max is None else f" <= {sym.max}"
        return f"{sym.min} <= {expr.symbol}{hi}"

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
            return [*args, *[kwargs[k] for k in self._kwarg_names]]
        leaves: list[Any] = []
        if self._flatten_fast((args, kwargs), leaves):
            return leaves
        # the same walk again, naming paths, to say where the structure differs
        leaves = []
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


#: flattens one node's value onto the list of leaves; False where the structure differs
Flattener = Callable[[Any, list[Any]], bool]


def _leaf(value: Any, out: list[Any]) -> bool:
    out.append(value)
    return True


def compile_flattener(tree: Tree) -> Flattener:
    """``_flatten`` without building paths, as closures made once per contract: every check
    of the tree (kind, keys, length) is decided here, not looked up again in each call, and
    leaf children are appended in place."""
    kind = tree["type"]
    if kind == "leaf":
        return _leaf
    if kind == "none":
        return lambda value, out: value is None
    subs = tuple(None if c["type"] == "leaf" else compile_flattener(c)
                 for c in tree.get("children", ()))  # fmt: skip
    count = len(subs)

    def items(values: Any, out: list[Any]) -> bool:
        for sub, item in zip(subs, values):
            if sub is None:
                out.append(item)
            elif not sub(item, out):
                return False
        return True

    if kind == "dict":
        pairs = tuple(zip(tree["keys"], subs))

        def flatten_dict(value: Any, out: list[Any]) -> bool:
            # an ABC isinstance costs more than the rest of the node: plain dicts skip it
            if not (type(value) is dict or isinstance(value, Mapping)) or len(value) != count:
                return False
            for key, sub in pairs:
                if key not in value:
                    return False
                if sub is None:
                    out.append(value[key])
                elif not sub(value[key], out):
                    return False
            return True

        return flatten_dict
    if kind == "custom":
        cls, flatten = tree["_py"]

        def flatten_custom(value: Any, out: list[Any]) -> bool:
            if type(value) is not cls:
                return False
            children, _ = flatten(value)
            return len(children) == count and items(children, out)

        return flatten_custom
    want = _CONTAINER.get(kind)
    if want is None:
        return lambda value, out: False

    def flatten_sequence(value: Any, out: list[Any]) -> bool:
        return isinstance(value, want) and len(value) == count and items(value, out)

    return flatten_sequence


def _resolve_custom(tree: Tree) -> Tree:
    """A copy of the input tree whose custom nodes carry their registered class and flatten
    function (``_py``); a class not registered here is an UnregisteredPytreeError."""
    import torch.utils._pytree as pytree

    from .format.pytree import unregistered_error

    node = dict(tree)
    if node.get("type") == "custom":
        cls = pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(node["name"])
        if cls is None or cls not in pytree.SUPPORTED_NODES:
            raise unregistered_error(node["name"], "the pack's inputs")
        node["_py"] = (cls, pytree.SUPPORTED_NODES[cls].flatten_fn)
    if "children" in node:
        node["children"] = [_resolve_custom(c) for c in node["children"]]
    return node


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
    if kind == "custom":
        cls, flatten = tree["_py"]
        if type(value) is not cls:
            raise InputMismatchError(
                f"{path} must be a {cls.__module__}.{cls.__qualname__} (a registered pytree "
                f"class, {tree['name']!r}), got {type(value).__name__}",
                path=path,
            )
        items, _ = flatten(value)
        if len(items) != len(children):
            raise InputMismatchError(
                f"{path} ({cls.__name__}) flattens to {len(items)} children, the exported call "
                f"had {len(children)}",
                path=path,
            )
        for i, (child, item) in enumerate(zip(children, items)):
            _flatten(child, item, f"{path}[{i}]", out)
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


def _where(label: str, dim: int | None) -> str:
    return f"input {label}" if dim is None else f"input {label} dim {dim}"


def _range(lo: int, hi: int | None) -> str:
    return f"[{lo}, {'inf' if hi is None else hi}]"


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dim(d: int | str) -> int | DimExpr | None:
    """A dim as ``implied`` reads it: an int, or its parsed expression (None if it does not
    parse: such a guard is then compiled, never taken as implied)."""
    if isinstance(d, int):
        return d
    try:
        return parse_dim(d)
    except ManifestError:
        return None
