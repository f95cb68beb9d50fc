"""Does one hostile request stop tritonserver 2.51, and what bounds it? (docs/triton-hardening.md)

    python tools/triton_hostile_requests.py plain|restricted|grpc

Uses the Triton server the tests unpack (tests/test_triton.py, ~/.cache/trtpack-tests) and a
five-line python-backend model that is not trtpack's; binds 127.0.0.1 only. "plain" starts a
server per request, because the deep-JSON request kills it.
"""

import json
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

cache = Path(os.environ.get("TRTPACK_TEST_CACHE") or Path.home() / ".cache" / "trtpack-tests")
root = cache / "nvidia-pytriton-0.7.0/pytriton/tritonserver"
binary, backends = root / "bin/tritonserver", root / "backends-3.11"
here = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
work = Path(tempfile.mkdtemp(prefix="triton-hostile-"))
repo = work / "repo"
(repo / "probe/1").mkdir(parents=True, exist_ok=True)
(repo / "probe/config.pbtxt").write_text(
    'name: "probe"\nbackend: "python"\n'
    'input { name: "x" data_type: TYPE_FP32 dims: [-1] }\n'
    'output { name: "y" data_type: TYPE_FP32 dims: [-1] }\n'
)
(repo / "probe/1/model.py").write_text(f"""
import site
for d in {here!r}:
    site.addsitedir(d)
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
""")


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(extra):
    http, grpc, metrics = port(), port(), port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = open(work / f"log-{http}.txt", "wb")
    p = subprocess.Popen(
        [
            str(binary),
            "--model-repository",
            str(repo),
            "--backend-directory",
            str(backends),
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(http),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(grpc),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-port",
            str(metrics),
            "--exit-timeout-secs",
            "5",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    print(f"  ready in {time.monotonic() - t0:.0f} s", flush=True)
                    return p, http, grpc
        except OSError:
            pass
        if p.poll() is not None:
            print("  exited", p.returncode, open(log.name).read()[-2000:])
            sys.exit(1)
        time.sleep(0.5)
    raise SystemExit("not ready")


def post(http, body, headers=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/v2/models/probe/infer",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()[:150]
    except urllib.error.HTTPError as e:
        return e.code, e.read()[:150]
    except OSError as e:
        return "conn", repr(e)[:150]


def alive(p, http):
    time.sleep(1)
    return p.poll() is None


def stop(p):
    import signal

    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


BIG = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**31], "data": [1.0]}]}
).encode()
DEEP = (
    b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
    + b"[" * 100000
    + b"1"
    + b"]" * 100000
    + b"}]}"
)
OK = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}
).encode()

case = sys.argv[1]
if case == "plain":
    for name, body in (("dim 2**31", BIG), ("deep json", DEEP)):
        p, http, grpc = start([])
        print(" ok request:", post(http, OK))
        print(
            f" {name}:",
            post(http, body),
            "server alive:",
            alive(p, http),
            "rc",
            p.poll(),
            flush=True,
        )
        stop(p)
elif case == "restricted":
    p, http, grpc = start(["--http-restricted-api=inference:trtpack-key=s3cret"])
    print(" ok request, no key:", post(http, OK))
    print(" ok request, key:", post(http, OK, {"trtpack-key": "s3cret"}))
    for name, body in (("dim 2**31", BIG), ("deep json", DEEP)):
        print(f" {name}, no key:", post(http, body), "alive:", alive(p, http), flush=True)
    print(
        " dim 2**31, key:",
        post(http, BIG, {"trtpack-key": "s3cret"}),
        "alive:",
        alive(p, http),
        flush=True,
    )
    stop(p)
elif case == "binary":  # the binary tensor extension: 4 bytes for a dim of 2**31
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2**31],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    p, http, grpc = start([])
    extra = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    print(
        " binary dim 2**31:",
        post(http, header + bytes(4), extra),
        "alive:",
        alive(p, http),
        "rc",
        p.poll(),
        flush=True,
    )
    stop(p)
elif case == "grpc":
    import numpy as np
    import tritonclient.grpc as g
    from tritonclient.grpc import service_pb2

    p, http, grpc = start([])
    c = g.InferenceServerClient(f"127.0.0.1:{grpc}")
    req = service_pb2.ModelInferRequest(model_name="probe")
    t = req.inputs.add()
    t.name = "x"
    t.datatype = "FP32"
    t.shape.extend([2**31])
    req.raw_input_contents.append(np.ones(1, np.float32).tobytes())
    try:
        c._client_stub.ModelInfer(req, timeout=20)
        print(" grpc dim 2**31: answered")
    except Exception as e:
        print(" grpc dim 2**31:", type(e).__name__, str(e)[:200])
    print(" alive:", alive(p, http), flush=True)
    stop(p)
