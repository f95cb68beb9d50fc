"""Triton model repository: the config parses with Triton's own ModelConfig protobuf (a
misspelled or misplaced field would fail), names are the engine's bindings, plans per GPU."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import rtx

import trtpack
from trtpack.integrations.triton import export_triton

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")
pytest.importorskip("tensorrt_rtx")

FIXTURES = Path(__file__).parent / "fixtures"


def parse(config: Path):
    return text_format.Parse(config.read_text(), pb2.ModelConfig())


@pytest.fixture(scope="module")
def plans():
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
    with pytest.raises(trtpack.RegistryError, match="holds no TensorRT engine"):
        export(FIXTURES / "v1.0" / "keywords.trtpack", repo)
    partitioned = tmp_path / "partitioned.trtpack"
    trtpack.migrate(FIXTURES / "v0" / "torch_tensorrt" / "net_partitioned.ep", partitioned)
    with pytest.raises(
        trtpack.RegistryError,
        match=r"no whole-graph engine \(rtx_sm80_plus \(2 engines\)\).*PyTorch-fallback",
    ):
        export(partitioned, repo)
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
