"""Triton model repositories: the config parses with Triton's own ModelConfig protobuf (a
misspelled or misplaced field would fail). TensorRT backend: names are the engine's bindings,
plans per GPU. Python backend: names, dtypes and dims from the manifest, the pack and model.py
beside the config, run by a real Triton server (the one in the nvidia-pytriton wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import rtx
import torch
from servers import free_port

import trtpack
from trtpack.integrations.triton import export_triton

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

FIXTURES = Path(__file__).parent / "fixtures"


def parse(config: Path):
    return text_format.Parse(config.read_text(), pb2.ModelConfig())


@pytest.fixture(scope="module")
def plans():
    pytest.importorskip("tensorrt_rtx")
    return {"sm80": rtx.keywords_plan(("8.0",)), "ada": rtx.keywords_plan(("8.6", "8.9"))}


@pytest.fixture
def engine_pack(tmp_path, plans):
    path = tmp_path / "detector.trtpack"
    path.write_bytes((FIXTURES / "v1.0" / "keywords.trtpack").read_bytes())
    trtpack.add_engine(path, plans["sm80"])
    return path


def export(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "these are TensorRT-RTX plans" (the only ones here)
        return export_triton(*args, **kwargs)


def test_one_target(engine_pack, tmp_path, plans):
    model = export(engine_pack, tmp_path / "repo")
    assert model.path == tmp_path / "repo" / "detector"
    config = parse(model.path / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == ("detector", "tensorrt_plan", 0)
    assert [(i.name, pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("x", "TYPE_FP32", [-1, 6]), ("mask", "TYPE_FP32", [-1, 6]), ("bias", "TYPE_FP32", [6])
    ]  # fmt: skip
    assert [(o.name, list(o.dims)) for o in config.output] == [("output0", [-1, 6])]
    assert config.default_model_filename == "model.plan"
    assert (model.path / "1" / "model.plan").read_bytes() == plans["sm80"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["detector"]  # no leftovers


def test_one_plan_per_compute_capability(engine_pack, tmp_path, plans):
    trtpack.add_engine(engine_pack, plans["ada"], variant="ada")
    model = export(engine_pack, tmp_path / "repo", name="det")
    config = parse(model.path / "config.pbtxt")
    assert dict(config.cc_model_filenames) == {
        "8.0": "model_rtx_sm80.plan", "8.6": "model_ada.plan", "8.9": "model_ada.plan"
    }  # fmt: skip
    assert (model.path / "1" / "model_ada.plan").read_bytes() == plans["ada"]
    assert (model.path / "1" / "model_rtx_sm80.plan").read_bytes() == plans["sm80"]


def test_max_batch_size(engine_pack, tmp_path):
    with pytest.raises(
        trtpack.RegistryError, match=r"first dim on every input and output; 'bias' is \[6\]"
    ):
        export(engine_pack, tmp_path / "repo", max_batch_size=8)
    pack = tmp_path / "batched.trtpack"
    trtpack.migrate(FIXTURES / "v0" / "engine" / "keywords.plan", pack,
                    inputs=["x:float32[batch=1..64@4,6]", "mask:float32[batch,6]"],
                    outputs=["output0:float32[batch,6]"])  # fmt: skip
    model = export(pack, tmp_path / "repo", max_batch_size=16)
    config = parse(model.path / "config.pbtxt")
    assert config.max_batch_size == 16
    assert [list(i.dims) for i in config.input] == [[6], [6]] and list(config.output[0].dims) == [6]
    with pytest.raises(
        trtpack.RegistryError,
        match=r"take batch in \[1, 64\], which does not cover batches 1..128",
    ):
        export(pack, tmp_path / "repo2", max_batch_size=128)


def test_refusals_write_nothing(engine_pack, tmp_path):
    repo = tmp_path / "repo"
    with pytest.raises(trtpack.RegistryError, match="holds no TensorRT engine.*python backend"):
        export(FIXTURES / "v1.0" / "keywords.trtpack", repo, backend="tensorrt")
    partitioned = tmp_path / "partitioned.trtpack"
    trtpack.migrate(FIXTURES / "v0" / "torch_tensorrt" / "net_partitioned.ep", partitioned)
    with pytest.raises(
        trtpack.RegistryError,
        match=r"no whole-graph engine \(rtx_sm80_plus \(2 engines\)\).*PyTorch-fallback",
    ):
        export(partitioned, repo, backend="tensorrt")
    assert not repo.exists() or list(repo.iterdir()) == []
    export(engine_pack, repo)
    config = (repo / "detector" / "config.pbtxt").read_text()
    with pytest.raises(trtpack.OutputExistsError, match="exists; pass overwrite=True"):
        export(engine_pack, repo)
    assert (repo / "detector" / "config.pbtxt").read_text() == config
    export(engine_pack, repo, overwrite=True)
    assert sorted(p.name for p in repo.iterdir()) == ["detector"]


def test_the_protobuf_catches_mistakes():
    """Why parsing with ModelConfig is a real check."""
    for bad in ['platfrom: "tensorrt_plan"', 'input { name: "x" data_type: TYPE_FLOAT32 }',
                'max_batch_size: "eight"', 'input { dims: [-1] name: "x" } data_type: TYPE_FP32']:  # fmt: skip
        with pytest.raises(text_format.ParseError):
            text_format.Parse(bad, pb2.ModelConfig())


def test_rtx_plans_are_flagged(engine_pack, tmp_path):
    with pytest.warns(
        UserWarning, match="Triton's tensorrt_plan backend runs standard TensorRT plans"
    ):
        export_triton(engine_pack, tmp_path / "repo")


def test_cli(engine_pack, tmp_path):
    r = subprocess.run([sys.executable, "-m", "trtpack", "export-triton", str(engine_pack),
                        str(tmp_path / "repo"), "--name", "detector"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "detector: config.pbtxt and 1/ (default: model.plan)" in r.stdout
    parse(tmp_path / "repo" / "detector" / "config.pbtxt")


def test_the_default_backend(engine_pack, tmp_path):
    """tensorrt where a whole-graph engine exists, else python (a pack without engines, or
    with only partitioned ones, is served by the python backend instead of refused)."""
    assert export(engine_pack, tmp_path / "a").backend == "tensorrt"
    partitioned = tmp_path / "partitioned.trtpack"
    trtpack.migrate(FIXTURES / "v0" / "torch_tensorrt" / "net_partitioned.ep", partitioned)
    model = export(partitioned, tmp_path / "b")
    assert model.backend == "python" and parse(model.path / "config.pbtxt").backend == "python"
    model = export(engine_pack, tmp_path / "c", backend="python")  # the pack, engines and all
    assert (model.path / "1" / "model.trtpack").read_bytes() == engine_pack.read_bytes()


# --- the python backend: config.pbtxt from the manifest ------------------------------------


@pytest.fixture(scope="session")
def case_pack(tmp_path_factory, exported):
    """A saved pack of a tests/models.py case: (path, eager model)."""
    made: dict = {}

    def get(name: str):
        if name not in made:
            _, model, ep = exported(name)
            path = tmp_path_factory.mktemp("cases") / f"{name}.trtpack"
            trtpack.save(ep, path)
            made[name] = (path, model)
        return made[name]

    return get


def io(config):
    """(name, type, dims) of each input and output."""

    def rows(items):
        return [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in items]

    return rows(config.input), rows(config.output)


def test_python_model_directory(case_pack, tmp_path):
    path, _ = case_pack("keywords")
    site = tmp_path / "site-packages"
    model = export_triton(path, tmp_path / "repo", name="kw", backend="python", site_dirs=[site])
    assert model.backend == "python" and model.plans == {}
    assert sorted(p.name for p in model.path.rglob("*")) == [
        "1", "config.pbtxt", "model.py", "model.trtpack"
    ]  # fmt: skip
    config = parse(model.path / "config.pbtxt")
    assert (config.name, config.backend, config.platform, config.max_batch_size) == (
        "kw", "python", "", 0
    )  # fmt: skip
    assert io(config) == (
        [("x", "TYPE_FP32", [-1, 6]), ("mask", "TYPE_FP32", [-1, 6]), ("bias", "TYPE_FP32", [6])],
        [("output", "TYPE_FP32", [-1, 6])],
    )
    assert config.parameters["trtpack_pack"].string_value == "model.trtpack"
    assert not config.HasField("dynamic_batching") and not config.instance_group
    assert (model.path / "1" / "model.trtpack").read_bytes() == path.read_bytes()
    code = (model.path / "1" / "model.py").read_text()
    assert f"SITE_DIRS: list[str] = {[str(site)]!r}" in code
    # model.py is triton_model.py with that one line filled in
    from trtpack.integrations import triton as tri

    assert code == tri._MODEL_CODE.read_text().replace(
        tri.SITE_DIRS_LINE, f"SITE_DIRS: list[str] = {[str(site)]!r}  # export-triton --site-dir\n"
    )
    assert "as_numpy" not in code and "pb_utils.Tensor(" not in code  # DLPack only


def test_python_model_imports_from_the_exporting_environment_by_default(case_pack, tmp_path):
    """No site_dirs: model.py records the folders this process imports trtpack, torch and
    numpy from, and those alone let an isolated interpreter (as Triton's stub runs: no
    PYTHONPATH, no site) import all three from them."""
    import numpy

    path, _ = case_pack("keywords")
    model = export_triton(path, tmp_path / "repo", name="kw", backend="python")
    homes = [str(Path(m.__file__).resolve().parent.parent) for m in (trtpack, torch, numpy)]
    assert list(model.site_dirs) == list(dict.fromkeys(homes))
    code = (model.path / "1" / "model.py").read_text()
    assert f"SITE_DIRS: list[str] = {list(model.site_dirs)!r}" in code
    probe = (
        "import sys, runpy\n"
        "ns = runpy.run_path(sys.argv[1], run_name='model')\n"  # model.py adds its SITE_DIRS
        "import numpy, torch, trtpack\n"
        "print(trtpack.__file__, torch.__file__, numpy.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(model.path / "1" / "model.py")],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [trtpack.__file__, torch.__file__, numpy.__file__]
    # without the recorded folders, the same isolated interpreter has none of them
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import numpy"],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert bare.returncode != 0


def test_python_default_refuses_without_torch_here(case_pack, tmp_path, monkeypatch):
    path, _ = case_pack("keywords")
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the torch-free install
    with pytest.raises(trtpack.MissingDependencyError, match=r"torch is not installed.*--site-dir"):
        export_triton(path, tmp_path / "repo", name="kw", backend="python")
    assert not (tmp_path / "repo" / "kw").exists()
    model = export_triton(path, tmp_path / "repo", name="kw", backend="python", site_dirs=())
    assert model.site_dirs == ()  # none recorded: the server's TRTPACK_SITE_DIRS


def test_python_dtypes(case_pack, tmp_path):
    config = parse(export_triton(case_pack("dtypes")[0], tmp_path, backend="python").path
                   / "config.pbtxt")  # fmt: skip
    assert io(config) == (
        [("h", "TYPE_FP16", [-1, 3]), ("b", "TYPE_BF16", [-1, 3]), ("idx", "TYPE_INT64", [2]),
         ("keep", "TYPE_BOOL", [-1])],
        [("output_0", "TYPE_FP32", [2, 3]), ("output_1", "TYPE_FP16", [-1, 3]),
         ("output_2", "TYPE_BF16", [-1, 3])],
    )  # fmt: skip


def test_python_inputs_that_are_not_tensors(case_pack, tmp_path):
    """Constants torch.export specialized (n=3, alpha, flag, mode, None) are not Triton inputs;
    a dynamic int is one, of dims [1]; a 0-d output has dims [1]."""
    scalars = parse(export_triton(case_pack("scalars")[0], tmp_path).path / "config.pbtxt")
    assert io(scalars) == ([("x", "TYPE_FP32", [2, 3])], [("output", "TYPE_FP32", [2, 3])])
    dyn = parse(export_triton(case_pack("dynamic_int")[0], tmp_path).path / "config.pbtxt")
    assert io(dyn) == (
        [("x", "TYPE_FP32", [-1, 10]), ("n", "TYPE_INT64", [1])], [("output", "TYPE_FP32", [-1, -1])]
    )  # fmt: skip
    many = parse(export_triton(case_pack("many_outputs")[0], tmp_path).path / "config.pbtxt")
    assert io(many)[1] == [
        ("output_0.sum", "TYPE_FP32", [-1]), ("output_0.parts.0", "TYPE_FP32", [-1, 4]),
        ("output_0.parts.1", "TYPE_FP32", [-1, 4]), ("output_1", "TYPE_FP32", [1]),
        ("output_2.low", "TYPE_FP32", [-1]), ("output_2.high", "TYPE_FP32", [-1, 4]),
    ]  # fmt: skip
    derived = parse(export_triton(case_pack("derived")[0], tmp_path).path / "config.pbtxt")
    assert io(derived)[0] == [("x", "TYPE_FP32", [-1, 3]), ("y", "TYPE_FP32", [-1, 3]),
                              ("z", "TYPE_FP32", [-1])]  # fmt: skip


def test_python_max_batch_size(case_pack, tmp_path):
    """max_batch_size > 0 only where every input and output starts with the same dynamic
    symbol, whose range covers 1..max_batch_size; dims then leave it out."""
    one = export_triton(case_pack("one_tensor")[0], tmp_path / "a", max_batch_size=16)
    config = parse(one.path / "config.pbtxt")
    assert config.max_batch_size == 16
    assert io(config) == ([("x", "TYPE_FP32", [8])], [("output", "TYPE_FP32", [4])])
    shared = parse(export_triton(case_pack("shared_dim")[0], tmp_path / "b", max_batch_size=64)
                   .path / "config.pbtxt")  # fmt: skip
    assert io(shared) == (
        [("x", "TYPE_FP32", [2]), ("y", "TYPE_FP32", [7])], [("output", "TYPE_FP32", [1])]
    )  # fmt: skip
    # Triton refuses empty dims: [batch] is dims [1] reshaped to [] (the model sees [batch])
    assert shared.output[0].HasField("reshape") and not shared.input[0].HasField("reshape")
    assert list(shared.output[0].reshape.shape) == []
    refusals = [
        ("keywords", 8, r"a dynamic first dim on every input and output; 'bias' is \[6\]"),
        ("one_tensor", 65, r"takes x_dim0 in \[1, 64\], which does not cover batches 1..65"),
        ("derived", 4, r"dynamic first dim on every input and output; 'y' is \['2\*x_dim0', 3\]"),
        ("dynamic_int", 4, r"every input to be a tensor .*; 'n' is a dynamic int"),
        ("many_outputs", 4, r"'output_1' is \[\]"),
        ("positional", 4, r"'a' is \[3, 5\]"),
    ]
    for name, size, message in refusals:
        with pytest.raises(trtpack.RegistryError, match=message):
            export_triton(case_pack(name)[0], tmp_path / "c", max_batch_size=size)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_scheduling_options(case_pack, tmp_path):
    path = case_pack("one_tensor")[0]
    model = export_triton(path, tmp_path, max_batch_size=8, dynamic_batching=True,
                          instances=2, instance_kind="KIND_CPU")  # fmt: skip
    config = parse(model.path / "config.pbtxt")
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] == [
        (2, "KIND_CPU")
    ]  # fmt: skip
    model = export_triton(path, tmp_path, max_batch_size=8, max_queue_delay_us=500,
                          instance_kind="KIND_GPU", overwrite=True)  # fmt: skip
    config = parse(model.path / "config.pbtxt")
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 1)]  # KIND_GPU
    for kwargs, message in [
        ({"dynamic_batching": True}, "dynamic batching needs max_batch_size > 0"),
        ({"instances": 0}, "instances must be >= 1, not 0"),
        ({"instance_kind": "KIND_TPU"}, "instance_kind must be one of KIND_AUTO, KIND_CPU"),
        ({"backend": "onnx"}, "backend must be one of tensorrt, python, not 'onnx'"),
        ({"max_batch_size": -1}, "max_batch_size must be >= 0"),
    ]:
        with pytest.raises(trtpack.RegistryError, match=message):
            export_triton(path, tmp_path / "x", **kwargs)


def test_tensorrt_backend_refuses_python_options(engine_pack, tmp_path):
    with pytest.raises(trtpack.RegistryError, match="site_dirs are for the python backend"):
        export(engine_pack, tmp_path, site_dirs=["/somewhere"])
    with pytest.raises(trtpack.RegistryError, match="runs on GPUs, not KIND_CPU"):
        export(engine_pack, tmp_path, instance_kind="KIND_CPU")
    config = parse(export(engine_pack, tmp_path, instances=2).path / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.instance_group[0].count == 2


def test_python_cli(case_pack, tmp_path):
    path, _ = case_pack("one_tensor")
    r = subprocess.run([sys.executable, "-m", "trtpack", "export-triton", str(path),
                        str(tmp_path / "repo"), "--name", "one", "--backend", "python",
                        "--max-batch-size", "16", "--max-queue-delay-us", "100",
                        "--instances", "2", "--instance-kind", "cpu",
                        "--site-dir", str(tmp_path / "a"), "--site-dir", str(tmp_path / "b")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith(
        "one: config.pbtxt and 1/ (python backend: model.py, model.trtpack)"
    )
    assert r.stdout.splitlines()[1] == (
        f"  imports trtpack, torch and numpy from: {tmp_path / 'a'}, {tmp_path / 'b'}"
    )
    config = parse(tmp_path / "repo" / "one" / "config.pbtxt")
    assert (config.backend, config.max_batch_size, config.instance_group[0].count) == (
        "python",
        16,
        2,
    )
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    code = (tmp_path / "repo" / "one" / "1" / "model.py").read_text()
    assert f"SITE_DIRS: list[str] = {[str(tmp_path / 'a'), str(tmp_path / 'b')]!r}" in code
    r = subprocess.run([sys.executable, "-m", "trtpack", "export-triton", str(path),
                        str(tmp_path / "repo2"), "--dynamic-batching"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "dynamic batching needs max_batch_size > 0" in r.stderr
    assert not (tmp_path / "repo2" / "one_tensor").exists()


# --- model.py without a server: a stand-in for the stub's triton_python_backend_utils -------


class FakeTensor:
    """What the stub's pb_utils.Tensor offers through DLPack (and no as_numpy: model.py must
    not need it, see triton_model.py)."""

    def __init__(self, name, value):
        self.name, self.value = name, value

    def to_dlpack(self):
        import torch.utils.dlpack

        return torch.utils.dlpack.to_dlpack(self.value)

    @classmethod
    def from_dlpack(cls, name, capsule):
        import torch.utils.dlpack

        return cls(name, torch.utils.dlpack.from_dlpack(capsule))


class FakeError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message, code="INTERNAL"):
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name: t.value for t in output_tensors}
        self.error = error


@pytest.fixture
def fake_stub(monkeypatch):
    import types

    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.TritonError, pb.InferenceResponse = FakeTensor, FakeError, FakeResponse
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    pb.logged = []
    pb.Logger = types.SimpleNamespace(log_info=pb.logged.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    return pb


def triton_model(model_dir: Path, config: str, **args):
    """Import a generated model.py as the stub does and initialize it."""
    import importlib.util
    import json

    from google.protobuf import json_format

    spec = importlib.util.spec_from_file_location("model", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    as_json = json_format.MessageToDict(parse(Path(config)), preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(as_json), "model_instance_kind": "CPU",
                      "model_instance_device_id": "0", **args})  # fmt: skip
    return model


def req(**tensors):
    return {name: FakeTensor(name, value) for name, value in tensors.items()}


def test_model_py_serves_by_name(fake_stub, case_pack, tmp_path):
    import torch
    from models import r

    path, eager = case_pack("keywords")
    model_dir = export_triton(path, tmp_path, backend="python").path
    model = triton_model(model_dir, model_dir / "config.pbtxt")
    assert "trtpack: keywords runs model.trtpack on cpu (exported_program" in fake_stub.logged[0]
    x, mask, bias = r(9, 6), r(9, 6), r(6)
    ok, bad, missing = model.execute([req(x=x, mask=mask, bias=bias),
                                      req(x=r(65, 6), mask=r(65, 6), bias=bias),
                                      req(x=x, mask=mask)])  # fmt: skip
    assert ok.error is None and list(ok.outputs) == ["output"]
    torch.testing.assert_close(ok.outputs["output"], eager(x, mask=mask, bias=bias))
    with pytest.raises(trtpack.InputMismatchError) as want:
        trtpack.load(path)(r(65, 6), mask=r(65, 6), bias=bias)
    assert (bad.error.code, bad.error.message) == ("INVALID_ARG", str(want.value))
    assert (missing.error.code, missing.error.message) == ("INVALID_ARG", "input bias is missing")


def test_model_py_constants_scalars_and_batches(fake_stub, case_pack, tmp_path):
    import torch
    from models import r

    path, eager = case_pack("dynamic_int")
    model_dir = export_triton(path, tmp_path, backend="python").path
    model = triton_model(model_dir, model_dir / "config.pbtxt")
    x = r(3, 10)
    (out,) = model.execute([req(x=x, n=torch.tensor([7]))])
    torch.testing.assert_close(out.outputs["output"], eager(x, 7))

    path, eager = case_pack("many_outputs")
    model_dir = export_triton(path, tmp_path, backend="python").path
    (out,) = triton_model(model_dir, model_dir / "config.pbtxt").execute([req(x=x[:, :4])])
    assert out.outputs["output_1"].shape == (1,)  # a 0-d output, dims [1]
    torch.testing.assert_close(out.outputs["output_1"], eager(x[:, :4])[1].reshape(1))

    # the requests of one execute() run as one call; a bad one gets its own error
    path, eager = case_pack("one_tensor")
    model_dir = export_triton(path, tmp_path, max_batch_size=16, dynamic_batching=True).path
    model = triton_model(model_dir, model_dir / "config.pbtxt")
    calls, call = [], model._call
    model._call = lambda given: (
        calls.append({k: v.shape[0] for k, v in given.items()}) or call(given)
    )
    xs = [r(1, 8), r(3, 8), r(2, 8)]
    outs = model.execute([req(x=v) for v in xs])
    assert calls == [{"x": 6}]  # one call of batch 1 + 3 + 2
    for v, o in zip(xs, outs):
        torch.testing.assert_close(o.outputs["output"], eager(v))
    calls.clear()
    outs = model.execute([req(x=xs[0]), req(x=r(2, 9))])
    assert calls == [{"x": 1}, {"x": 2}]  # shapes differ beyond the batch dim: one call each
    torch.testing.assert_close(outs[0].outputs["output"], eager(xs[0]))
    assert outs[1].error.code == "INVALID_ARG" and "dim 1 is 9" in outs[1].error.message


def test_model_py_names_its_python_when_imports_fail(fake_stub, case_pack, tmp_path, monkeypatch):
    path, _ = case_pack("keywords")
    model_dir = export_triton(path, tmp_path, backend="python").path
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    with pytest.raises(ImportError, match=r"--site-dir` or TRTPACK_SITE_DIRS in the server's env"):
        triton_model(model_dir, model_dir / "config.pbtxt")


def test_model_py_refuses_a_config_that_is_not_the_packs(fake_stub, case_pack, tmp_path):
    path, _ = case_pack("keywords")
    model_dir = export_triton(path, tmp_path, backend="python").path
    config = (model_dir / "config.pbtxt").read_text().replace('name: "mask"', 'name: "m"')
    (tmp_path / "edited.pbtxt").write_text(config)
    with pytest.raises(
        trtpack.RegistryError, match=r"inputs \['x', 'm', 'bias'\] are not the pack's"
    ):
        triton_model(model_dir, tmp_path / "edited.pbtxt")


def test_site_dirs_come_first_with_their_pth_files(tmp_path, monkeypatch):
    from trtpack.integrations import triton_model as tm

    site, other, named = tmp_path / "site", tmp_path / "other", tmp_path / "named"
    for d in (site, other, named):
        d.mkdir()
    (site / "editable.pth").write_text(f"{named}\n")
    monkeypatch.setattr(sys, "path", ["/stdlib", "/usr/lib/python3/dist-packages"])
    dirs = tm.site_dirs([str(site)], {"TRTPACK_SITE_DIRS": f"{other}{os.pathsep}"})
    assert dirs == [str(other), str(site)]
    tm.add_site_dirs(dirs)
    assert sys.path == [
        str(other),
        str(site),
        str(named),
        "/stdlib",
        "/usr/lib/python3/dist-packages",
    ]
    assert tm.site_dirs([], {}) == []


# --- a real Triton server -------------------------------------------------------------------
#
# nvidia-pytriton 0.7.0's wheel holds Triton 2.51 (bin/tritonserver, backends/python) and the
# python backend's stub per Python version. It is downloaded once (pip download --no-deps) into
# ~/.cache/trtpack-tests (TRTPACK_TEST_CACHE), unpacked there, and the stub for this Python is
# put in a backends folder of its own. The server binds 127.0.0.1 only, on free ports.

PYTRITON = "nvidia-pytriton==0.7.0"


def _cache() -> Path:
    return Path(os.environ.get("TRTPACK_TEST_CACHE") or Path.home() / ".cache" / "trtpack-tests")


@pytest.fixture(scope="session")
def tritonserver() -> tuple[Path, Path]:
    """(tritonserver, backend directory) from the nvidia-pytriton wheel; skips, saying why,
    where the wheel cannot be had or its stub cannot run here."""
    import shutil
    import zipfile

    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("nvidia_pytriton-0.7.0-*.whl"))
    if not wheels:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", PYTRITON,
                            "-d", str(cache)], capture_output=True, text=True, timeout=600)  # fmt: skip
        wheels = sorted(cache.glob("nvidia_pytriton-0.7.0-*.whl"))
        if r.returncode or not wheels:
            pytest.skip(f"cannot download {PYTRITON} (a real Triton server): {r.stderr[-500:]}")
    root = cache / "nvidia-pytriton-0.7.0"
    if not (root / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        unpacking = Path(tempfile.mkdtemp(prefix=".unpack.", dir=cache))
        with zipfile.ZipFile(wheels[-1]) as z:
            for info in z.infolist():
                if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    z.extract(info, unpacking)
                    mode = info.external_attr >> 16
                    if mode:
                        os.chmod(unpacking / info.filename, mode & 0o777)
        shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(unpacking, root)
        except OSError:  # another session unpacked it meanwhile
            shutil.rmtree(unpacking, ignore_errors=True)
    server = root / "pytriton" / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        pytest.skip(f"{PYTRITON} has no python backend stub for Python {version}")
    # backends-3.11/python/: the stub's RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) holds
    backends = server / f"backends-{version}"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        staging = Path(tempfile.mkdtemp(prefix=".backends.", dir=server))
        shutil.copytree(server / "backends" / "python", staging / "python")
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        shutil.rmtree(backends, ignore_errors=True)
        try:
            os.replace(staging, backends)
        except OSError:  # another session made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    for exe in (
        server / "bin" / "tritonserver",
        backends / "python" / "triton_python_backend_stub",
    ):
        exe.chmod(exe.stat().st_mode | 0o111)
        if not shutil.which("ldd"):
            continue
        ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True)
        missing = [line.strip() for line in ldd.stdout.splitlines() if "not found" in line]
        if missing:  # the stub links the system's libpython3.X
            pytest.skip(f"{exe.name} cannot run here: {', '.join(missing)}")
    return server / "bin" / "tritonserver", backends


@dataclass
class Served:
    http: str
    grpc: str
    log: Path
    started_s: float
    eager: dict
    packs: dict


SERVED = {  # model name -> export_triton options (besides site_dirs)
    "keywords": {"backend": "python"},
    "one_tensor": {  # test_real_triton_batches_requests: a window no machine's delay fills
        "max_batch_size": 16,
        "max_queue_delay_us": 60_000_000,
        "instance_kind": "KIND_CPU",
    },
    "dtypes": {},
    "many_outputs": {},
    "scalars": {"site_dirs": ()},  # no SITE_DIRS: imports through TRTPACK_SITE_DIRS
}


#: not trtpack's: a model that answers through the stub's NumPy conversion, as most
#: python-backend models do (pb_utils.Tensor(name, ndarray)); test_the_stubs_numpy_abi
NUMPY_PROBE_CONFIG = """
name: "numpy_probe"
backend: "python"
input { name: "x" data_type: TYPE_FP32 dims: [-1] }
output { name: "y" data_type: TYPE_FP32 dims: [-1] }
"""
NUMPY_PROBE = """
import site
for d in {dirs!r}:
    site.addsitedir(d)
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
"""


@pytest.fixture(scope="module")
def served(tritonserver, case_pack, tmp_path_factory):
    """One Triton server serving python-backend models exported by trtpack."""
    import sysconfig
    import time
    import urllib.request

    _client_modules()  # skip before starting anything
    pytest.importorskip("ml_dtypes")  # bfloat16 on the wire
    binary, backends = tritonserver
    repo = tmp_path_factory.mktemp("model_repository")
    here = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    eager, packs = {}, {}
    for name, options in SERVED.items():
        path, eager[name] = case_pack(name)
        packs[name] = path
        options = {"site_dirs": here, **options}
        if options["site_dirs"] is None:
            del options["site_dirs"]
        export_triton(path, repo, **options)
    (repo / "numpy_probe" / "1").mkdir(parents=True)
    (repo / "numpy_probe" / "config.pbtxt").write_text(NUMPY_PROBE_CONFIG)
    (repo / "numpy_probe" / "1" / "model.py").write_text(NUMPY_PROBE.format(dirs=here))
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = repo.parent / "tritonserver.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRTPACK_SITE_DIRS"] = os.pathsep.join(here)
    with open(log, "wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "--model-repository", str(repo), "--backend-directory", str(backends),
             "--http-address", "127.0.0.1", "--http-port", str(http),
             "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
             "--exit-timeout-secs", "10"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = start + 240
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not READY within 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield Served(f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", log, time.monotonic() - start,
                     eager, packs)  # fmt: skip
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 30 s), then any of its python-backend
    stubs left in its process group (they exit on their own when the server is gone)."""
    import signal
    import time

    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)  # the group started with the server (start_new_session)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def _client_modules():
    grpcclient = pytest.importorskip("tritonclient.grpc")
    try:
        import tritonclient.http as httpclient
    except (ImportError, RuntimeError) as e:  # tritonclient without [http]
        pytest.skip(f"tritonclient[http] is not installed: {e}")
    return httpclient, grpcclient


@pytest.fixture(scope="module")
def clients(served):
    """(module, client) over HTTP and over gRPC; closed before the server stops (an open
    HTTP connection holds Triton's shutdown until --exit-timeout-secs)."""
    httpclient, grpcclient = _client_modules()
    made = (
        (httpclient, httpclient.InferenceServerClient(served.http)),
        (grpcclient, grpcclient.InferenceServerClient(served.grpc)),
    )
    yield made
    for _, client in made:
        client.close()


def infer(module, client, model: str, **arrays):
    import numpy as np

    inputs = []
    for name, value in arrays.items():
        a = np.asarray(value)
        datatype = "BF16" if a.dtype.name == "bfloat16" else module_dtype(a.dtype)
        i = module.InferInput(name, list(a.shape), datatype)
        i.set_data_from_numpy(a)
        inputs.append(i)
    return client.infer(model, inputs)


def module_dtype(dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dtype)


@pytest.mark.slow
def test_real_triton_serves_the_pack_over_http_and_grpc(served, clients):
    import ml_dtypes
    import numpy as np
    import torch
    from models import r

    print(f"\ntritonserver READY {served.started_s:.1f} s after start, {len(SERVED) + 1} models")
    x, mask, bias = r(9, 6), r(9, 6), r(6)
    want = served.eager["keywords"](x, mask=mask, bias=bias).detach().numpy()
    for module, client in clients:
        got = infer(module, client, "keywords", x=x.numpy(), mask=mask.numpy(), bias=bias.numpy())
        np.testing.assert_allclose(got.as_numpy("output"), want, rtol=1e-6, atol=1e-6)
        # fp16, bf16 (ml_dtypes on the wire), int64, bool in; fp32, fp16, bf16 out
        h, b, idx, keep = (r(6, 3, dtype=torch.float16), r(6, 3, dtype=torch.bfloat16),
                           torch.tensor([5, 1]), r(6, dtype=torch.bool))  # fmt: skip
        got = infer(module, client, "dtypes", h=h.numpy(),
                    b=b.float().numpy().astype(ml_dtypes.bfloat16), idx=idx.numpy(),
                    keep=keep.numpy())  # fmt: skip
        for i, w in enumerate(served.eager["dtypes"](h, b, idx, keep)):
            g = got.as_numpy(f"output_{i}")
            assert g.dtype == (ml_dtypes.bfloat16 if w.dtype == torch.bfloat16 else w.numpy().dtype)
            np.testing.assert_array_equal(g.astype(np.float32), w.float().numpy())
        # the constants torch.export specialized (n=3, alpha=0.5, flag, "double", None)
        v = r(2, 3)
        got = infer(module, client, "scalars", x=v.numpy())
        want_s = served.eager["scalars"](v, 3, 0.5, True, "double", None).numpy()
        np.testing.assert_allclose(got.as_numpy("output"), want_s, rtol=1e-6)
        # a nested output with a 0-d leaf (dims [1])
        v = r(5, 4)
        got = infer(module, client, "many_outputs", x=v.numpy())
        w = served.eager["many_outputs"](v)
        np.testing.assert_allclose(got.as_numpy("output_0.parts.1"), w[0]["parts"][1].numpy())
        np.testing.assert_allclose(got.as_numpy("output_1"), w[1].reshape(1).numpy())
        np.testing.assert_allclose(got.as_numpy("output_2.low"), w[2].low.numpy())
    log = served.log.read_text()
    # the model's Python: the stub's own (not this venv's interpreter), with this venv's numpy
    assert f"numpy {np.__version__}" in log and "trtpack: keywords runs model.trtpack on cpu" in log
    assert "trtpack: scalars runs" in log  # imported through TRTPACK_SITE_DIRS alone


@pytest.mark.slow
def test_real_triton_returns_trtpacks_own_errors(served, clients):
    from models import r
    from tritonclient.utils import InferenceServerException

    pack = trtpack.load(served.packs["keywords"])
    bias = r(6)
    messages = []
    for args, kwargs in [((r(65, 6),), {"mask": r(65, 6), "bias": bias}),  # x_dim0 <= 64
                         ((r(4, 6),), {"mask": r(5, 6), "bias": bias})]:  # fmt: skip
        with pytest.raises(trtpack.InputMismatchError) as want:
            pack(*args, **kwargs)
        messages.append(str(want.value))
        for module, client in clients:
            with pytest.raises(InferenceServerException) as got:
                infer(module, client, "keywords", x=args[0].numpy(),
                      **{k: v.numpy() for k, v in kwargs.items()})  # fmt: skip
            assert got.value.message() == str(want.value)  # trtpack's message, as is
            status = got.value.status()
            assert status in ("400", "StatusCode.INVALID_ARGUMENT"), status
    assert (
        messages[0] == "input x (args[0]) dim 0 is 65, outside the allowed range of x_dim0: [1, 64]"
    )
    assert "these dims must agree" in messages[1]


@pytest.mark.slow
def test_real_triton_batches_requests(served, clients):
    """Dynamic batching: concurrent requests run as one call. Not timing-dependent: the
    batcher waits up to 60 s for a full batch, and the six requests hold exactly
    max_batch_size (16) rows, so it runs them as one execution the moment the last arrives."""
    import time

    import numpy as np
    from models import r

    (_, http), (grpcclient, grpc) = clients
    xs = [r(n, 8) for n in (1, 3, 2, 4, 2, 4)]
    assert sum(len(v) for v in xs) == SERVED["one_tensor"]["max_batch_size"]
    before = _stats(http, "one_tensor")
    results: dict = {}
    for i, v in enumerate(xs):
        inp = grpcclient.InferInput("x", list(v.shape), "FP32")
        inp.set_data_from_numpy(v.numpy())
        grpc.async_infer(
            "one_tensor", [inp], lambda result, error, i=i: results.__setitem__(i, (result, error))
        )
    deadline = time.monotonic() + 50  # a full batch runs at once, long before the 60 s window
    while len(results) < len(xs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(results) == len(xs), "the full batch did not run at once"
    for i, v in enumerate(xs):
        res, err = results[i]
        assert err is None, err
        want = served.eager["one_tensor"](v).detach().numpy()
        np.testing.assert_allclose(res.as_numpy("output"), want, rtol=1e-5, atol=1e-6)
    after = _stats(http, "one_tensor")
    requests, executions = (after[0] - before[0], after[1] - before[1])
    assert requests == len(xs) and executions == 1, (requests, executions)
    print(f"\n{requests} requests ran in {executions} executions")


def _stats(http, model: str) -> tuple[int, int]:
    (s,) = http.get_inference_statistics(model)["model_stats"]
    return int(s["inference_stats"]["success"]["count"]), int(s["execution_count"])


@pytest.mark.slow
def test_real_triton_latency(served, clients):
    """Measured, not asserted beyond sanity: a small request's round trip, HTTP and gRPC."""
    import statistics
    import time

    from models import r

    x, mask, bias = r(8, 6).numpy(), r(8, 6).numpy(), r(6).numpy()
    for module, client in clients:
        times = []
        for _ in range(30):
            t = time.perf_counter()
            infer(module, client, "keywords", x=x, mask=mask, bias=bias)
            times.append(time.perf_counter() - t)
        median = statistics.median(times[5:]) * 1000
        print(f"\n{module.__name__}: keywords batch 8, median {median:.2f} ms over 25 requests")
        assert median < 2000


@pytest.mark.slow
def test_the_stubs_numpy_abi(served, clients):
    """Why model.py uses DLPack: the stub's pybind11 (it imports numpy.core.multiarray) reads
    NumPy 1's PyArray_Descr layout. Under NumPy 2 an array handed to pb_utils.Tensor comes
    out with 0 bytes of data (the client: "cannot reshape array of size 0"; Triton, where it
    checks: "output tensor shape does not match size of output"). Under NumPy 1 it works.
    trtpack's models, served above with this NumPy, never convert through NumPy."""
    import numpy as np
    from tritonclient.utils import InferenceServerException

    x = np.arange(4, dtype=np.float32)
    for module, client in clients:
        try:
            ok = np.array_equal(infer(module, client, "numpy_probe", x=x).as_numpy("y"), x * 2)
        except (InferenceServerException, ValueError) as e:  # ValueError: reshape of 0 bytes
            ok, why = False, str(e)
        if int(np.__version__.split(".")[0]) >= 2:
            assert not ok, f"the stub now handles NumPy {np.__version__}: {module.__name__}"
            print(f"\n{module.__name__}, NumPy {np.__version__}: {why}")
        else:
            assert ok


def test_engines_with_several_profiles_offer_them_all(engine_pack, tmp_path):
    """A whole-graph engine with two optimization profiles: every instance group lists both,
    so Triton picks the one that fits each request (it would use profile 0 only)."""
    from test_container import rewrite

    def two_profiles(m):
        for b in m["engines"][0]["engines"][0]["inputs"]:
            b["extra_profiles"] = [[[1, 2, 8] if row[0] != row[2] else row for row in b["profile"]]]

    edited = rewrite(engine_pack, tmp_path / "profiles.trtpack", edit_manifest=two_profiles)
    (v,) = trtpack.inspect(edited).manifest.engines
    assert len(v.engines[0].inputs[0].profiles) == 2
    config = parse(export(edited, tmp_path / "repo", backend="tensorrt").path / "config.pbtxt")
    assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]
    plain = parse(export(engine_pack, tmp_path / "repo2", backend="tensorrt").path / "config.pbtxt")
    assert not plain.instance_group  # one profile: nothing to say
