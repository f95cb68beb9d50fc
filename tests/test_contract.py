"""The per-call check: every mismatch is refused before anything runs, with a message that
names the input, its path, the dim, the value and the allowed range."""

from __future__ import annotations

import pytest
import torch

import trtpack


@pytest.fixture(scope="module")
def packs(exported, tmp_path_factory):
    out = {}
    for name in ("keywords", "derived", "scalars", "nested", "dynamic_int", "dtypes"):
        _, _, ep = exported(name)
        path = tmp_path_factory.mktemp("contract") / f"{name}.trtpack"
        trtpack.save(ep, path)
        out[name] = trtpack.load(path, device="cpu")
    return out


def refused(pack, *args, match: str, **kwargs):
    with pytest.raises(trtpack.InputMismatchError, match=match):
        pack(*args, **kwargs)


def t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


def test_dynamic_dim_outside_range(packs):
    refused(
        packs["keywords"],
        t(65, 6),
        mask=t(65, 6),
        bias=t(6),
        match=r"^input x \(args\[0\]\) dim 0 is 65, outside the allowed range of x_dim0: \[1, 64\]$",
    )
    refused(packs["keywords"], t(0, 6), mask=t(0, 6), bias=t(6), match=r"dim 0 is 0, outside")


def test_static_dim_rank_dtype(packs):
    p = packs["keywords"]
    refused(
        p,
        t(4, 5),
        mask=t(4, 6),
        bias=t(6),
        match=r"input x \(args\[0\]\) dim 1 is 5, expected 6 \(shape \[4, 5\], expected \['x_dim0', 6\]\)",
    )
    refused(
        p, t(4), mask=t(4, 6), bias=t(6), match=r"has 1 dims \[4\], expected 2 dims \['x_dim0', 6\]"
    )
    refused(
        p,
        t(4, 6, dtype=torch.float16),
        mask=t(4, 6),
        bias=t(6),
        match=r"input x \(args\[0\]\) has dtype float16, expected float32",
    )
    refused(p, [[1.0] * 6], mask=t(1, 6), bias=t(6), match=r"must be a tensor, got list")


def test_shared_dim_must_agree(packs):
    refused(
        packs["keywords"],
        t(4, 6),
        mask=t(5, 6),
        bias=t(6),
        match=r"input mask dim 0 is 5, which makes x_dim0 = 5, but input x \(args\[0\]\) dim 0 "
        r"already set x_dim0 = 4; these dims must agree",
    )


def test_derived_dims_consistent(packs):
    p = packs["derived"]
    p(t(4, 3), t(8, 3), t(5))  # n = 4
    refused(
        p,
        t(4, 3),
        t(9, 3),
        t(5),
        match=r"dim 0 is 9, but it must be 2\*x_dim0 for an integer x_dim0",
    )
    refused(
        p,
        t(4, 3),
        t(10, 3),
        t(5),
        match=r"makes x_dim0 = 5, but input x \(args\[0\]\) dim 0 already set x_dim0 = 4",
    )
    refused(
        p, t(4, 3), t(8, 3), t(6), match=r"input z \(args\[2\]\) dim 0 is 6, which makes x_dim0 = 5"
    )
    refused(p, t(40, 3), t(80, 3), t(41), match=r"outside the allowed range of x_dim0: \[2, 32\]")
    refused(p, t(1, 3), t(2, 3), t(2), match=r"outside the allowed range of x_dim0: \[2, 32\]")


def test_derived_dim_reports_expression_when_it_binds_first(packs, tmp_path):
    # in "derived" the plain dim binds first, so its range is what is reported
    p = packs["derived"]
    refused(p, t(33, 3), t(66, 3), t(34), match=r"x \(args\[0\]\) dim 0 is 33, outside")

    # a derived dim first in the call binds the symbol: the message gives its expression
    class YFirst(torch.nn.Module):
        def forward(self, y, x):
            return y[: x.shape[0]] + x.repeat(1, 1)

    n = torch.export.Dim("n", min=2, max=32)
    ep = torch.export.export(YFirst(), (t(8, 3), t(4, 3)), dynamic_shapes=({0: 2 * n}, {0: n}))
    pack = trtpack.load(trtpack.save(ep, tmp_path / "y_first.trtpack").path)
    refused(pack, t(66, 3), t(33, 3),
            match=r"^input y \(args\[0\]\) dim 0 is 66 = 2\*(\w+) with \1 = 33, outside \1's range \[2, 32\]$")  # fmt: skip


def test_call_structure(packs):
    p = packs["keywords"]
    refused(p, t(4, 6), t(4, 6), bias=t(6), match=r"expected 1 positional input\(s\), got 2")
    refused(p, t(4, 6), bias=t(6), match=r"missing keyword input\(s\) \['mask'\]")
    refused(
        p,
        t(4, 6),
        mask=t(4, 6),
        bias=t(6),
        scale=2,
        match=r"unexpected keyword input\(s\) \['scale'\] \(not in the exported signature\)",
    )
    n = packs["nested"]
    good = (t(2, 3), {"a": t(2, 3), "b": [t(2, 3), t(3)]})
    n(good, {"scale": t(1)})
    refused(
        n,
        (t(2, 3), {"a": t(2, 3)}),
        {"scale": t(1)},
        match=r"args\[0\]\[1\] must have keys \['a', 'b'\], got \['a'\]",
    )
    refused(
        n,
        (t(2, 3), {"a": t(2, 3), "b": (t(2, 3), t(3))}),
        {"scale": t(1)},
        match=r"args\[0\]\[1\]\['b'\] must be a list of 2, got tuple of 2",
    )
    refused(
        n, [t(2, 3), good[1]], {"scale": t(1)}, match=r"args\[0\] must be a tuple of 2, got list"
    )
    refused(
        n, good, {"scale": t(2)}, match=r"input extra_scale \(args\[1\]\['scale'\]\) dim 0 is 2"
    )


def test_specialized_scalars(packs):
    p = packs["scalars"]
    p(t(2, 3), 3, 0.5, True, "double", None)
    refused(
        p,
        t(2, 3),
        4,
        0.5,
        True,
        "double",
        None,
        match=r"input n \(args\[1\]\) must be 3 \(int\): torch.export specialized the program",
    )
    refused(
        p,
        t(2, 3),
        3,
        0.5,
        1,
        "double",
        None,
        match=r"input flag \(args\[3\]\) must be True \(bool\)",
    )
    refused(p, t(2, 3), 3.0, 0.5, True, "double", None, match=r"must be 3 \(int\)")
    refused(p, t(2, 3), 3, 0.5, True, "single", None, match=r"must be 'double' \(str\)")
    refused(p, t(2, 3), 3, 0.5, True, "double", 0, match=r"must be None \(none\)")


def test_dynamic_int(packs):
    p = packs["dynamic_int"]
    assert p(t(2, 10), 7).shape == (2, 7)
    refused(
        p,
        t(2, 10),
        11,
        match=r"input n \(args\[1\]\) is 11, outside the allowed range of n: \[0, 10\]",
    )
    refused(p, t(2, 10), 2.0, match=r"input n \(args\[1\]\) must be an int, got float")


def test_wrong_device_is_named(packs):
    p = packs["keywords"]
    x = t(4, 6).to("meta")
    refused(
        p,
        x,
        mask=t(4, 6),
        bias=t(6),
        match=r"input x \(args\[0\]\) is on meta; this pack runs on cpu",
    )


def test_check_inputs_does_not_run(packs, tmp_path):
    class Counts(torch.nn.Module):  # each run adds 1 to a buffer: a run is visible
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("runs", torch.zeros(()))

        def forward(self, x):
            self.runs.add_(1)
            return x * 2

    ep = torch.export.export(Counts(), (t(4, 3),))
    counts = trtpack.load(trtpack.save(ep, tmp_path / "counts.trtpack").path)
    runs = dict(counts.module.named_buffers())["runs"]
    counts.check_inputs(t(4, 3))
    assert runs.item() == 0
    counts(t(4, 3))
    assert runs.item() == 1  # the buffer does see a run

    p = packs["dtypes"]
    p.check_inputs(
        t(4, 3, dtype=torch.float16),
        t(4, 3, dtype=torch.bfloat16),
        torch.tensor([0, 1]),
        t(4, dtype=torch.bool),
    )
    with pytest.raises(trtpack.InputMismatchError, match="has dtype float32, expected bfloat16"):
        p.check_inputs(
            t(4, 3, dtype=torch.float16), t(4, 3), torch.tensor([0, 1]), t(4, dtype=torch.bool)
        )


def test_input_mismatch_is_a_value_error(packs):
    with pytest.raises(ValueError):
        packs["keywords"](t(99, 6), mask=t(99, 6), bias=t(6))
