"""Multi-entry packs with engines (issue 24): ``trtpack.compile`` of a dict of programs and
``trtpack.save`` of a dict of compiled modules mixed with programs, with the real
torch_tensorrt (the -rtx build, torch 2.14): engines really built by TensorRT-RTX on the CPU,
only device queries and the GPU-side deserialization bypassed (tests/tt_cpu.py), as
tests/test_torch_tensorrt.py does for one program.

Run in .venv-trt (tools/test.sh does): ``pytest -m torch_tensorrt``.
"""

from __future__ import annotations

import zipfile

import pytest
import torch
from torch.export import Dim

import trtpack
from trtpack.errors import DeriveError, EngineError, TrtpackError

pytestmark = pytest.mark.torch_tensorrt

tt_cpu = pytest.importorskip("tt_cpu")
try:
    tt = tt_cpu.import_torch_tensorrt()
except ImportError:  # the core environment: these tests run in .venv-trt
    pytest.skip(
        "torch_tensorrt is not installed here (tools/setup.sh trt)", allow_module_level=True
    )

from models import AccumulatingStep  # noqa: E402

SETTINGS = {"offload_module_to_cpu": True, "min_block_size": 1}


def settings():
    return {**SETTINGS, "device": tt.Device("cuda:0")}


class Plain(torch.nn.Module):
    """Stateless: the shared Linear only."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return torch.relu(self.lin(x)) * 2


class Reader(torch.nn.Module):
    """Reads the state AccumulatingStep writes (the same buffer), writes nothing."""

    def __init__(self, step: AccumulatingStep) -> None:
        super().__init__()
        self.lin = step.lin
        self.register_buffer("acc", step.acc)

    def forward(self, x):
        return self.lin(x) - self.acc


def programs(order=("step", "plain", "reader")):
    torch.manual_seed(0)
    step = AccumulatingStep()
    x = torch.randn(2, 4)
    b = Dim("b", min=1, max=8)
    models = {"step": step, "plain": Plain(step.lin), "reader": Reader(step)}
    eps = {n: torch.export.export(models[n], (x,), dynamic_shapes=({0: b},)) for n in order}
    return models, eps


def engines_of(module):
    return [m for m in module.children() if type(m).__name__ == "TorchTensorRTModule"]


def test_compile_of_a_dict_then_save_gives_engines_to_the_stateless_entry_point(tmp_path):
    """trtpack.save(trtpack.compile(programs), path): the stateless entry point gets a real
    engine (a non-default one: under entry_points/<name>/engines/), the entry points that
    write or read the shared state stay programs, each with a warning saying why; per-entry
    ranges reach only the entry point named; the pack loads and shares state as eager."""
    models, eps = programs()
    with tt_cpu.cpu_compile(), pytest.warns(UserWarning) as caught:
        compiled = trtpack.compile(eps, ranges={"plain": {"b": (1, 4)}}, **settings())
    why = sorted(str(w.message) for w in caught if "trtpack.compile" in str(w.message))
    assert len(why) == 2
    assert "entry point 'reader' reads state that step write(s) in place (acc)" in why[0]
    assert "entry point 'step' writes state in place (acc)" in why[1]
    assert compiled["step"] is eps["step"] and compiled["reader"] is eps["reader"]
    (engine,) = engines_of(compiled["plain"])
    assert compiled["plain"]._trtpack.source is eps["plain"]
    path = tmp_path / "three.trtpack"
    with tt_cpu.device_queries():
        info = trtpack.save(compiled, path, samples=2)
    m = info.manifest
    assert m.default_entry_point == "step" and m.engines == ()
    assert m.entry_points["reader"].engines == ()
    (v,) = m.entry_points["plain"].engines
    assert v.target.flavor == "tensorrt_rtx" and v.whole_graph
    (e,) = v.engines
    assert e.member.startswith(f"entry_points/plain/engines/{v.name}/")
    with zipfile.ZipFile(path) as z:
        assert z.read(e.member) == engine.serialized_engine  # the engine's own bytes
    # ranges per entry point: plain narrowed (the engine's profile too), step as exported
    assert m.entry_points["plain"].interface.symbols["b"].max == 4
    assert e.inputs[0].profile[0][2] == 4 and v.ranges == {"b": (2, 4)}
    assert m.symbols["b"].max == 8
    assert m.state.entry_points["plain"].mutates == () and m.state.entry_points["plain"].reads == ()
    with pytest.warns(UserWarning, match="running the ExportedProgram"):
        pack = trtpack.load(path, device="cpu", check=True)  # no GPU here: the programs run
    assert pack["plain"].check_report.passed and pack["reader"].check_report.passed
    x = torch.randn(3, 4)
    with torch.no_grad():
        want_plain = models["plain"](x)
        want_step = models["step"](x)  # eager writes acc ...
        want_reader = models["reader"](x)  # ... which reader sees
        models["step"].acc.zero_()
        assert torch.allclose(pack["plain"](x), want_plain, atol=1e-6)
        assert torch.allclose(pack["step"](x), want_step, atol=1e-6)
        assert torch.allclose(pack["reader"](x), want_reader, atol=1e-6)


def test_save_of_compiled_modules_mixed_with_programs(tmp_path):
    """A module from torch_tensorrt.dynamo.compile as an entry point (source= its program),
    named with variant=, as the default entry point and as another; variant= as one name."""
    _, eps = programs(order=("plain", "step"))
    inputs = [tt.Input(min_shape=(1, 4), opt_shape=(2, 4), max_shape=(8, 4), name="x")]
    with tt_cpu.cpu_compile():
        direct = tt.dynamo.compile(eps["plain"], arg_inputs=inputs, **settings())
    path = tmp_path / "mixed.trtpack"
    with tt_cpu.device_queries():
        info = trtpack.save({"plain": direct, "step": eps["step"]}, path,
                            source={"plain": eps["plain"]}, variant={"plain": "mine"},
                            output_names={"plain": ["y"]})  # fmt: skip
    m = info.manifest
    (v,) = m.engines
    assert v.name == "mine" and v.engines[0].member.startswith("engines/mine/")
    assert [o.name for o in m.outputs] == ["y"] and m.entry_points["step"].engines == ()
    assert m.program is not None  # the source program: the fallback and the shared weights
    with zipfile.ZipFile(path) as z:
        stored = z.read(v.engines[0].member)
    assert stored == engines_of(direct)[0].serialized_engine
    _, eps2 = programs(order=("step", "plain"))
    with tt_cpu.cpu_compile():
        module = trtpack.compile(eps2["plain"], **settings())
    with tt_cpu.device_queries():
        info = trtpack.save({"step": eps2["step"], "plain": module}, tmp_path / "two.trtpack",
                            variant="v1")  # fmt: skip
    (v,) = info.manifest.entry_points["plain"].engines
    assert (
        v.name == "v1"
        and v.engines[0].member
        == "entry_points/plain/engines/v1/" + (v.engines[0].member.rsplit("/", 1)[1])
    )


def test_compiled_modules_of_stateful_entry_points_are_refused(tmp_path):
    """An entry point that writes state in place, or reads state another writes, given as a
    compiled module: EngineError (the loader would never run its engines); add_engine refuses
    a reading entry point as it refuses a writing one. And the argument checks."""
    _, eps = programs()
    with tt_cpu.cpu_compile():
        step = trtpack.compile(eps["step"], **settings())
        reader = trtpack.compile(eps["reader"], **settings())
        plain = trtpack.compile(eps["plain"], **settings())
    out = tmp_path / "x.trtpack"
    # torch_tensorrt compiles the writing program, returning the new buffer as an output
    assert len(next(iter(step.graph.find_nodes(op="output"))).args[0]) == 2
    with tt_cpu.device_queries():
        with pytest.raises(EngineError, match="'step' writes state in place .* never run"):
            trtpack.save({**eps, "step": step}, out)
        with pytest.raises(EngineError, match="'reader' reads state that step write"):
            trtpack.save({**eps, "reader": reader}, out)
        bare = torch.fx.GraphModule(plain, plain.graph)  # a compiled module, nothing attached
        with pytest.raises(TrtpackError, match=r"without the program .* source=\{'plain': ep\}"):
            trtpack.save({**eps, "plain": bare}, out)
        with pytest.raises(TrtpackError, match=r"source= names \['step'\]"):
            trtpack.save({**eps, "plain": plain}, out, source={"step": eps["step"]})
        with pytest.raises(TrtpackError, match=r"variant= names \['step'\], which are given as"):
            trtpack.save({**eps, "plain": plain}, out, variant={"step": "v"})
    with pytest.raises(TrtpackError, match="variant= names engine sets"):
        trtpack.save(eps, out, variant="v")
    with pytest.raises(TypeError, match="variant must be a str"):
        trtpack.save(eps["plain"], out, variant={"plain": "v"})
    with pytest.raises(DeriveError, match=r"profiles= names \['nope'\]"):
        trtpack.compile(eps, profiles={"nope": [{"b": (1, 4)}]})
    assert not out.exists()
    path = tmp_path / "programs.trtpack"
    trtpack.save(eps, path)
    with tt_cpu.device_queries(), pytest.raises(EngineError, match="'reader' reads state"):
        trtpack.add_engine(path, reader, entry_point="reader")
    with tt_cpu.device_queries():
        trtpack.add_engine(path, plain, entry_point="plain")  # the stateless one: taken
    assert len(trtpack.inspect(path).manifest.entry_points["plain"].engines) == 1


def test_a_pack_with_engines_on_a_reading_entry_point_runs_its_program(tmp_path):
    """A pack written without the refusal (an older writer) that holds engines for an entry
    point reading state another writes: the loader runs the program, saying why."""
    from trtpack.engines.torchtrt import wire
    from trtpack.engines.variants import variant_from_wired
    from trtpack.writing.assemble import write
    from trtpack.writing.entry_points import parts_of_programs, relocated

    _, eps = programs()
    with tt_cpu.cpu_compile():
        reader = trtpack.compile(eps["reader"], **settings())
    parts, others = parts_of_programs(eps)
    with tt_cpu.device_queries():
        v, members = variant_from_wired(wire(reader), others["reader"].interface, name="v")
    v = relocated(v, "reader", members)
    parts = parts.with_variants([v], members, where="test", entry_point="reader")
    path = tmp_path / "old.trtpack"
    write(parts, path)
    with pytest.warns(UserWarning, match="running the ExportedProgram"):
        pack = trtpack.load(path, device="cpu")
    assert "'reader' reads state that step write(s) in place" in pack["reader"].fallback_reason


def test_compile_of_a_dict_takes_profiles_and_inputs_per_entry_point(tmp_path):
    """profiles={entry point: [...]} and inputs={entry point: {...}} reach the entry point
    named; the engine is built with them (two optimization profiles, recorded)."""
    _, eps = programs(order=("plain", "step"))
    x = tt.Input(min_shape=(1, 4), opt_shape=(3, 4), max_shape=(8, 4), dtype=torch.float32,
                 name="x")  # fmt: skip
    with tt_cpu.cpu_compile(), pytest.warns(UserWarning, match="'step' writes state"):
        two = trtpack.compile(eps, profiles={"plain": [{"b": (1, 4)}, {"b": (5, 8)}]},
                              **settings())  # fmt: skip
        given = trtpack.compile(eps, inputs={"plain": {"x": x}}, **settings())
    with tt_cpu.device_queries():
        m = trtpack.save(two, tmp_path / "two.trtpack").manifest
    (e,) = m.engines[0].engines
    assert e.inputs[0].profiles == (((2, 2, 4), (4, 4, 4)), ((5, 8, 8), (4, 4, 4)))
    assert given["step"] is eps["step"] and engines_of(given["plain"])
    # {input: ...} (keys not all entry points) is for every entry point; {entry point: {...}}
    # reaches the one named (an unknown input there is refused naming its inputs)
    with tt_cpu.cpu_compile(), pytest.warns(UserWarning, match="'step' writes state"):
        assert engines_of(trtpack.compile(eps, inputs={"x": x}, **settings())["plain"])
        with pytest.raises(DeriveError, match=r"unknown input\(s\) \['y'\] \(inputs: x\)"):
            trtpack.compile(eps, inputs={"plain": {"y": x}}, **settings())
