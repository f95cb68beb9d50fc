"""The graph JSON a pack stores is torch.export's own, byte for byte: trtpack's faster
program -> dataclasses step (trtpack/program/graph_serde.py) and dataclasses -> JSON step
(trtpack/program/graph_json.py, issue 27 item 7) against torch's ``serialize``, on real
programs (every model of tests/models.py, a custom operator, higher-order ops with subgraphs,
infinities and NaN); the ExportDB corpus is compared in tests/test_corpus.py with
:func:`torch_json`."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from models import CASES, CUSTOM_OP
from test_graph_module import _Autocast, _Cond, _NoGrad
from torch._export.serde import schema
from torch._export.serde import serialize as serde

from trtpack.program import graph_json, graph_serde
from trtpack.program.serialize import program_graph

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path


def torch_json(ep: torch.export.ExportedProgram) -> bytes:
    """torch's own ``serialize`` of ``ep``: the JSON ``torch.export.save`` writes."""
    try:
        artifact = serde.serialize(ep, serialize_state_dict=False, serialize_constants=False,
                                   serialize_example_inputs=False)  # fmt: skip
    except TypeError:  # torch < 2.12: no such arguments (it pickles the weights too)
        artifact = serde.serialize(ep)
    return artifact.exported_program


def assert_torch_json(ep: torch.export.ExportedProgram) -> None:
    ours = program_graph(ep)  # first: it registers the call's namedtuples torch needs
    assert ours == torch_json(ep)


class _Infinities(torch.nn.Module):
    """Float arguments torch writes as "Infinity", "-Infinity" and "NaN"."""

    def forward(self, x):
        y = x.masked_fill(x > 0, float("-inf")).clamp(max=math.inf)
        return torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0), y.masked_fill(x < 0, math.nan)


def test_the_fast_path_is_taken():
    # else every comparison here compares torch with itself
    assert graph_json.available(serde)
    assert graph_serde.available(serde)


def test_torchs_serializer_where_its_debug_log_is_on_or_the_schema_was_not_compared(
    caplog, monkeypatch
):
    """graph_serde leaves out the readable graph torch builds for its debug log: with that
    log on, torch's serializer writes the program and the log line; on a schema version
    graph_serde was not compared on, too. The bytes are the same either way."""
    ep = CASES["one_tensor"].export()[1]
    fast = program_graph(ep)
    with caplog.at_level(logging.DEBUG, logger=serde.log.name):
        assert not graph_serde.available(serde)
        assert program_graph(ep) == fast
    assert any("[serialize_graph]" in r.getMessage() for r in caplog.records)
    assert graph_serde.available(serde)
    monkeypatch.setattr(serde, "SCHEMA_VERSION", (8, 10_000))
    assert not graph_serde.available(serde)


@pytest.mark.parametrize("name", sorted(CASES))
def test_models_write_torchs_bytes(name):
    assert_torch_json(CASES[name].export()[1])


def test_custom_op_writes_torchs_bytes():
    assert_torch_json(CUSTOM_OP.export()[1])


@pytest.mark.parametrize("model", [_Cond, _NoGrad, _Autocast, _Infinities])
def test_subgraphs_and_special_floats_write_torchs_bytes(model):
    x = torch.randn(3, 4)
    with torch.no_grad() if model is _NoGrad else torch.enable_grad():
        ep = torch.export.export(model().eval(), (x,))
    assert_torch_json(ep)


def test_every_kind_of_value_converts_as_torchs():
    """Values no exported program above holds: a tuple, a dict, bytes (base64 by torch's
    encoder), an enum, each special float, nested unions and dataclasses."""
    obj = {
        "t": (1, 2.5, math.inf, -math.inf, math.nan, None, True, "s", b"\x00\xff"),
        "args": [schema.Argument.create(as_float=v) for v in (math.inf, -math.inf, math.nan, 0.5)],
        "dtype": schema.ScalarType.FLOAT,
        "version": schema.SchemaVersion(major=8, minor=1),
        "meta": schema.TensorMeta(
            dtype=schema.ScalarType.HALF,
            sizes=[
                schema.SymInt.create(as_int=2),
                schema.SymInt.create(as_expr=schema.SymExpr("s0")),
            ],
            requires_grad=False,
            device=schema.Device(type="cpu"),
            strides=[schema.SymInt.create(as_int=1)],
            storage_offset=schema.SymInt.create(as_int=0),
            layout=schema.Layout.Strided,
        ),
    }
    assert graph_json.to_json_bytes(serde, obj) == serde._to_json_bytes(obj)


def test_describe_checks_its_graph_once_and_the_writer_any_other(tmp_path):
    """``describe`` runs the writer's graph check as it parses the graph and records the bytes
    it checked; the writer skips only that very object: a graph member replaced after
    ``describe`` is checked again, and refused."""
    import trtpack
    from trtpack.program.describe import describe
    from trtpack.writing.assemble import PackParts, write

    described = describe(CASES["one_tensor"].export()[1])
    graph = described.ref.graph
    assert described.checked == {graph: described.members[graph]}
    raw = described.members[graph]
    assert isinstance(raw, bytes) and b"torch.ops.aten." in raw
    parts = PackParts(described.interface, dict(described.members), described.ref,
                      checked=described.checked)  # fmt: skip
    write(parts, tmp_path / "ok.trtpack")
    parts.members[graph] = raw.replace(b"torch.ops.aten.", b"os.system.", 1)
    with pytest.raises(trtpack.UnsafePackError, match="os.system"):
        write(parts, tmp_path / "bad.trtpack")
    assert not (tmp_path / "bad.trtpack").exists()
