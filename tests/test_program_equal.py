"""Issue 22 item 1: ``pack.exported_program`` is torch's equal. For every model of
tests/models.py, tests/pytree_models.py and some ExportDB cases, the program trtpack hands back
(after ``save`` and after ``migrate`` of torch's own archive) prints as ``torch.export.load``'s
does and refuses the same wrong calls with the same exception, type and message.

Normalization: none of the printed text. What is left out of the comparison, and why:
- the example inputs' values: trtpack stores no pickle, so they are zeros at the symbols' opt
  sizes (their structure and dtypes are compared, and their shapes where every opt is the
  example's size);
- node metadata that ``str(ep)`` does not print (stack traces, ``tensor_meta``, which torch's
  deserializer itself does not restore) and ``graph_module.meta``, where trtpack keeps the
  loaded interface for a later save (``LOADED_FROM_KEY``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import pytree_models as pm
import torch
import torch.utils._pytree as pytree
from models import CASES

import trtpack

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path

# ExportDB: higher-order ops (cond, map: the fallback path), mutation, unbacked sizes, dicts
EXPORTDB = [
    "exportdb/cond_operands",
    "exportdb/constrain_as_size_example",
    "exportdb/dictionary",
    "exportdb/dynamic_shape_map",
    "exportdb/dynamic_shape_slicing",
    "exportdb/scalar_output",
    "exportdb/user_input_mutation",
]
#: cases torch.export.save refuses in a fresh process (the anchor is then the exported
#: program itself)
TORCH_SAVE_REFUSED = {"many_outputs": "NotImplementedError"}  # an unregistered namedtuple


def _export(name: str) -> torch.export.ExportedProgram:
    if name in CASES:
        return CASES[name].export()[1]
    if name in ("decoder", "guarded_decoder"):
        model = pm.Decoder() if name == "decoder" else pm.GuardedDecoder()
        return torch.export.export(model, *pm.example())
    from corpus import cases

    (case,) = [c for c in cases() if c.name == name]
    model, args, kwargs, dynamic_shapes = case.build()
    return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes)


def _leaf(x: Any) -> Any:
    return (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else x


def _printed(ep: torch.export.ExportedProgram, shapes: bool) -> dict[str, Any]:
    """Everything a user reads of a program, printed."""
    leaves, spec = pytree.tree_flatten(ep.example_inputs)
    return {
        "str(ep)": str(ep),  # the graph, its signature and the range constraints
        "range_constraints": str(ep.range_constraints),
        "module_call_graph": str(ep.module_call_graph),
        "call_spec": str(ep.call_spec),
        "state_dict": [(k, _leaf(v)) for k, v in ep.state_dict.items()],
        "constants": [(k, _leaf(v)) for k, v in ep.constants.items()],
        "verifiers": [v.dialect for v in ep.verifiers],
        "example_inputs": (
            str(spec),
            [_leaf(x) if shapes else getattr(x, "dtype", x) for x in leaves],
        ),
        "module().code": ep.module().code,
    }


def _wrong_calls(ep: torch.export.ExportedProgram) -> list[tuple[str, tuple, dict]]:
    """Calls the program refuses (or runs): wrong rank, dtype, count, sizes out of range."""
    args, kwargs = ep.example_inputs
    leaves, spec = pytree.tree_flatten((args, kwargs))

    def each(f):
        return pytree.tree_unflatten([f(x) if isinstance(x, torch.Tensor) else x
                                      for x in leaves], spec)  # fmt: skip

    def dim0(size):
        return lambda x: x.new_zeros((size(x.shape[0]), *x.shape[1:])) if x.dim() else x

    calls = [
        ("rank", *each(lambda x: x.unsqueeze(0))),
        ("dtype", *each(lambda x: x.double() if x.dtype == torch.float32 else x.float())),
        ("one argument more", (*args, torch.ones(1)), kwargs),
        ("one argument less", args[:-1], kwargs) if args else ("no keywords", args, {}),
    ]
    for what, size in [("1", lambda n: 1), ("n+1", lambda n: n + 1), ("3n+1", lambda n: 3 * n + 1),
                       ("200", lambda n: 200)]:  # fmt: skip
        calls.append((f"dim 0 = {what}", *each(dim0(size))))
    return calls


def _outcome(ep: torch.export.ExportedProgram, args: tuple, kwargs: dict) -> str:
    try:
        with torch.no_grad():
            ep.module()(*args, **kwargs)
    except Exception as e:
        return f"{type(e).__module__}.{type(e).__qualname__}: {e}"
    return "ran"


NAMES = [*sorted(CASES), "decoder", "guarded_decoder", *EXPORTDB]


def _assert_equal(want: torch.export.ExportedProgram, got: torch.export.ExportedProgram,
                  by_example: bool) -> None:  # fmt: skip
    a, b = _printed(want, by_example), _printed(got, by_example)
    for key in a:
        assert b[key] == a[key], f"{key} differs from torch's"
    for what, args, kwargs in _wrong_calls(want):
        assert _outcome(got, args, kwargs) == _outcome(want, args, kwargs), what


@pytest.mark.parametrize("name", NAMES)
def test_loaded_program_prints_and_refuses_as_torch_export_load(name, tmp_path):
    ep = _export(name)
    pt2, pack_path = tmp_path / "m.pt2", tmp_path / "m.trtpack"
    try:
        torch.export.save(ep, pt2)
    except Exception as e:
        # refused until the namedtuple is registered (trtpack's load of it registers it)
        assert type(e).__name__ == TORCH_SAVE_REFUSED.get(name), e
        theirs = ep
    else:
        # torch's load of example inputs of a registered class falls back to an unpickling
        # load and logs it with a malformed format string, which pytest turns into an error
        logger = logging.getLogger("torch._export.serde.serialize")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            theirs = torch.export.load(pt2)
        finally:
            logger.setLevel(level)
    trtpack.save(ep, pack_path)
    pack = trtpack.load(pack_path, device="cpu")
    by_example = all(s.opt_source == "example" for s in pack.manifest.symbols.values())
    _assert_equal(theirs, pack.exported_program, by_example)
    if theirs is ep:
        return
    # the same archive migrated: the program trtpack hands back is torch's again
    trtpack.migrate(pt2, tmp_path / "migrated.trtpack")
    migrated = trtpack.load(tmp_path / "migrated.trtpack", device="cpu")
    by_example = all(s.opt_source == "example" for s in migrated.manifest.symbols.values())
    _assert_equal(theirs, migrated.exported_program, by_example)
