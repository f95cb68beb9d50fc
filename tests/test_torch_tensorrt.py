"""trtpack.compile / trtpack.save with the real torch_tensorrt (the -rtx build, torch 2.14),
up to the point where a GPU is needed: engines are really built by TensorRT-RTX on the CPU,
and only device queries and the GPU-side deserialization are bypassed (tests/tt_cpu.py).

Run in .venv-trt (tools/test.sh does): ``pytest -m torch_tensorrt``.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import rtx
import torch
from torch.export import Dim

import trtpack

pytestmark = pytest.mark.torch_tensorrt

tt_cpu = pytest.importorskip("tt_cpu")
try:
    tt = tt_cpu.import_torch_tensorrt()
except ImportError:  # the core environment: these tests run in .venv-trt
    pytest.skip(
        "torch_tensorrt is not installed here (tools/setup.sh trt)", allow_module_level=True
    )

from models import Net  # noqa: E402

from trtpack.engines import torchtrt  # noqa: E402
from trtpack.engines.packed_info import read_packed  # noqa: E402

SETTINGS = {"device": None, "offload_module_to_cpu": True, "min_block_size": 1}


def settings(**extra):
    return {**SETTINGS, "device": tt.Device("cuda:0"), **extra}


@pytest.fixture(scope="module")
def net_ep():
    torch.manual_seed(0)
    model = Net().eval()
    batch = Dim("batch", min=1, max=32)
    ep = torch.export.export(model, (torch.randn(4, 8),), {"bias": torch.randn(4, 4)},
                             dynamic_shapes={"x": {0: batch}, "bias": {0: batch}})  # fmt: skip
    return model, ep


@pytest.fixture(scope="module")
def compiled(net_ep):
    """Real compiles (engines built by TensorRT-RTX): whole-graph and partitioned."""
    _, ep = net_ep
    with tt_cpu.cpu_compile():
        whole = trtpack.compile(ep, **settings())
        split = trtpack.compile(ep, **settings(torch_executed_ops={torch.ops.aten.relu.default}))
    return whole, split


def engines_of(module):
    return {n: m for n, m in module.named_children() if type(m).__name__ == "TorchTensorRTModule"}


def members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


# --- compile: no inputs= --------------------------------------------------------------------


def test_inputs_derived_from_the_program(net_ep):
    from trtpack.program.serialize import derive_interface

    _, ep = net_ep
    iface = derive_interface(ep)
    args, kwargs = torchtrt.torch_tensorrt_inputs(iface)
    (x,) = args
    assert isinstance(x, tt.Input) and x.name == "x" and x.dtype == tt.dtype.f32
    assert x.shape == {"min_shape": (1, 8), "opt_shape": (4, 8), "max_shape": (32, 8)}
    assert set(kwargs) == {"bias"} and kwargs["bias"].shape["max_shape"] == (32, 4)
    override = tt.Input(min_shape=(1, 8), opt_shape=(16, 8), max_shape=(32, 8), name="x")
    args, _ = torchtrt.torch_tensorrt_inputs(iface, {"x": override})
    assert args[0] is override
    with pytest.raises(trtpack.DeriveError, match=r"override for unknown input\(s\) \['y'\]"):
        torchtrt.torch_tensorrt_inputs(iface, {"y": override})


def test_unbounded_dim_is_refused_with_a_clear_message():
    ep = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(3, 4),),
                             dynamic_shapes=({0: Dim("rows")},))  # fmt: skip
    with pytest.raises(
        trtpack.DeriveError,
        match=r"symbol 'input_dim0' has no upper bound .*ranges=\{'input_dim0': \(\d+, MAX\)\}.*min x 4096",
    ):
        trtpack.compile(ep, **settings())


def test_compile_builds_real_engines_and_carries_the_manifest(compiled, net_ep):
    whole, split = compiled
    _, ep = net_ep
    assert [type(m).__name__ for m in whole.children()] == ["TorchTensorRTModule"]
    assert sorted(engines_of(split)) == ["_run_on_acc_0", "_run_on_acc_2"]
    assert "_run_on_gpu_1" in dict(split.named_children())
    for module in (whole, split):
        assert module._trtpack.source is ep
        assert [i.name for i in module._trtpack.interface.inputs] == ["x", "bias"]
        for trt_module in engines_of(module).values():
            assert trt_module.serialized_engine[:4] == b"vtrt"


def test_narrowed_range_reaches_the_engine_profile(net_ep, tmp_path):
    _, ep = net_ep
    with tt_cpu.cpu_compile():
        module = trtpack.compile(ep, ranges={"batch": (1, 8)}, **settings())
    with tt_cpu.device_queries():
        info = trtpack.save(module, tmp_path / "narrow.trtpack")
    assert info.manifest.symbols["x_dim0"].max == 8
    (engine,) = info.manifest.engines[0].engines
    # torch_tensorrt raises the min of a 0/1-specialized dim to 2 ("The compiled engine's min
    # will be 2"): the pack records the engine's real profile, and the range it covers
    assert engine.inputs[0].profile[0] == (2, 4, 8)
    assert info.manifest.engines[0].ranges == {"x_dim0": (2, 8)}


# --- save: no inputs= -----------------------------------------------------------------------


def test_save_whole_graph_module(compiled, tmp_path):
    whole, _ = compiled
    path = tmp_path / "whole.trtpack"
    with tt_cpu.device_queries():
        info = trtpack.save(whole, path, metadata={"model": "net"})
    m = info.manifest
    assert m.program is not None and [i.name for i in m.inputs] == ["x", "bias"]
    (v,) = m.engines
    assert v.whole_graph and v.program is None and v.ranges == {"x_dim0": (2, 32)}
    assert v.target.flavor == "tensorrt_rtx" and v.name.startswith("rtx_")
    (e,) = v.engines
    raw = members(path)
    assert raw[e.member] == engines_of(whole)["_run_on_acc_0"].serialized_engine  # raw bytes
    assert [b.name for b in e.inputs] == ["x", "bias"] and [b.name for b in e.outputs] == [
        "output0",
        "output1",
    ]
    assert e.inputs[0].shape == ("x_dim0", 8) and e.inputs[0].profile == ((2, 4, 32), (8, 8, 8))
    assert e.outputs[1].shape == ("x_dim0",) and e.abi_version == torch.ops.tensorrt.ABI_VERSION()
    compilation = e.settings["compilation"]
    assert compilation["min_block_size"] == 1 and compilation["device"] == "GPU:0"
    json.dumps(e.settings)  # plain data, no pickle anywhere in the pack
    _only_plain_members(raw, {e.member for e in v.engines})


def _only_plain_members(raw: dict[str, bytes], engines: set[str]) -> None:
    """Every member is JSON, safetensors or a TensorRT-RTX plan, read as such: no pickle (of
    any protocol, or inside a torch.save zip) can hide in a pack that passes."""
    from safetensors import deserialize

    for name, data in raw.items():
        if name in engines:
            assert data[:4] == b"vtrt", name  # a plan, handed to TensorRT only
        elif name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".safetensors"):
            deserialize(data)  # header JSON + raw tensor bytes
        else:
            raise AssertionError(f"{name}: not JSON, safetensors or an engine plan")


def test_save_partitioned_module_keeps_the_wiring(compiled, tmp_path):
    _, split = compiled
    path = tmp_path / "split.trtpack"
    with tt_cpu.device_queries():
        info = trtpack.save(split, path)
    (v,) = info.manifest.engines
    assert not v.whole_graph and v.program is not None
    assert [e.name for e in v.engines] == ["_run_on_acc_0_engine", "_run_on_acc_2_engine"]
    second = v.engines[1]
    assert [b.name for b in second.inputs] == ["relu", "bias"]
    assert second.inputs[0].shape == ("x_dim0", 16)  # an intermediate tensor, in manifest names
    raw = members(path)
    for e in v.engines:
        assert raw[e.member] == engines_of(split)[e.name.removesuffix("_engine")].serialized_engine
    graph = json.loads(raw[v.program.graph])
    targets = [n["target"] for n in graph["graph_module"]["graph"]["nodes"]]
    assert targets.count("torch.ops.tensorrt.execute_engine.default") == 2
    assert "torch.ops.aten.relu.default" in targets  # the PyTorch-fallback subgraph


def test_several_optimization_profiles_are_built_recorded_and_routed(net_ep, tmp_path):
    """torch_tensorrt builds one engine with two profiles (for real, here on the CPU); the pack
    records both, and the contract sends a call to the profile that covers it, refusing one
    that falls between them."""
    from trtpack.contract import Contract
    from trtpack.format.manifest import profile_boxes

    model, ep = net_ep
    with tt_cpu.cpu_compile():
        module = trtpack.compile(ep, profiles=[{"batch": (1, 8, 4)}, {"x_dim0": (16, 32, 24)}],
                                 **settings())  # fmt: skip
    with tt_cpu.device_queries():
        info = trtpack.save(module, tmp_path / "profiles.trtpack")
    m = info.manifest
    (v,) = m.engines
    (x, bias) = v.engines[0].inputs
    assert x.profiles == (((2, 4, 8), (8, 8, 8)), ((16, 24, 32), (8, 8, 8)))
    assert bias.profiles == (((2, 4, 8), (4, 4, 4)), ((16, 24, 32), (4, 4, 4)))
    assert v.ranges == {"x_dim0": (2, 32)}
    boxes = profile_boxes(v.engines, m.inputs, m.symbols)
    assert boxes == [{"x_dim0": (2, 8)}, {"x_dim0": (16, 32)}]
    contract = Contract(m, engine_ranges=v.ranges, variant=v.name, profile_boxes=boxes)
    for n in (2, 8, 16, 32):
        contract((torch.zeros(n, 8),), {"bias": torch.zeros(n, 4)})
    for n in (1, 12):
        with pytest.raises(trtpack.OutsideEngineProfile, match="optimization profile"):
            contract((torch.zeros(n, 8),), {"bias": torch.zeros(n, 4)})
    pack = trtpack.load(info.path, device="cpu")  # no GPU: the program runs every size
    want = model(torch.ones(12, 8), bias=torch.ones(12, 4))
    for g, w in zip(pack(torch.ones(12, 8), bias=torch.ones(12, 4)), want):
        torch.testing.assert_close(g, w)


def test_packed_info_read_as_plain_data(compiled):
    whole, _ = compiled
    trt_module = engines_of(whole)["_run_on_acc_0"]
    with tt_cpu.device_queries():
        info = trt_module._pack_engine_info()
    packed = read_packed(info)
    assert packed.engine == trt_module.serialized_engine
    assert packed.input_names == ("x", "bias") and packed.output_names == ("output0", "output1")
    assert packed.abi == torch.ops.tensorrt.ABI_VERSION() and packed.platform == "linux_x86_64"
    # the build GPU: read from the field torch_tensorrt wrote, at torch_tensorrt's own index
    # and with its own delimiter (its value is a device-query answer, tests/tt_cpu.py: what is
    # checked is that trtpack reads that field, whatever it holds)
    from torch_tensorrt.dynamo.runtime import _TorchTensorRTModule as ttm

    field = info[ttm.DEVICE_IDX]
    field = field.decode() if isinstance(field, bytes) else field
    gpu, major, minor, _, name = field.split(torch.ops.tensorrt.SERIALIZED_RT_DEVICE_DELIM()[0], 4)
    assert packed.device == (int(gpu), int(major), int(minor), name)
    assert packed.compute_capability == f"{int(major)}.{int(minor)}"
    name = info[ttm.NAME_IDX]
    assert packed.name == (name.decode() if isinstance(name, bytes) else name)
    s = packed.settings
    assert s["min_block_size"] == trt_module.settings.min_block_size
    assert s["offload_module_to_cpu"] is True and s["engine_capability"] == "STANDARD"
    assert packed.metadata["inout_symexprs"] is None or isinstance(
        packed.metadata["inout_symexprs"], dict
    )


def test_lazy_module_with_a_real_engine():
    """A TorchTensorRTModule built by hand around a real TensorRT-RTX plan, with lazy engine
    init (nothing touches a GPU): its packed info reads back as the same facts."""
    import rtx
    from torch_tensorrt.dynamo import CompilationSettings
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    from trtpack.engines.plan import parse_plan
    from trtpack.engines.variants import engine_settings, target_of

    plan = rtx.keywords_plan(("8.6", "8.9"))
    settings = CompilationSettings(device=tt.Device("cuda:0"), lazy_engine_init=True,
                                   hardware_compatible=True)  # fmt: skip
    module = TorchTensorRTModule(serialized_engine=plan, input_binding_names=["x", "mask", "bias"],
                                 output_binding_names=["output0"], name="keywords",
                                 settings=settings)  # fmt: skip
    assert module.engine is None  # lazy: no GPU was asked for
    with tt_cpu.device_queries():
        packed = read_packed(module._pack_engine_info())
    assert packed.engine == plan and packed.name == "keywords_engine"
    assert packed.input_names == ("x", "mask", "bias") and packed.hardware_compatible
    assert packed.settings["lazy_engine_init"] is True
    target = target_of([parse_plan(packed.engine)], [packed])
    assert target.compute_capabilities == ("8.6", "8.9")  # from the plan, not the build GPU
    assert target.hardware_compatibility == "none"  # TensorRT-RTX has no such levels
    assert engine_settings(packed)["module"]["hardware_compatible"] is True


def test_save_module_compiled_by_torch_tensorrt_directly(net_ep, tmp_path):
    """A module that did not come from trtpack.compile: the manifest is derived from its
    own wiring, or from source= for the portable fallback."""
    model, ep = net_ep
    inputs = [tt.Input(min_shape=(1, 8), opt_shape=(4, 8), max_shape=(32, 8), name="x")]
    kwargs = {"bias": tt.Input(min_shape=(1, 4), opt_shape=(4, 4), max_shape=(32, 4), name="bias")}
    with tt_cpu.cpu_compile():
        module = tt.dynamo.compile(ep, arg_inputs=inputs, kwarg_inputs=kwargs, **settings())
    with tt_cpu.device_queries():
        alone = trtpack.save(module, tmp_path / "alone.trtpack")
        with_source = trtpack.save(module, tmp_path / "with_source.trtpack", source=ep)
    assert alone.manifest.program is None and [i.name for i in alone.manifest.inputs] == [
        "x",
        "bias",
    ]
    assert with_source.manifest.program is not None
    assert (
        with_source.manifest.inputs
        == trtpack.inspect(tmp_path / "with_source.trtpack").manifest.inputs
    )
    x, bias = torch.randn(5, 8), torch.randn(5, 4)
    with pytest.warns(UserWarning, match="running the ExportedProgram"):
        pack = trtpack.load(tmp_path / "with_source.trtpack")
    torch.testing.assert_close(pack(x, bias=bias), model(x, bias=bias))
    with pytest.raises(trtpack.NoUsableEngineError, match="holds engines only"):
        trtpack.load(tmp_path / "alone.trtpack")


def test_save_torch_tensorrt_exported_program(compiled, tmp_path):
    """A torch_tensorrt ExportedProgram with embedded engines (what torch_tensorrt.save writes)."""
    _, split = compiled
    with tt_cpu.device_queries():
        trt_ep = torchtrt.wired_program(split)
        assert torchtrt.engine_constant_names(trt_ep)
        info = trtpack.save(trt_ep, tmp_path / "trt_ep.trtpack")
    (v,) = info.manifest.engines
    assert len(v.engines) == 2 and info.manifest.program is None


@pytest.mark.parametrize("which", ["whole", "split"])
def test_save_and_migrate_of_torch_tensorrt_save_give_the_same_variant(compiled, which, tmp_path):
    """One variant builder: a compiled module saved by trtpack, and the file torch_tensorrt.save
    writes for it, migrated, give the same engines, bindings, profiles, wiring and target."""
    from torch_tensorrt.dynamo.runtime._TRTEngine import EngineSerializer

    module = dict(zip(["whole", "split"], compiled))[which]
    with tt_cpu.device_queries():
        saved = trtpack.save(module, tmp_path / "saved.trtpack", variant="v")
        for child in engines_of(module).values():
            if child.engine is None:
                child.engine = EngineSerializer(child._pack_engine_info())
        try:
            tt.save(module, str(tmp_path / "m.ep"), output_format="exported_program",
                    retrace=False)  # fmt: skip
        finally:
            for child in engines_of(module).values():
                if type(child.engine).__name__ == "EngineSerializer":
                    child.engine = None
    migrated = trtpack.migrate(tmp_path / "m.ep", tmp_path / "migrated.trtpack", variant="v")
    (a,), (b,) = saved.manifest.engines, migrated.manifest.engines
    assert a.whole_graph is b.whole_graph is (which == "whole")
    assert a.target == b.target

    def facts(variant):
        return [(e.name, e.member, e.abi_version, e.settings, e.outputs,
                 [(i.name, i.dtype, i.shape) for i in e.inputs]) for e in variant.engines]  # fmt: skip

    assert facts(a) == facts(b)
    assert saved.manifest.inputs == migrated.manifest.inputs
    # The engines take x_dim0 in [2, 32]: torch_tensorrt raises Dim("batch", min=1)'s min to 2
    # (torch.export's 0/1 specialization), and both routes now record that profile. The saved
    # pack keeps the program's [1, 32] and marks the engines' part of it in ranges; the .ep
    # file's own range constraints already say [2, 32].
    assert [e.inputs for e in a.engines] == [e.inputs for e in b.engines]
    assert {e.inputs[0].profile[0] for e in a.engines} == {(2, 4, 32)}
    assert saved.manifest.symbols["x_dim0"].min == 1 and a.ranges == {"x_dim0": (2, 32)}
    assert migrated.manifest.symbols["x_dim0"].min == 2 and b.ranges == {}


@pytest.mark.no_gpu
def test_load_falls_back_and_matches_eager(compiled, net_ep, tmp_path):
    model, _ = net_ep
    whole, _ = compiled
    with tt_cpu.device_queries():
        trtpack.save(whole, tmp_path / "m.trtpack")
    with pytest.warns(UserWarning) as caught:
        pack = trtpack.load(tmp_path / "m.trtpack")
    assert pack.backend == "exported_program" and "no CUDA GPU" in pack.fallback_reason
    assert "no CUDA GPU" in str(caught[0].message)
    x, bias = torch.randn(7, 8), torch.randn(7, 4)
    got, want = pack(x, bias=bias), model(x, bias=bias)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_variant_program_deserializes_up_to_the_engines(compiled, tmp_path):
    """The wiring of a partitioned variant comes back as a program whose execute_engine calls
    take the engines by name; here they get torch_tensorrt's serializable engine objects
    (building runnable engines needs a GPU)."""
    from torch_tensorrt.dynamo.runtime._TRTEngine import EngineSerializer

    from trtpack.format.container import PackReader
    from trtpack.program.serialize import load_program

    _, split = compiled
    path = tmp_path / "split.trtpack"
    with tt_cpu.device_queries():
        info = trtpack.save(split, path)
    (v,) = info.manifest.engines
    with tt_cpu.device_queries(), PackReader(path) as reader:
        stand_ins = {}
        for e in v.engines:
            trt_module = engines_of(split)[e.name.removesuffix("_engine")]
            stand_ins[e.name] = EngineSerializer(trt_module._pack_engine_info())
        ep = load_program(reader, info.manifest, ref=v.program, engines=stand_ins)
    calls = [n for n in ep.graph.nodes if "execute_engine" in str(n.target)]
    assert len(calls) == 2
    assert set(torchtrt.engine_constant_names(ep)) == {e.name for e in v.engines}


@pytest.mark.no_gpu
def test_engine_module_boundary_without_gpu(compiled, tmp_path):
    """Building the runtime engine is where a GPU is needed: the error is clean."""
    whole, _ = compiled
    trt_module = engines_of(whole)["_run_on_acc_0"]
    # torch's CUDA initialization refuses (no driver; on a machine with a driver and no GPU:
    # no CUDA GPUs): raised from torch.cuda itself, not from something before the boundary
    with pytest.raises(
        RuntimeError, match="^(Found no NVIDIA driver|No CUDA GPUs are available)"
    ) as e:
        torchtrt.engine_module(trt_module.serialized_engine, ["x", "bias"], ["output0", "output1"],
                               name="e", settings={}, device=torch.device("cuda", 0))  # fmt: skip
    assert "torch/cuda/" in str(e.traceback[-1].path)


@pytest.mark.no_gpu
def test_probe_environment_here():
    env = torchtrt.probe_environment()
    assert env.gpu is None and env.platform == "linux_x86_64"


# --- live engines: need a GPU that the engines target, and TensorRT-RTX ------------------------


LIVE_PROBLEM = rtx.gpu_problem()  # why live engines cannot run here (None: they can)


@pytest.mark.engine
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=LIVE_PROBLEM or "")
def test_live_compile_save_load_run(net_ep, tmp_path):
    model, ep = net_ep
    module = trtpack.compile(ep, min_block_size=1)
    trtpack.save(module, tmp_path / "live.trtpack")
    pack = trtpack.load(tmp_path / "live.trtpack", require_engine=True)
    assert pack.backend == "tensorrt"
    x, bias = torch.randn(5, 8, device="cuda"), torch.randn(5, 4, device="cuda")
    model = model.cuda()
    for g, w in zip(pack(x, bias=bias), model(x, bias=bias)):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)
