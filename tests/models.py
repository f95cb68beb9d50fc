"""The models users export, as test cases: each knows how to build itself, its export inputs,
its dynamic shapes, and further calls that must match eager after a round trip."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export import Dim


@dataclass
class Case:
    name: str
    make: Callable[[], torch.nn.Module]
    args: tuple
    kwargs: dict = field(default_factory=dict)
    dynamic_shapes: Any = None
    #: more (args, kwargs) calls, with other sizes inside the exported ranges
    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    #: more keyword arguments of torch.export.export (preserve_module_call_signature)
    options: dict = field(default_factory=dict)

    def export(self) -> tuple[torch.nn.Module, torch.export.ExportedProgram]:
        torch.manual_seed(0)
        model = self.make().eval()
        ep = torch.export.export(
            model, self.args, self.kwargs, dynamic_shapes=self.dynamic_shapes, **self.options
        )
        return model, ep


def r(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(*shape) > 0.5
    if not dtype.is_floating_point:
        return torch.randint(0, 10, shape, dtype=dtype)
    return torch.randn(*shape).to(dtype)


class OneTensor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.relu(self.lin(x))


class Positional(torch.nn.Module):
    def forward(self, a, b, c):
        return a * b + c


class Keywords(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)

    def forward(self, x, *, mask, bias):
        return self.lin(x) * mask + bias


class Nested(torch.nn.Module):
    def forward(self, inputs, extra):
        first, rest = inputs
        return first + rest["a"] * rest["b"][0] - rest["b"][1] + extra["scale"]


class Scalars(torch.nn.Module):
    def forward(self, x, n: int, alpha: float, flag: bool, mode: str, nothing):
        y = x * n * alpha
        if flag:
            y = y + 1
        if mode == "double":
            y = y * 2
        assert nothing is None
        return y


class SharedDim(torch.nn.Module):
    def forward(self, x, y):
        return torch.cat([x, y], dim=1).sum(dim=1)


class Derived(torch.nn.Module):
    def forward(self, x, y, z):
        return x.repeat(2, 1) + y, z[1:].sum() + x.sum()


class DerivedNegative(torch.nn.Module):
    """A derived dim with a negative offset (``2*dx - 1``): srepr writes ``Integer(-1)``."""

    def forward(self, x, y):
        return x.repeat(2)[1:] + y


class Double(torch.nn.Module):
    def forward(self, x):
        return x * 2


class CalledTwice(torch.nn.Module):
    """A submodule called twice under preserve_module_call_signature: torch names the second
    call ``n@1`` in the module call graph."""

    def __init__(self) -> None:
        super().__init__()
        self.n = Double()

    def forward(self, x):
        return self.n(self.n(x)) + 1


class ColonParameter(torch.nn.Module):
    """A parameter whose name is not an identifier (``foo:bar``): torch.fx quotes it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("foo:bar", torch.nn.Parameter(torch.randn(3)))

    def forward(self, x):
        return x * getattr(self, "foo:bar")


class Resample(torch.nn.Module):
    """Bilinear down by 0.5 and up by 2.0 under Dim.AUTO: torch's guards then read
    ``2*math.trunc(0.5*torch.sym_float(L['x'].size()[2])) == L['y'].size()[2]``."""

    def forward(self, x, y):
        h = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
        return torch.nn.functional.interpolate(h, scale_factor=2.0, mode="bilinear") + y


@dataclasses.dataclass
class FieldInputs:
    a: torch.Tensor
    b: torch.Tensor


torch.export.register_dataclass(FieldInputs, serialized_type_name="models.FieldInputs")


class DataclassFields(torch.nn.Module):
    """A registered dataclass input whose fields share a dim: torch guards
    ``L['inputs'].a.size()[0] == L['inputs'].b.size()[0]``."""

    def forward(self, inputs):
        return inputs.a + inputs.b


@torch.library.custom_op("trtpack_tests::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    """A custom operator (torch.library), registered when this module is imported."""
    return x * 2


@twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(torch.nn.Module):
    """Calls a custom operator: its pack loads only with ``allow_ops`` and the op registered."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.ops.trtpack_tests.twice(self.lin(x)) + 1


class ChannelsLast(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


Pair = collections.namedtuple("Pair", ["low", "high"])


class ManyOutputs(torch.nn.Module):
    def forward(self, x):
        return {"sum": x.sum(dim=1), "parts": [x * 2, x - 1]}, x.max(), Pair(x.min(dim=1)[0], x)


class Dtypes(torch.nn.Module):
    def forward(self, h, b, idx, keep):
        out = (h.float() + b.float()).index_select(0, idx)
        return out * keep[: out.shape[0]].unsqueeze(1), h * 2, b + 1


class WithBuffers(torch.nn.Module):
    """Persistent and non-persistent buffers, a tied weight, a lifted tensor constant."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.out = torch.nn.Linear(8, 16, bias=False)
        self.out.weight = self.emb.weight  # tied: one storage, two names
        self.register_buffer("scale", torch.full((8,), 0.5))
        self.register_buffer("offset", torch.arange(8.0), persistent=False)
        self.bn = torch.nn.BatchNorm1d(8)

    def forward(self, tokens):
        h = self.emb(tokens) * self.scale + self.offset + torch.tensor([1.0]).to(tokens.device)
        h = self.bn(h.transpose(1, 2)).transpose(1, 2)
        return self.out(h)


class AccumulatingStep(torch.nn.Module):
    """Writes state in place: adds the batch's sum to a running buffer, then reads it (the
    smallest stateful entry point; the multi-entry tests pair it with readers of ``acc``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("acc", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acc.add_(x.sum(0))
        return self.lin(x) + self.acc


class DynamicInt(torch.nn.Module):
    def forward(self, x, n: int):
        return x[:, :n] * 2


class Guarded(torch.nn.Module):
    """Shape-dependent Python: torch.export keeps guards beyond ranges (x.size(0) != 3,
    x.size(1) % 4 == 0, x.size(0) <= y.size(0)). A call that breaks one would run a program
    traced for other shapes."""

    def forward(self, x, y):
        if x.shape[0] != 3:
            x = x * 2
        if x.shape[1] % 4 == 0:
            x = x + 1
        return x + y[: x.shape[0]]


class Net(torch.nn.Module):
    """Linear, ReLU, Linear and a keyword input: compiled by the torch_tensorrt tests and
    fixtures (whole graph, or with relu left to PyTorch)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(8, 16)
        self.l2 = torch.nn.Linear(16, 4)

    def forward(self, x, *, bias):
        h = torch.relu(self.l1(x))
        return self.l2(h) + bias, h.sum(dim=1)


def cases() -> list[Case]:
    batch = Dim("batch", min=1, max=64)
    n = Dim("n", min=2, max=32)
    seq = Dim("seq", min=2, max=128)
    return [
        Case(
            "one_tensor",
            OneTensor,
            (r(4, 8),),
            dynamic_shapes=({0: batch},),
            calls=[((r(1, 8),), {}), ((r(64, 8),), {})],
        ),
        Case("positional", Positional, (r(3, 5), r(3, 5), r(5))),
        Case(
            "keywords",
            Keywords,
            (r(4, 6),),
            {"mask": r(4, 6), "bias": r(6)},
            dynamic_shapes={"x": {0: batch}, "mask": {0: batch}, "bias": None},
            calls=[((r(9, 6),), {"mask": r(9, 6), "bias": r(6)})],
        ),
        Case(
            "nested",
            Nested,
            ((r(2, 3), {"a": r(2, 3), "b": [r(2, 3), r(3)]}), {"scale": r(1)}),
            calls=[((((r(2, 3), {"a": r(2, 3), "b": [r(2, 3), r(3)]}), {"scale": r(1)})), {})],
        ),
        Case("scalars", Scalars, (r(2, 3), 3, 0.5, True, "double", None)),
        Case(
            "shared_dim",
            SharedDim,
            (r(5, 2), r(5, 7)),
            dynamic_shapes=({0: batch}, {0: batch}),
            calls=[((r(3, 2), r(3, 7)), {})],
        ),
        Case(
            "derived",
            Derived,
            (r(4, 3), r(8, 3), r(5)),
            dynamic_shapes=({0: n}, {0: 2 * n}, {0: n + 1}),
            calls=[((r(7, 3), r(14, 3), r(8)), {})],
        ),
        Case(
            "derived_negative",
            DerivedNegative,
            (r(4), r(7)),
            dynamic_shapes=({0: n}, {0: 2 * n - 1}),
            calls=[((r(9), r(17)), {})],
        ),
        Case(
            "called_twice",
            CalledTwice,
            (r(2, 3),),
            dynamic_shapes=({0: batch},),
            calls=[((r(5, 3),), {})],
            options={"preserve_module_call_signature": ("n",)},
        ),
        Case("colon_parameter", ColonParameter, (r(2, 3),)),
        Case(
            "resample",
            Resample,
            (r(2, 3, 8, 8), r(2, 3, 8, 8)),
            dynamic_shapes=({i: Dim.AUTO for i in range(4)}, {i: Dim.AUTO for i in range(4)}),
            calls=[((r(3, 3, 12, 6), r(3, 3, 12, 6)), {})],
        ),
        Case(
            "dataclass_fields",
            DataclassFields,
            (FieldInputs(r(4, 3), r(4, 3)),),
            dynamic_shapes=([{0: Dim.AUTO}, {0: Dim.AUTO}],),
            calls=[((FieldInputs(r(6, 3), r(6, 3)),), {})],
        ),
        Case(
            "channels_last",
            ChannelsLast,
            (r(2, 3, 16, 16).to(memory_format=torch.channels_last),),
            dynamic_shapes=({0: batch},),
            calls=[((r(5, 3, 16, 16).to(memory_format=torch.channels_last),), {})],
        ),
        Case(
            "many_outputs",
            ManyOutputs,
            (r(3, 4),),
            dynamic_shapes=({0: batch},),
            calls=[((r(6, 4),), {})],
        ),
        Case(
            "dtypes",
            Dtypes,
            (
                r(4, 3, dtype=torch.float16),
                r(4, 3, dtype=torch.bfloat16),
                torch.tensor([0, 2], dtype=torch.int64),
                r(4, dtype=torch.bool),
            ),
            dynamic_shapes=({0: batch}, {0: batch}, None, {0: batch}),
            calls=[
                (
                    (
                        r(6, 3, dtype=torch.float16),
                        r(6, 3, dtype=torch.bfloat16),
                        torch.tensor([5, 1], dtype=torch.int64),
                        r(6, dtype=torch.bool),
                    ),
                    {},
                )
            ],
        ),
        Case(
            "with_buffers",
            WithBuffers,
            (torch.randint(0, 16, (2, 5)),),
            dynamic_shapes=({0: batch, 1: seq},),
            calls=[((torch.randint(0, 16, (3, 9)),), {})],
        ),
        Case(
            "guarded",
            Guarded,
            (r(4, 8), r(9, 8)),
            dynamic_shapes={"x": {0: Dim.AUTO, 1: Dim.AUTO}, "y": {0: Dim.AUTO, 1: Dim.AUTO}},
            calls=[((r(5, 12), r(5, 12)), {}), ((r(2, 4), r(7, 4)), {})],
        ),
        Case(
            "dynamic_int",
            DynamicInt,
            (r(2, 10), 4),
            dynamic_shapes=({0: batch}, Dim.DYNAMIC),
            calls=[((r(3, 10), 7), {})],
        ),
    ]


CASES = {c.name: c for c in cases()}
#: a model whose pack needs ``load(..., allow_ops=["trtpack_tests::*"])``: not in CASES, whose
#: tests load packs with the defaults
CUSTOM_OP = Case(
    "custom_op",
    CustomOp,
    (r(2, 4),),
    dynamic_shapes=({0: Dim("batch", min=1, max=64)},),
    calls=[((r(5, 4),), {})],
)


def assert_same(got: Any, want: Any, path: str = "output") -> None:
    """Outputs equal, structure and all (dict keys, list/tuple types, namedtuple fields)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{path}: {type(got)}"
        assert got.dtype == want.dtype and got.shape == want.shape, f"{path}: {got.shape}"
        torch.testing.assert_close(got.cpu(), want.cpu(), msg=path)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{path}: {type(got)}"
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), f"{path}: {type(got)}"
        assert isinstance(got, list) == isinstance(want, list), f"{path}: {type(got)}"
        if hasattr(want, "_fields"):
            assert getattr(got, "_fields", None) == want._fields, f"{path}: {type(got)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
