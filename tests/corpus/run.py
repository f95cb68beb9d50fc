"""Run one real-model corpus case through trtpack and through torch.export.save/load (the
anchor), at the example size, at other sizes in range, and one past a range (refused).
Shared by tests/test_model_corpus.py and tools/corpus_report.py."""

from __future__ import annotations

import inspect as _inspect
import json
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

import trtpack


@dataclass
class Result:
    name: str
    exported: bool = True
    trtpack: str = "pass"  # "pass" or what failed
    torch_export: str = "pass"
    #: "taken" when the program module was built straight from the graph JSON, else why not
    fast_path: str = "-"
    calls: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _is_dim_spec(x: Any) -> bool:
    return x is None or (isinstance(x, dict) and all(isinstance(k, int) for k in x))


def _leaf_specs(model: Any, args: tuple, kwargs: dict, dyn: Any) -> list[Any]:
    """One dynamic-shape spec ({dim: Dim} or None) per leaf of (args, kwargs)."""
    if isinstance(dyn, (tuple, list)):
        arg_specs, kw_specs = list(dyn), {}
    else:
        names = list(_inspect.signature(model.forward).parameters)
        arg_specs = [dyn.get(n) for n in names[: len(args)]]
        kw_specs = {k: dyn.get(k) for k in kwargs}
    out: list[Any] = []
    for value, spec in [*zip(args, arg_specs), *((kwargs[k], kw_specs[k]) for k in kwargs)]:
        leaves = pytree.tree_leaves(value)
        if _is_dim_spec(spec):
            out += [spec] * len(leaves) if len(leaves) == 1 else [None] * len(leaves)
        else:
            specs = pytree.tree_leaves(spec, is_leaf=_is_dim_spec)
            out += specs if len(specs) == len(leaves) else [None] * len(leaves)
    return out


def _at(args: tuple, kwargs: dict, specs: list[Any], sizes: dict[str, int]) -> tuple[tuple, dict]:
    leaves, tree = pytree.tree_flatten((args, kwargs))
    new = []
    for leaf, spec in zip(leaves, specs):
        if not isinstance(leaf, torch.Tensor) or not spec:
            new.append(leaf)
            continue
        shape = list(leaf.shape)
        for d, dim in spec.items():
            if getattr(dim, "__name__", None) in sizes:
                shape[d] = sizes[dim.__name__]
        if leaf.dtype.is_floating_point:
            new.append(torch.randn(shape, dtype=leaf.dtype))
        elif leaf.dtype == torch.long and leaf.max() <= 1 and leaf.min() >= 0:
            new.append(torch.ones(shape, dtype=leaf.dtype) if leaf.max() == 1 else
                       torch.zeros(shape, dtype=leaf.dtype))  # fmt: skip
        else:
            new.append(torch.randint(0, 99, shape, dtype=leaf.dtype))
    return pytree.tree_unflatten(new, tree)


def _close(got: Any, want: Any) -> None:
    g, w = pytree.tree_leaves(got), pytree.tree_leaves(want)
    assert len(g) == len(w), f"{len(g)} outputs, eager has {len(w)}"
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _clone(x: Any) -> Any:
    return pytree.tree_map_only(torch.Tensor, torch.clone, x)


def _reference(path: Path) -> Any:
    """The module torch's deserializer and ep.module() build: what the fast path must equal."""
    from trtpack.program.serialize import load_program, runnable
    from trtpack.reading import open_pack

    with open_pack(path) as (reader, info):
        return runnable(load_program(reader, info.manifest, device=torch.device("cpu")))


def _equal(got: Any, want: Any) -> None:
    g, w = pytree.tree_leaves(got), pytree.tree_leaves(want)
    assert len(g) == len(w), f"{len(g)} outputs, torch's module has {len(w)}"
    for a, b in zip(g, w):
        assert torch.equal(a, b), "the fast path's output differs from torch's module"


def run_case(name: str, build: Any, tmp: Path) -> Result:
    start = time.perf_counter()
    r = Result(name)
    torch.manual_seed(0)
    model, args, kwargs, dyn, dims = build()
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(model, args, kwargs, dynamic_shapes=dyn, strict=False)
        except Exception as e:
            r.exported, r.trtpack, r.torch_export = False, "-", "-"
            r.notes.append(f"torch.export fails: {type(e).__name__}: {str(e)[:120]}")
            return r
    specs = _leaf_specs(model, args, kwargs, dyn)
    calls = [{}] + [{d: v} for d, (_, others) in dims.items() for v in others]
    path = tmp / "m.trtpack"
    anchor_path = tmp / "m.pt2"
    # trtpack
    try:
        trtpack.save(ep, path)
        pack = trtpack.load(path, device="cpu")
        r.fast_path = pack.fast_path_reason or "taken"
        reference = _reference(path) if pack.fast_path_reason is None else None
        for sizes in calls:
            a, k = _at(args, kwargs, specs, sizes) if sizes else (args, kwargs)
            with torch.no_grad():
                want = model(*_clone(a), **_clone(k))
            got = pack(*_clone(a), **_clone(k))
            _close(got, want)
            if reference is not None:  # bit for bit what torch's path gives
                with torch.inference_mode():
                    _equal(got, reference(*_clone(a), **_clone(k)))
            r.calls += 1
        for d in dims:
            sym = _symbol_of(pack.manifest, d, specs, args, kwargs)
            if sym is not None and pack.manifest.symbols[sym].max is not None:
                a, k = _at(args, kwargs, specs, {d: pack.manifest.symbols[sym].max + 1})
                try:
                    pack(*a, **k)
                    raise AssertionError(f"a call with {d} past its range ran")
                except trtpack.InputMismatchError:
                    pass
        _check_inspect_json(path, ep)
    except trtpack.ProgramError as e:
        r.trtpack = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if "could not serialize" in str(e):
            r.notes.append("torch's serializer refuses the program (torch.export.save too)")
    except Exception as e:
        r.trtpack = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    # the anchor: torch's own save/load
    try:
        torch.export.save(ep, anchor_path)
        loaded = torch.export.load(anchor_path).module()
        for sizes in calls:
            a, k = _at(args, kwargs, specs, sizes) if sizes else (args, kwargs)
            with torch.no_grad():
                want = model(*_clone(a), **_clone(k))
                _close(loaded(*_clone(a), **_clone(k)), want)
    except Exception as e:
        r.torch_export = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    r.seconds = time.perf_counter() - start
    return r


def _symbol_of(manifest: Any, dim_name: str, specs: list, args: tuple, kwargs: dict) -> str | None:
    """The manifest symbol for the user's Dim ``dim_name`` (its first input dim)."""
    paths = [i for i in manifest.inputs]
    for spec, spec_in in zip(specs, paths):
        if spec:
            for d, dim in spec.items():
                if getattr(dim, "__name__", None) == dim_name and spec_in.shape:
                    text = spec_in.shape[d]
                    if isinstance(text, str):
                        return trtpack.format.manifest.parse_dim(text).symbol
    return None


def _check_inspect_json(path: Path, ep: Any) -> None:
    """`trtpack inspect --json` (a separate process, no torch) agrees with ep.range_constraints."""
    out = subprocess.run([sys.executable, "-m", "trtpack", "inspect", "--json", str(path)],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    symbols = json.loads(out.stdout)["symbols"]

    def bound(x: Any) -> int | None:
        from torch.utils._sympy.numbers import int_oo

        return None if x == int_oo else int(x)  # int_oo: unbounded

    want = sorted((int(v.lower), bound(v.upper)) for v in ep.range_constraints.values())
    got = sorted((s["min"], s["max"]) for s in symbols.values())
    for g in got:
        assert g in want, f"inspect --json range {g} is not among ep.range_constraints {want}"
