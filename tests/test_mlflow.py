"""MLflow, for real: a local SQLite tracking store and registry (no mocks), and once a real
`mlflow server` on 127.0.0.1 started and stopped by the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from servers import free_port, wait_http

import trtpack

mlflow = pytest.importorskip("mlflow")

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.slow


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A local SQLite store and registry; artifacts in a temporary folder (MLflow's default,
    ./mlruns, would land in the working tree)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.create_experiment("trtpack-tests", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("trtpack-tests")
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def keywords(exported, tmp_path):
    case, model, ep = exported("keywords")
    path = tmp_path / "keywords.trtpack"
    trtpack.save(ep, path, metadata={"model": "keywords"})
    return case, model, path


def numpy_inputs(case):
    (x,) = case.args
    return {
        "x": x.numpy(),
        "mask": case.kwargs["mask"].numpy(),
        "bias": case.kwargs["bias"].numpy(),
    }


def test_log_register_load_predict(tracking, keywords):
    import trtpack.mlflow

    case, model, path = keywords
    info = trtpack.mlflow.log_model(path, name="detector", registered_model_name="detector")
    assert info.registered_model_version == 1
    meta = info.metadata["trtpack"]
    assert meta["digest"] == trtpack.inspect(path).digest
    assert meta["symbols"] == {"x_dim0": {"min": 1, "max": 64, "opt": 4}}
    sig = info.signature.inputs.to_dict()
    assert [(s["name"], s["tensor-spec"]["dtype"], list(s["tensor-spec"]["shape"])) for s in sig] == [
        ("x", "float32", [-1, 6]), ("mask", "float32", [-1, 6]), ("bias", "float32", [6])
    ]  # fmt: skip

    pyfunc = mlflow.pyfunc.load_model("models:/detector/1")
    got = pyfunc.predict(numpy_inputs(case))
    want = model(*case.args, **case.kwargs).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    batch = {
        k: np.repeat(v, 3, axis=0) if v.ndim == 2 else v for k, v in numpy_inputs(case).items()
    }
    assert pyfunc.predict(batch).shape == (12, 6)

    pack = trtpack.mlflow.load_model("models:/detector/1", device="cpu")
    assert pack.digest == trtpack.inspect(path).digest and pack.manifest.metadata == {
        "model": "keywords"
    }
    torch.testing.assert_close(pack(*case.args, **case.kwargs), model(*case.args, **case.kwargs))


def test_predict_refuses_bad_inputs_clearly(tracking, keywords):
    import trtpack.mlflow

    case, _, path = keywords
    trtpack.mlflow.log_model(path, name="detector", registered_model_name="det2")
    pyfunc = mlflow.pyfunc.load_model("models:/det2/1")
    inputs = numpy_inputs(case)
    inputs["x"] = np.zeros((65, 6), np.float32)
    inputs["mask"] = np.zeros((65, 6), np.float32)
    with pytest.raises(
        Exception, match=r"dim 0 is 65, outside the allowed range of x_dim0: \[1, 64\]"
    ):
        pyfunc.predict(inputs)


def test_not_a_trtpack_model(tracking):
    import trtpack.mlflow

    class Plain(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.pyfunc.log_model(name="plain", python_model=Plain(), registered_model_name="plain",
                            pip_requirements=["numpy"])  # fmt: skip
    with pytest.raises(trtpack.RegistryError, match="models:/plain/1 is not a trtpack model"):
        trtpack.mlflow.load_model("models:/plain/1")
    with pytest.raises(trtpack.RegistryError, match="cannot fetch models:/nope/1 from MLflow"):
        trtpack.mlflow.load_model("models:/nope/1")


def test_without_mlflow_the_error_says_what_to_install(monkeypatch, keywords):
    from trtpack.integrations import mlflow as integration

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    with pytest.raises(trtpack.MissingDependencyError, match=r"pip install 'trtpack\[mlflow\]'"):
        integration.log_model(keywords[2], name="x")


def test_against_a_real_mlflow_server(tmp_path, keywords, monkeypatch):
    import trtpack.mlflow

    case, model, path = keywords
    monkeypatch.chdir(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, 90)
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        mlflow.set_registry_uri(f"http://127.0.0.1:{port}")
        mlflow.set_experiment("server-test")
        trtpack.mlflow.log_model(path, name="detector", registered_model_name="detector")
        got = mlflow.pyfunc.load_model("models:/detector/1").predict(numpy_inputs(case))
        np.testing.assert_allclose(
            got, model(*case.args, **case.kwargs).detach().numpy(), rtol=1e-6
        )
        pack = trtpack.mlflow.load_model("models:/detector/1", device="cpu")
        assert pack.digest == trtpack.inspect(path).digest
    finally:
        mlflow.set_tracking_uri(None)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


FRESH = r"""
import json, sys
import numpy as np
import mlflow
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
inputs = {k: np.array(v, dtype=np.float32) for k, v in json.loads(sys.argv[2]).items()}
model = mlflow.pyfunc.load_model("models:/fresh/1")
import trtpack
print("FROM", trtpack.__file__)
print("OUT", json.dumps(np.asarray(model.predict(inputs)).tolist()))
"""


def test_fresh_process_and_mlflow_models_serve(tracking, keywords, tmp_path):
    """The logged model works from any install: a fresh process imports the trtpack copy MLflow
    stored with the model (its schema included) and predicts; ``mlflow models serve
    --env-manager local`` answers over REST, and a bad input is a 400 with trtpack's message."""
    import json

    import trtpack.mlflow

    case, model, path = keywords
    trtpack.mlflow.log_model(path, name="fresh", registered_model_name="fresh")
    want = model(*case.args, **case.kwargs).detach().numpy()
    inputs = {k: v.tolist() for k, v in numpy_inputs(case).items()}
    # as from an activated venv: MLflow's server starts `uvicorn` from PATH
    path_var = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": "", "PATH": path_var}
    out = subprocess.run([sys.executable, "-c", FRESH, tracking, json.dumps(inputs)],
                         capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "artifacts/code/trtpack" in lines["FROM"]  # MLflow's copy, not this checkout
    np.testing.assert_allclose(np.array(json.loads(lines["OUT"])), want, rtol=1e-6)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/fresh/1",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**env, "MLFLOW_TRACKING_URI": tracking}, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server, 120)

        def post(body: dict) -> tuple[int, dict]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = post({"inputs": inputs})
        assert status == 200, body
        np.testing.assert_allclose(np.array(body["predictions"]), want, rtol=1e-6)
        bad = {**inputs, "x": np.zeros((65, 6)).tolist(), "mask": np.zeros((65, 6)).tolist()}
        status, body = post({"inputs": bad})
        assert status == 400, body
        assert "dim 0 is 65, outside the allowed range of x_dim0: [1, 64]" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_requirements_name_what_the_variants_need(keywords):
    from trtpack.integrations.mlflow import requirements

    plain = requirements(trtpack.inspect(keywords[2]).manifest)
    assert [r.split("==")[0] for r in plain] == ["torch", "numpy"]
    assert "+" not in plain[0]  # no local label (2.13.0+cpu): PyPI has none
    engines = requirements(trtpack.inspect(FIXTURES / "v1.1" / "keywords_engines.trtpack").manifest)
    # the engine's TensorRT-RTX exactly; the torch-tensorrt-rtx built for it, and its torch
    assert engines[0] == "torch==2.14.*" and engines[1].startswith("numpy==")
    assert engines[2:] == ["torch-tensorrt-rtx==2.14.*", "tensorrt-rtx==1.6.1.120"]


@pytest.mark.network
def test_requirements_of_a_built_variant_resolve_together(tmp_path):
    """pip's resolver, for real against PyPI (metadata only, --dry-run): the requirements
    logged for a pack with a TensorRT-RTX 1.6.1.120 variant resolve to the releases made for
    each other (before: torch==2.13.0+cpu beside an unpinned torch-tensorrt-rtx, which pip
    "resolved" to the placeholder release 0.0.1)."""
    import json

    from trtpack.integrations.mlflow import requirements

    reqs = requirements(trtpack.inspect(FIXTURES / "v1.3" / "keywords_engines.trtpack").manifest)
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--quiet", "--report", str(report), *reqs],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    if r.returncode and "Failed to establish a new connection" in r.stderr:
        pytest.skip(f"PyPI cannot be reached: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}  # fmt: skip
    assert got["tensorrt-rtx"] == "1.6.1.120"
    assert got["torch-tensorrt-rtx"].startswith("2.14.")
    assert got["torch"].startswith("2.14.")


class _Scaled(torch.nn.Module):
    def forward(self, x, batch_scale):
        return x * batch_scale


def test_predict_takes_a_0d_input(tracking, tmp_path):
    """A 0-d input (a scale) goes through MLflow's schema and trtpack's contract as 0-d: not
    widened to shape (1,), which the manifest refuses and MLflow's schema refuses too."""
    import trtpack.mlflow

    x, scale = torch.randn(3, 4), torch.tensor(2.0)
    path = tmp_path / "scaled.trtpack"
    trtpack.save(torch.export.export(_Scaled(), (x, scale)), path)
    info = trtpack.mlflow.log_model(path, name="scaled")
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    got = pyfunc.predict({"x": x.numpy(), "batch_scale": np.array(2.0, np.float32)})
    np.testing.assert_allclose(got, (x * 2).numpy(), rtol=1e-6)
    # the non-contiguous case still gets a contiguous copy
    from trtpack.integrations.predict import predict

    pack = trtpack.load(path, device="cpu")
    wide = np.asfortranarray(np.repeat(x.numpy(), 2, axis=1)[:, ::2])
    np.testing.assert_allclose(predict(pack, {"x": wide, "batch_scale": np.float32(3.0)}),
                               (x * 3).numpy(), rtol=1e-6)  # fmt: skip
