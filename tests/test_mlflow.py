"""MLflow, for real: a local SQLite tracking store and registry (no mocks), and once a real
`mlflow server` on 127.0.0.1 started and stopped by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_against_a_real_mlflow_server(tmp_path, keywords, monkeypatch):
    import trtpack.mlflow

    case, model, path = keywords
    monkeypatch.chdir(tmp_path)
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start within 90 s"
            time.sleep(0.5)
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
