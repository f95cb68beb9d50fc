"""``trtpack build``: real TensorRT-RTX engines built here, on the CPU, from a pack's own
ExportedProgram (torch.onnx -> TensorRT-RTX's ONNX parser -> named compute capabilities),
added as a whole-graph variant. Running them needs an RTX-capable GPU: the live test skips
without one, saying why."""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import rtx
import torch

import trtpack
from trtpack.cli.commands import main
from trtpack.engines.plan import parse_plan
from trtpack.format.container import PackReader
from trtpack.writing.build import parse_range, parse_targets

pytest.importorskip("tensorrt_rtx")
pytest.importorskip("onnxscript")

TARGETS = ("8.6", "8.9")


def saved(exported, name, tmp_path):
    _, _, ep = exported(name)
    path = tmp_path / f"{name}.trtpack"
    trtpack.save(ep, path)
    return path


def plan_of(path, variant):
    with PackReader(path) as reader:
        return bytes(reader.read(variant.engines[0].member))


def raw(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def expected_profile(manifest, spec):
    rows = []
    for d in spec.shape:
        if isinstance(d, int):
            rows.append((d, d, d))
        else:
            s = manifest.symbols[d]
            rows.append((s.min, s.opt, s.max))
    return tuple(rows)


@pytest.fixture(scope="module")
def built_keywords(exported, tmp_path_factory):
    """The keywords model (x[batch, 6], mask[batch, 6], bias[6]), built once for 8.6 and 8.9."""
    path = saved(exported, "keywords", tmp_path_factory.mktemp("build"))
    before = raw(path)
    info = trtpack.build(path, TARGETS)
    return path, before, info


def test_build_for_two_targets(built_keywords):
    path, before, info = built_keywords
    m = info.manifest
    (v,) = m.engines
    assert v.name == "rtx_sm86_sm89" and v.whole_graph and v.program is None
    assert v.target.flavor == "tensorrt_rtx" and v.target.compute_capabilities == TARGETS
    assert v.target.trt_version == __import__("tensorrt_rtx").__version__
    assert not v.target.future_gpus and v.ranges == {}
    # the plan's own header names the GPUs asked for
    header = parse_plan(plan_of(path, v))
    assert header.flavor == "tensorrt_rtx" and header.compute_capabilities == TARGETS
    # bindings: the manifest's tensor inputs and outputs, by name, with the manifest's profile
    (engine,) = v.engines
    tensors = [i for i in m.inputs if i.is_tensor]
    assert [(b.name, b.dtype, b.shape) for b in engine.inputs] == [
        (i.name, i.dtype, i.shape) for i in tensors
    ]
    assert [b.profile for b in engine.inputs] == [expected_profile(m, i) for i in tensors]
    assert engine.inputs[0].profile == ((1, 4, 64), (6, 6, 6))
    assert [(b.name, b.dtype, b.shape) for b in engine.outputs] == [
        (o.name, o.dtype, o.shape) for o in m.outputs
    ]
    assert engine.settings["build"]["compute_capabilities"] == list(TARGETS)
    assert engine.settings["build"]["route"].startswith("torch.onnx.export(dynamo=True)")
    # the other members, byte for byte
    after = raw(path)
    assert {n: b for n, b in after.items() if n.startswith("program/")} == {
        n: b for n, b in before.items() if n.startswith("program/")
    }
    assert trtpack.verify(path).digest == info.digest


@pytest.mark.no_gpu
def test_built_pack_loads_on_cpu_falling_back_to_the_program(built_keywords, exported):
    path, _, _ = built_keywords
    case, model, _ = exported("keywords")
    with pytest.warns(UserWarning, match="running the ExportedProgram"):
        pack = trtpack.load(path)
    assert pack.backend == "exported_program"
    assert pack.fallback_reason == (
        "no engine variant can run here (rtx_sm86_sm89: no CUDA GPU on this machine)"
    )
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        torch.testing.assert_close(pack(*args, **kwargs), model(*args, **kwargs))


def test_building_twice_is_refused_by_name(built_keywords, tmp_path):
    path, _, info = built_keywords
    with pytest.raises(
        trtpack.EngineError, match="already has an engine variant named 'rtx_sm86_sm89'"
    ) as e:
        trtpack.build(path, ("8.9", "8.6"))  # the same targets, in another order
    assert e.value.field == "variant"
    assert trtpack.inspect(path).digest == info.digest  # untouched
    # under another name it is a second variant, written elsewhere
    out = tmp_path / "two.trtpack"
    two = trtpack.build(path, "sm89", variant="ada", out=out)
    assert [v.name for v in two.manifest.engines] == ["rtx_sm86_sm89", "ada"]
    assert two.manifest.engines[1].target.compute_capabilities == ("8.9",)
    assert trtpack.inspect(path).digest == info.digest
    with pytest.raises(trtpack.EngineError, match="named 'ada'"):
        trtpack.build(out, "8.0", variant="ada")


def test_shared_dynamic_batch(exported, tmp_path):
    """x[batch, 2] and y[batch, 7] share one symbol: one profile row for both."""
    path = saved(exported, "shared_dim", tmp_path)
    info = trtpack.build(path, TARGETS)
    m = info.manifest
    (engine,) = m.engines[0].engines
    assert [b.shape for b in engine.inputs] == [("batch", 2), ("batch", 7)]
    assert [b.profile for b in engine.inputs] == [((1, 5, 64), (2, 2, 2)), ((1, 5, 64), (7, 7, 7))]
    assert parse_plan(plan_of(path, m.engines[0])).compute_capabilities == TARGETS
    trtpack.verify(path)


def test_derived_dims_constants_and_dtypes(exported, tmp_path):
    """2*n and n+1 dims (a program torch's deserializer reads back with ranges that the
    exporter trips on), specialized constants (not engine inputs), and fp16/bf16/int64/bool."""
    m = trtpack.build(saved(exported, "derived", tmp_path), "8.9").manifest
    (engine,) = m.engines[0].engines
    assert [(b.shape, b.profile) for b in engine.inputs] == [
        (("n", 3), ((2, 4, 32), (3, 3, 3))),
        (("2*n", 3), ((4, 8, 64), (3, 3, 3))),
        (("n+1",), ((3, 5, 33),)),
    ]
    m = trtpack.build(saved(exported, "scalars", tmp_path), "8.9").manifest
    assert [b.name for b in m.engines[0].engines[0].inputs] == ["x"]  # n, alpha, ... are constants
    assert len([i for i in m.inputs if not i.is_tensor]) == 5
    m = trtpack.build(saved(exported, "dtypes", tmp_path), "8.9").manifest
    (engine,) = m.engines[0].engines
    assert [b.dtype for b in engine.inputs] == ["float16", "bfloat16", "int64", "bool"]
    assert [b.dtype for b in engine.outputs] == ["float32", "float16", "bfloat16"]


def test_unbounded_symbols_are_refused_and_can_be_bounded(exported, tmp_path):
    path = saved(exported, "guarded", tmp_path)  # Dim.AUTO: [2, inf]
    with pytest.raises(trtpack.EngineError) as e:
        trtpack.build(path, TARGETS)
    assert str(e.value) == (
        f"{path}: symbols without an upper bound: 'x_dim0' (x dim 0): [2, inf]; 'x_dim1' (x dim 1, "
        "y dim 1): [2, inf]; 'y_dim0' (y dim 0): [2, inf]; a TensorRT engine's profile needs "
        "one. Bound them for this engine with ranges={'x_dim0': (2, MAX), 'x_dim1': (2, MAX), "
        "'y_dim0': (2, MAX)} (--range x_dim0=2..MAX --range x_dim1=2..MAX --range "
        "y_dim0=2..MAX), or export with torch.export.Dim(..., max=MAX)"
    )
    assert e.value.got == ["x_dim0", "x_dim1", "y_dim0"]
    assert not trtpack.inspect(path).manifest.engines
    bounds = {"x_dim0": (2, 16), "x_dim1": (2, 32, 8), "y_dim0": (2, 40)}
    v = trtpack.build(path, "8.9", ranges=bounds).manifest.engines[0]
    assert v.ranges == {"x_dim0": (2, 16), "x_dim1": (2, 32), "y_dim0": (2, 40)}
    assert [b.profile for b in v.engines[0].inputs] == [
        ((2, 4, 16), (2, 8, 32)),
        ((2, 9, 40), (2, 8, 32)),
    ]
    with pytest.raises(trtpack.RangeOverrideError, match="widens the exported range"):
        trtpack.build(path, "8.9", ranges={"x_dim0": (1, 16)})


class _Op(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


@pytest.mark.parametrize(
    "f, message",
    [
        # no ONNX translation: the exporter's own reason
        (
            lambda x: torch.linalg.cholesky(x @ x.T + torch.eye(4)),
            r"cannot be exported to ONNX \(torch.onnx, dynamo exporter\): DispatchError: No ONNX "
            r"function found for <OpOverload\(op='aten.linalg_cholesky_ex'",
        ),
        # ONNX has it, TensorRT-RTX does not: the parser's errors
        (
            lambda x: torch.fft.rfft(x).abs(),
            r"TensorRT-RTX's ONNX parser cannot take the program: node \S+ \(DFT\): "
            r"\w+: Op type DFT is not supported in TensorRT-RTX",
        ),
        (lambda x: torch.linalg.det(x), r"parser cannot take .*\(Det\): UNSUPPORTED_NODE"),
        # a dtype TensorRT-RTX has no type for
        (
            lambda x: x.double() * 2,
            r"output 'output' is float64, which TensorRT-RTX has no type for",
        ),
    ],
    ids=["exporter", "parser_dft", "parser_det", "float64"],
)
def test_what_cannot_be_built_is_refused_with_the_reason(f, message, tmp_path):
    path = tmp_path / "op.trtpack"
    trtpack.save(torch.export.export(_Op(f), (torch.randn(4, 4),)), path)
    digest = trtpack.inspect(path).digest
    with pytest.raises(trtpack.EngineError, match=message):
        trtpack.build(path, "8.9")
    assert trtpack.inspect(path).digest == digest


def test_inputs_and_targets_that_cannot_be_built(exported, tmp_path):
    with pytest.raises(trtpack.EngineError, match=r"input 'n' \(args\[1\]\) is a dynamic int"):
        trtpack.build(saved(exported, "dynamic_int", tmp_path), "8.9")
    path = saved(exported, "keywords", tmp_path)
    with pytest.raises(
        trtpack.EngineError,
        match=r"tensorrt_rtx \S+ cannot build for compute capability 9.0 \(it builds for 7.5, "
        r"8.0, 8.6, 8.9, 12.0",
    ):
        trtpack.build(path, "8.9,9.0")
    with pytest.raises(trtpack.EngineError, match="target 'ampere' is not a compute capability"):
        trtpack.build(path, "ampere")
    assert not trtpack.inspect(path).manifest.engines


def test_parse_targets_and_ranges():
    assert parse_targets("8.9,8.6") == ("8.6", "8.9")
    assert parse_targets(["sm89", "SM120", "86", " 8.6 "]) == ("8.6", "8.9", "12.0")
    assert parse_range("x_dim0=1..64@8") == ("x_dim0", trtpack.Range(1, 64, 8))
    assert parse_range("b=2..3") == ("b", trtpack.Range(2, 3, None))
    with pytest.raises(trtpack.RangeOverrideError, match="expected SYMBOL=MIN..MAX"):
        parse_range("b=2-3")


def test_missing_tensorrt_rtx_names_the_extra(monkeypatch, small_pack):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # import tensorrt_rtx fails
    with pytest.raises(trtpack.MissingDependencyError, match=r"pip install 'trtpack\[rtx\]'"):
        trtpack.build(small_pack, "8.9")


def test_cli_build(exported, tmp_path, capsys):
    path = saved(exported, "keywords", tmp_path)
    out = tmp_path / "out.trtpack"
    assert main(["build", str(path), "--target", "8.6,8.9", "-o", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    info = trtpack.inspect(out)
    assert data["path"] == str(out) and data["digest"] == info.digest
    assert data["variant"] == "rtx_sm86_sm89" and data["variants"] == ["rtx_sm86_sm89"]
    assert data["compute_capabilities"] == ["8.6", "8.9"] and data["flavor"] == "tensorrt_rtx"
    assert data["engine_bytes"] == info.manifest.members["engines/rtx_sm86_sm89/engine.plan"].size
    assert data["seconds"] > 0
    assert not trtpack.inspect(path).manifest.engines  # -o: the input is left alone
    # again: the name is taken; -o exists without --force
    assert main(["build", str(out), "--target", "8.6", "--target", "8.9"]) == 1
    assert "already has an engine variant named 'rtx_sm86_sm89'; pick another name with " \
        "--variant" in capsys.readouterr().err  # fmt: skip
    assert main(["build", str(path), "--target", "8.9", "-o", str(out)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    # in place, a named variant, a --range; the human line
    assert main(["build", str(path), "--target", "12.0", "--variant", "blackwell",
                 "--range", "batch=1..32@8"]) == 0  # fmt: skip
    line = capsys.readouterr().out
    assert line.startswith(f"{path}: built variant blackwell (TensorRT-RTX ")
    assert "compute capability 12.0" in line
    (v,) = trtpack.inspect(path).manifest.engines
    assert v.ranges == {"batch": (1, 32)} and v.engines[0].inputs[0].profile[0] == (1, 8, 32)
    assert main(["build", str(path), "--target", "8.9", "--range", "batch=1-2"]) == 1


LIVE_PROBLEM = rtx.gpu_problem(
    torch_tensorrt=True
)  # why live engines cannot run here (None: they can)


@pytest.mark.engine
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=LIVE_PROBLEM or "")
def test_live_build_load_run(exported, tmp_path):
    """Built here for this GPU, then run on it and compared with eager."""
    case, model, _ = exported("keywords")
    cc = ".".join(map(str, torch.cuda.get_device_capability()))
    path = saved(exported, "keywords", tmp_path)
    trtpack.build(path, cc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        pack = trtpack.load(path, require_engine=True)
    assert pack.backend == "tensorrt"
    model = model.cuda()
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        args = tuple(a.cuda() for a in args)
        kwargs = {k: v.cuda() for k, v in kwargs.items()}
        torch.testing.assert_close(pack(*args, **kwargs), model(*args, **kwargs),
                                   rtol=1e-3, atol=1e-3)  # fmt: skip


def test_tensorrt_rtx_and_onnx_are_imported_in_one_module_only():
    """engines/build.py is the only module that imports tensorrt_rtx, torch.onnx or onnxscript
    (lazily or not); the onnx package is imported there (building) and in checks/audit.py only
    (reading a user's .onnx file, external data never loaded)."""
    import ast
    from pathlib import Path

    root = Path(trtpack.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.onnx":
                names = ["torch.onnx"]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "__import__":
                names = ["onnx/onnxscript"]  # _import_onnx_exporter
            for name in names:
                if name.split(".")[0] in ("tensorrt_rtx", "onnx", "onnxscript") or name.startswith(
                    ("torch.onnx", "onnx/")
                ):
                    found.add((str(path.relative_to(root)), name.split(".")[0]))
    assert {where for where, _ in found} == {"engines/build.py", "checks/audit.py"}
    assert {name for where, name in found if where == "checks/audit.py"} == {"onnx"}


class _Relu(torch.nn.Module):
    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


class _Scaled(_Relu):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * 2


def _two_entry_pack(tmp_path):
    """Two stateless entry points over one Linear (format 1.4): ``forward`` and ``scaled``."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    batch = torch.export.Dim("batch", min=1, max=8)
    x = torch.randn(2, 6)
    programs = {
        name: torch.export.export(cls(lin), (x,), dynamic_shapes=({0: batch},))
        for name, cls in (("forward", _Relu), ("scaled", _Scaled))
    }
    path = tmp_path / "two.trtpack"
    trtpack.save(programs, path)
    return path, lin


def test_build_and_add_engine_name_the_entry_point(tmp_path, capsys):
    path, lin = _two_entry_pack(tmp_path)
    out = tmp_path / "built.trtpack"
    args = ["build", str(path), "--entry-point", "scaled", "--target", "8.6", "-o", str(out)]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == "rtx_sm86"
    m = trtpack.inspect(out).manifest
    assert m.engines == () and m.entry_point_names == ("forward", "scaled")
    (v,) = m.entry_points["scaled"].engines
    member = v.engines[0].member
    assert member.startswith("entry_points/scaled/engines/rtx_sm86/")
    with PackReader(out) as reader:
        plan = bytes(reader.read(member))
    header = parse_plan(plan)
    assert header.flavor == "tensorrt_rtx" and header.compute_capabilities == ("8.6",)
    # the default entry point built too: the other entry point and its variant are kept
    trtpack.build(out, "8.9")
    m = trtpack.inspect(out).manifest
    assert [v.name for v in m.engines] == ["rtx_sm89"]
    assert [v.name for v in m.entry_points["scaled"].engines] == ["rtx_sm86"]
    # the plan as a bare engine of the same entry point of another pack (Python API)
    trtpack.add_engine(path, plan, entry_point="scaled", variant="bare")
    m = trtpack.inspect(path).manifest
    assert m.engines == () and [v.name for v in m.entry_points["scaled"].engines] == ["bare"]
    assert (
        m.entry_points["scaled"]
        .engines[0]
        .engines[0]
        .member.startswith("entry_points/scaled/engines/bare/")
    )
    # no GPU here: each entry point runs its program, and still computes what it did
    x = torch.randn(3, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pack = trtpack.load(out)
    with torch.no_grad():
        assert torch.allclose(pack["scaled"](x), lin(x) * 2)
        assert torch.allclose(pack["forward"](x), torch.relu(lin(x)))
    assert main(["build", str(path), "--entry-point", "nope", "--target", "8.6"]) == 1
    assert "no entry point 'nope'" in capsys.readouterr().err
    # removed from its entry point: the other entry point's variant and both programs stay
    assert main(["remove-engine", str(out), "rtx_sm86", "--entry-point", "scaled"]) == 0
    m = trtpack.inspect(out).manifest
    assert m.entry_points["scaled"].engines == () and [v.name for v in m.engines] == ["rtx_sm89"]
    assert not any(n.startswith("entry_points/scaled/engines/") for n in m.members)
    trtpack.remove_engine(out, "rtx_sm89")
    m = trtpack.inspect(out).manifest
    assert m.engines == () and m.entry_point_names == ("forward", "scaled")
    assert set(m.members) == set(trtpack.inspect(path).manifest.members) - {
        n for n in trtpack.inspect(path).manifest.members if "/engines/" in n
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pack = trtpack.load(out)
    with torch.no_grad():
        assert torch.allclose(pack["scaled"](x), lin(x) * 2)


def test_an_engine_for_an_entry_point_that_writes_state_is_refused(tmp_path):
    from trtpack.errors import EngineError

    src = Path(__file__).parent / "fixtures" / "v1.4" / "llama_prefill_decode.trtpack"
    path = tmp_path / "llm.trtpack"
    path.write_bytes(src.read_bytes())
    for name in ("decode", "prefill"):
        with pytest.raises(EngineError, match=f"entry point '{name}' writes state in place"):
            trtpack.build(path, "8.6", entry_point=name)
    with pytest.raises(EngineError, match="writes state in place"):
        trtpack.add_engine(path, b"vtrt" + bytes(64), entry_point="decode")
    assert path.read_bytes() == src.read_bytes()  # refused before anything was written


def test_the_low_memory_route_builds_the_plan_the_parser_makes_from_the_file(tmp_path):
    """build hands the parser the weights from trtpack's own map of the ONNX side file (whose
    pages a thread drops while the builder runs) and streams the plan to a file (issue 23.7):
    the plan is byte for byte the one TensorRT-RTX's parse_from_file and
    build_serialized_network make of the same ONNX file."""
    import tensorrt_rtx as trt

    from trtpack.engines import build as engine_build
    from trtpack.reading import open_pack
    from trtpack.writing.build import _program

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 384), torch.nn.ReLU(),
                                torch.nn.Linear(384, 128))  # fmt: skip
    path = tmp_path / "mlp.trtpack"
    trtpack.save(torch.export.export(model, (torch.randn(2, 384),)), path, progress=False)
    info = trtpack.build(path, "8.9", progress=False)
    built = plan_of(path, info.manifest.engines[0])
    # the same program exported the same way, then the parser reads the files itself
    onnx_path = tmp_path / "onnx" / "model.onnx"
    onnx_path.parent.mkdir()
    with open_pack(path) as (reader, pack):
        m = pack.manifest
        engine_build._export_onnx(_program(reader, m, m), onnx_path,
                                  [i.name for i in m.inputs], [o.name for o in m.outputs],
                                  "test")  # fmt: skip
    with engine_build._mapped_weights(onnx_path) as weights:
        assert len(weights.initializers) == 4  # every weight and bias handed over by trtpack
    log = engine_build._logger_class(trt)()
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    assert parser.parse_from_file(str(onnx_path)), log.errors
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    plan = builder.build_serialized_network(network, config)
    assert bytes(memoryview(plan)) == built


@pytest.mark.slow
def test_build_peak_memory_grows_by_less_than_one_and_a_half_times_the_weights():
    """Issue 23.7: trtpack.build's peak resident memory (VmHWM over the imports, file pages
    included) grows by about 1.0x each added byte of weights (3.0x before: the parser's and
    the builder's copies and the plan's bytes; 2.0x with the plan streamed but the weights'
    pages kept), measured by tools/bench_memory.py --build on two MLPs in fresh processes."""
    import importlib.util
    import tempfile

    spec = importlib.util.spec_from_file_location(
        "bench_memory", Path(__file__).resolve().parent.parent / "tools" / "bench_memory.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with tempfile.TemporaryDirectory() as d:
        # both over 64 MiB: the plan reaches the writer in pieces of up to 64 MiB, each
        # copied into a Python bytes object, which a smaller model's plan would not fill
        small, big = (bench.measure_build(mb, d, "8.9") for mb in (72, 168))
    added = big["weights"] - small["weights"]
    peak = [max(s["peak"] for s in r["steps"]) for r in (small, big)]
    slope = (peak[1] - peak[0]) / added
    assert slope < 1.5, f"the build's peak grows {slope:.2f}x the added weights: {small} {big}"
    # the plan is copied into the pack from its file piece by piece, never held whole
    write = [next(s["peak"] for s in r["steps"] if s["step"] == "write the pack")
             for r in (small, big)]  # fmt: skip
    assert (write[1] - write[0]) / added < 0.5, (small, big)
