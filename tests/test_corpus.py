"""Issue 9: save -> load -> call equals eager, for models no one on the team wrote."""

from __future__ import annotations

import pytest
import torch
from corpus import cases

import trtpack

CASES = cases()
# Cases that fail under trtpack save/load today, with the reason (none at present; a case
# listed here that starts passing fails the run, so the list stays true).
XFAIL: dict[str, str] = {}
PARAMS = [
    pytest.param(
        c,
        id=c.name,
        marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c.name])] if c.name in XFAIL else [],
    )
    for c in CASES
]


@pytest.mark.parametrize("case", PARAMS)
def test_roundtrip_equals_eager(case, tmp_path):
    model, args, kwargs, dyn = case.build()
    try:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=dyn, strict=False)
    except Exception as e:  # ExportDB lists cases torch.export itself does not support
        pytest.skip(f"torch.export fails: {type(e).__name__}")

    # each call gets fresh copies: some examples mutate their inputs in place
    def fresh():
        return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, (args, kwargs))

    a, k = fresh()
    want = ep.module()(*a, **k)
    path = tmp_path / "m.trtpack"
    trtpack.save(ep, path)
    a, k = fresh()
    got = trtpack.load(path)(*a, **k)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
