"""Bare-engine descriptions are checked (issue 12.2): what a plan can say without a GPU (its
header, and — for TensorRT-RTX plans — the names it stores) is checked when it is packed or
added; the variant is marked ``described`` until a GPU runtime confirms the bindings at load,
before the first call."""

from __future__ import annotations

import shutil

import pytest

import trtpack
from trtpack.engines.plan import bindings_mismatch, missing_names
from trtpack.format.manifest import Binding, EngineSpec

pytest.importorskip("tensorrt_rtx", reason="builds real plans: needs tensorrt_rtx")
import rtx

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
PLAN = FIXTURES / "v0" / "engine" / "keywords.plan"


def test_names_a_plan_holds():
    plan = rtx.keywords_plan(("8.0",))
    assert missing_names(plan, ["x", "mask", "bias", "output0"]) == []
    # a typo, and a name that only occurs inside a longer one, are not bindings
    assert missing_names(plan, ["maks", "output", "output1"]) == ["maks", "output", "output1"]
    assert missing_names(b"ftrt" + bytes(60), ["anything"]) == []  # standard plans: unsearched


def test_pack_refuses_names_the_plan_cannot_have(tmp_path):
    with pytest.raises(trtpack.EngineError, match=r"input\(s\) \['maks'\] do not occur") as e:
        trtpack.migrate(PLAN, tmp_path / "p.trtpack", inputs=["x:float32[b=1..64@4,6]",
                        "maks:float32[b,6]", "bias:float32[6]"], outputs=["output0:float32[b,6]"])  # fmt: skip
    assert e.value.got == ["maks"]
    with pytest.raises(trtpack.EngineError, match=r"output\(s\) \['out'\] do not occur"):
        trtpack.migrate(PLAN, tmp_path / "p.trtpack", inputs=["x:float32[b=1..64@4,6]",
                        "mask:float32[b,6]", "bias:float32[6]"], outputs=["out:float32[b,6]"])  # fmt: skip
    assert not (tmp_path / "p.trtpack").exists()
    ok = trtpack.migrate(PLAN, tmp_path / "p.trtpack", inputs=["x:float32[b=1..64@4,6]",
                         "mask:float32[b,6]", "bias:float32[6]"], outputs=["output0:float32[b,6]"])  # fmt: skip
    assert ok.manifest.engines[0].described is True


def test_add_engine_refuses_a_plan_whose_inputs_are_not_the_packs(small_pack, tmp_path):
    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    other = rtx.build([("x", "float32", ((1, 4, 64), 6)), ("y", "float32", ((1, 4, 64), 6))],
                      targets=("8.0",))  # fmt: skip
    with pytest.raises(trtpack.EngineError, match=r"input\(s\) \['mask', 'bias'\] do not occur"):
        trtpack.add_engine(pack, other, variant="other")
    info = trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)), variant="sm80")
    (v,) = info.manifest.engines
    assert v.described is True
    # the engine's own output name, not an invented one (the pack names its output "output")
    assert [b.name for b in v.engines[0].outputs] == ["output0"]
    shown = trtpack.reading.render(trtpack.inspect(pack))
    assert "bindings described, not recorded (a bare plan)" in shown


def test_a_1_1_bare_plan_variant_is_marked_described_on_upgrade():
    (v,) = trtpack.inspect(FIXTURES / "v1.1" / "keywords_engines.trtpack").manifest.engines
    assert v.described is True


def _spec() -> EngineSpec:
    return EngineSpec("engine", "e.plan",
                      (Binding("x", "float32", ("x_dim0", 6)), Binding("bias", "float32", (6,))),
                      (Binding("output0", "float32", ("x_dim0", 6)),))  # fmt: skip


@pytest.mark.parametrize(
    ("actual", "problem"),
    [
        ([("x", True, "DataType.FLOAT", (-1, 6)), ("bias", True, "DataType.FLOAT", (6,)),
          ("output0", False, "DataType.FLOAT", (-1, 6))], None),
        ([("x", True, "DataType.FLOAT", (-1, 6)), ("output0", False, "DataType.FLOAT", (-1, 6))],
         "the engine's inputs are ['x'], the description says ['bias', 'x']"),
        ([("x", True, "DataType.HALF", (-1, 6)), ("bias", True, "DataType.FLOAT", (6,)),
          ("output0", False, "DataType.FLOAT", (-1, 6))],
         "input 'x' is float16 in the engine, float32 in the description"),
        ([("x", True, "DataType.FLOAT", (-1, 6)), ("bias", True, "DataType.FLOAT", (5,)),
          ("output0", False, "DataType.FLOAT", (-1, 6))],
         "input 'bias' dim 0 is 5 in the engine, 6 described"),
        ([("x", True, "DataType.FLOAT", (-1, 6, 1)), ("bias", True, "DataType.FLOAT", (6,)),
          ("output0", False, "DataType.FLOAT", (-1, 6))], "input 'x' has 3 dims in the engine"),
        ([("x", True, "DataType.FLOAT", (-1, 6)), ("bias", True, "DataType.FLOAT", (6,)),
          ("out", False, "DataType.FLOAT", (-1, 6))], "the engine's outputs are ['out']"),
    ],
)  # fmt: skip
def test_what_a_gpu_runtime_confirms(actual, problem):
    """The comparison a load on a GPU makes, given the I/O list TensorRT returns there."""
    got = bindings_mismatch(_spec(), actual)
    assert got == problem if problem is None else (got is not None and problem in got)


LIVE_PROBLEM = rtx.gpu_problem()  # why live engines cannot run here (None: they can)


@pytest.mark.engine
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=LIVE_PROBLEM or "")
def test_load_confirms_described_bindings_on_a_gpu(small_pack, tmp_path):
    """Live: the load deserializes the plan, lists its I/O tensors and confirms them."""
    import torch

    cc = "{}.{}".format(*torch.cuda.get_device_capability())
    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    trtpack.add_engine(pack, rtx.keywords_plan((cc,)), variant="here")
    loaded = trtpack.load(pack, require_engine=True)
    assert loaded.backend == "tensorrt" and loaded.variant == "here"


def test_pack_without_outputs_names_what_the_plan_quotes(tmp_path, capsys):
    """No invented output: the engine's outputs are described or the pack is refused, naming
    the tensors the plan's bytes quote besides the inputs (and inspect lists them all)."""
    from trtpack.cli import main
    from trtpack.engines.plan import quoted_tensor_names

    assert quoted_tensor_names(PLAN.read_bytes()) == ["bias", "mask", "output0", "x"]
    assert quoted_tensor_names(b"ftrt" + bytes(60)) == []  # a standard plan: not searched
    inputs = ["x:float32[b=1..64@4,6]", "mask:float32[b,6]", "bias:float32[6]"]
    with pytest.raises(trtpack.MigrationError, match=r"besides the inputs, are \['output0'\]"):
        trtpack.migrate(PLAN, tmp_path / "p.trtpack", inputs=inputs)
    assert not (tmp_path / "p.trtpack").exists()
    args = [a for spec in inputs for a in ("--input-spec", spec)]
    assert main(["pack", str(PLAN), *args, "-o", str(tmp_path / "p.trtpack")]) == 1
    err = capsys.readouterr().err
    assert "(--output-spec)" not in err and "--output-spec 'output0:float32[...]'" in err
    assert main(["inspect", str(PLAN)]) == 0
    assert "tensor names  bias, mask, output0, x  (the bindings" in capsys.readouterr().out
    assert main(["pack", str(PLAN), *args, "--output-spec", "output0:float32[b,6]",
                 "-o", str(tmp_path / "p.trtpack")]) == 0  # fmt: skip
    (v,) = trtpack.inspect(tmp_path / "p.trtpack").manifest.engines
    assert [b.name for b in v.engines[0].outputs] == ["output0"]
