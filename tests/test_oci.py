"""OCI registry, for real: Debian's docker-registry started by the test, listening on
127.0.0.1 only, storing in a temporary directory; stopped after. Its access log (one line
per request, with the bytes it sent) is what proves which blobs a command fetched."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
import rtx
from servers import free_port

import trtpack
from trtpack.format.container import PackReader
from trtpack.integrations import oci

pytest.importorskip("oras")
REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(
    REGISTRY is None,
    reason="docker-registry is not installed (tools/setup.sh installs it with apt)",
)
FIXTURES = Path(__file__).parent / "fixtures"
RUN = [sys.executable, "-m", "trtpack"]
LAYOUTS = ["modelpack", "trtpack"]
_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d+) (?P<bytes>\d+|-)'
)


@dataclass
class Server:
    host: str
    log: Path

    def mark(self) -> int:
        return len(self.log.read_text().splitlines())

    def since(self, mark: int) -> list[tuple[str, str, int, int]]:
        """(method, path, status, bytes sent) of each request after ``mark``: a sentinel
        request is made last and awaited, so every earlier request is in the log."""
        import requests

        sentinel = uuid.uuid4().hex
        requests.get(f"http://{self.host}/v2/?sentinel={sentinel}", timeout=5)
        deadline = time.monotonic() + 5
        while sentinel not in self.log.read_text():
            assert time.monotonic() < deadline, "the registry did not log the sentinel"
            time.sleep(0.05)
        out = []
        for line in self.log.read_text().splitlines()[mark:]:
            m = _LINE.search(line)
            if m and sentinel not in line:
                size = 0 if m["bytes"] == "-" else int(m["bytes"])
                out.append((m["method"], m["path"], int(m["status"]), size))
        return out


def _serve(root: Path, auth: str = "") -> tuple[subprocess.Popen, Server]:
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: false}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n" + auth
    )
    log = root / "access.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=out,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert server.poll() is None, "docker-registry exited"
            assert time.monotonic() < deadline, "docker-registry did not start"
            time.sleep(0.1)
    return server, Server(f"127.0.0.1:{port}", log)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, srv = _serve(tmp_path_factory.mktemp("registry"))
    yield srv
    _stop(process)


@pytest.fixture(scope="module")
def registry(server):
    return server.host


def _bcrypt(password: str) -> str | None:
    """A bcrypt hash for htpasswd (cost 4: the registry checks it on every request)."""
    try:
        import bcrypt

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # the C library's crypt(3); removed from Python 3.13
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    except (ImportError, AttributeError, OSError):
        return None
    return h if h and h.startswith("$2") else None


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    """A second registry that takes user alice, password s3cret (htpasswd, bcrypt)."""
    hashed = _bcrypt("s3cret")
    if hashed is None:
        pytest.skip("no bcrypt: neither the bcrypt package nor crypt(3) with bcrypt")
    root = tmp_path_factory.mktemp("auth-registry")
    (root / "htpasswd").write_text(f"alice:{hashed}\n")
    auth = f"auth: {{htpasswd: {{realm: trtpack-test, path: {root / 'htpasswd'}}}}}\n"
    process, srv = _serve(root, auth)
    yield srv
    _stop(process)


def docker_config(path: Path, host: str, user: str, password: str) -> Path:
    """A Docker config.json as `docker login` writes it: auths[HOST] = base64(user:pass)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pack(tmp_path):
    path = tmp_path / "detector.trtpack"
    path.write_bytes((FIXTURES / "v1.0" / "keywords.trtpack").read_bytes())
    return path


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory):
    """A pack with the program and two real TensorRT-RTX engine variants (sm80, sm86)."""
    pytest.importorskip("tensorrt_rtx")
    path = tmp_path_factory.mktemp("two") / "two.trtpack"
    path.write_bytes((FIXTURES / "v1.1" / "keywords.trtpack").read_bytes())
    trtpack.add_engine(path, rtx.keywords_plan(("8.0",)), variant="rtx_sm80")
    trtpack.add_engine(path, rtx.keywords_plan(("8.6",)), variant="rtx_sm86")
    return path


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, env=env)


def blob_gets(requests: list, repo: str) -> dict[str, int]:
    """Digest -> bytes sent, for each blob GET of ``repo``."""
    out = {}
    for method, path, status, size in requests:
        if method == "GET" and path.startswith(f"/v2/{repo}/blobs/") and status == 200:
            out[path.rsplit("/", 1)[1]] = size
    return out


# --- push and pull --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_push_pull_round_trip_is_byte_identical(registry, pack, tmp_path, layout):
    ref = f"oci://{registry}/models/detector-{layout}:1"
    pushed = oci.push(pack, ref, layout=layout)
    assert pushed.layout == layout
    assert pushed.skipped == [] and sorted(pushed.uploaded) == sorted(
        trtpack.inspect(pack).manifest.members
    )
    out = tmp_path / "pulled.trtpack"
    info = oci.pull(ref, out)
    assert sha256(out) == sha256(pack)  # the same bytes: a registry or cache sees one digest
    assert info.digest == trtpack.inspect(pack).digest and info.layout == layout
    with zipfile.ZipFile(pack) as z:
        raw = z.read("manifest.json")
    members = sum(m.size for m in info.manifest.members.values())
    assert info.left_out == {} and info.bytes_downloaded == len(raw) + members
    trtpack.verify(out)


def test_modelpack_manifest_as_the_registry_serves_it(registry, exported, tmp_path):
    """What a ModelPack tool sees: the manifest and config exactly as the registry returns
    them over HTTP, checked against the ModelPack spec (docs/spec.md, config.md,
    annotations.md of github.com/modelpack/model-spec)."""
    import requests

    _, _, ep = exported("keywords")
    path = tmp_path / "detector.trtpack"
    trtpack.save(ep, path, metadata={"name": "detector", "version": "1.2.0",
                                     "description": "finds things"})  # fmt: skip
    ref = f"oci://{registry}/models/modelpack:1"
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    pushed = oci.push(path, ref, created=created)
    assert pushed.layout == "modelpack"  # the default

    r = requests.get(f"http://{registry}/v2/models/modelpack/manifests/1",
                     headers={"Accept": oci.OCI_MANIFEST}, timeout=10)  # fmt: skip
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    assert r.headers["Docker-Content-Digest"] == pushed.manifest_digest
    assert "sha256:" + hashlib.sha256(r.content).hexdigest() == pushed.manifest_digest
    m = r.json()
    assert m["schemaVersion"] == 2
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert m["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert m["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    notes = m["annotations"]
    assert notes["org.opencontainers.image.title"] == "detector"
    assert notes["org.opencontainers.image.version"] == "1.2.0"
    assert notes["org.opencontainers.image.description"] == "finds things"
    assert notes["org.opencontainers.image.created"] == "2026-01-02T03:04:05Z"
    assert notes["dev.trtpack.digest"] == trtpack.inspect(path).digest

    members = trtpack.inspect(path).manifest.members
    expected = {"manifest.json": "application/vnd.cncf.model.weight.config.v1.raw",
                "program/graph.json": "application/vnd.cncf.model.weight.config.v1.raw",
                "program/weights.safetensors": "application/vnd.cncf.model.weight.v1.raw"}  # fmt: skip
    assert [layer["annotations"]["org.cncf.model.filepath"] for layer in m["layers"]] == list(
        expected
    )  # manifest.json first, as in the zip
    for layer in m["layers"]:
        a = layer["annotations"]
        name = a["org.cncf.model.filepath"]
        assert layer["mediaType"] == expected[name]
        assert a["org.opencontainers.image.title"] == name  # `oras pull` writes the same file
        assert "org.cncf.model.file.mediatype.untested" not in a
        meta = json.loads(a["org.cncf.model.file.metadata+json"])
        assert meta == {"name": name.rsplit("/", 1)[-1], "mode": 0o644, "uid": 0, "gid": 0,
                        "size": layer["size"], "mtime": "1980-01-01T00:00:00Z",
                        "typeflag": ord("0")}  # fmt: skip
        if name != "manifest.json":
            assert layer["digest"] == f"sha256:{members[name].sha256}"  # the member's SHA-256
    assert m["layers"][0]["digest"] == trtpack.inspect(path).digest

    r = requests.get(f"http://{registry}/v2/models/modelpack/blobs/{m['config']['digest']}",
                     timeout=10)  # fmt: skip
    assert len(r.content) == m["config"]["size"]
    config = r.json()
    # the ModelPack config schema: these three objects, required; no other properties
    assert set(config) == {"descriptor", "config", "modelfs"}
    assert config["descriptor"] == {"name": "detector", "title": "detector", "version": "1.2.0",
                                    "description": "finds things",
                                    "createdAt": "2026-01-02T03:04:05Z"}  # fmt: skip
    assert set(config["config"]) <= {"architecture", "format", "paramSize", "precision",
                                     "quantization", "capabilities"}  # fmt: skip
    assert config["config"]["format"] == "trtpack"
    assert config["modelfs"] == {"type": "layers",
                                 "diffIds": [layer["digest"] for layer in m["layers"]]}  # fmt: skip


def test_a_generic_oci_client_extracts_the_members_as_a_folder(registry, pack, tmp_path):
    """oras (like a ModelPack extract) writes each layer to its title: the pack's members."""
    import oras.client

    ref = f"oci://{registry}/models/folder:1"
    oci.push(pack, ref)
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    out = tmp_path / "folder"
    client.pull(target=f"{registry}/models/folder:1", outdir=str(out))
    members = trtpack.inspect(pack).manifest.members
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(
        [*members, "manifest.json"]
    )
    for name, member in members.items():
        assert sha256(out / name) == member.sha256


def test_manifest_shows_inputs_without_downloading_the_pack(registry, pack):
    ref = f"oci://{registry}/models/shown:1"
    oci.push(pack, ref, layout="trtpack")
    manifest = oci.fetch_manifest(ref)
    assert manifest["artifactType"] == oci.ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == oci.CONFIG_TYPE
    assert manifest["config"]["digest"] == trtpack.inspect(pack).digest  # the pack's digest
    notes = manifest["annotations"]
    assert notes["dev.trtpack.inputs"] == (
        "x float32[batch(1..64, opt 4), 6]; mask float32[batch(1..64, opt 4), 6]; bias float32[6]"
    )
    assert notes["dev.trtpack.metadata.fixture"] == "format 1.0"
    layers = {
        layer["annotations"]["org.opencontainers.image.title"]: layer
        for layer in manifest["layers"]
    }
    members = trtpack.inspect(pack).manifest.members
    assert {n: layer["digest"] for n, layer in layers.items()} == {
        n: f"sha256:{m.sha256}" for n, m in members.items()
    }
    oci.push(pack, ref.replace("shown:1", "shown:2"))  # the ModelPack layout has them too
    assert (
        oci.fetch_manifest(ref.replace("shown:1", "shown:2"))["annotations"]["dev.trtpack.inputs"]
        == notes["dev.trtpack.inputs"]
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_repushing_sends_only_what_changed(server, pack, tmp_path, layout):
    ref = f"oci://{server.host}/models/dedup-{layout}"
    first = oci.push(pack, f"{ref}:1", layout=layout)
    mark = server.mark()
    again = oci.push(pack, f"{ref}:2", layout=layout)
    assert again.uploaded == [] and again.manifest_digest == first.manifest_digest
    sent = server.since(mark)
    assert [(m, p.split("/")[-2]) for m, p, *_ in sent if m in ("POST", "PUT", "PATCH")] == [
        ("PUT", "manifests")
    ]  # no blob upload at all: only the manifest, under the new tag
    assert (
        again.bytes_uploaded < 4096 and again.bytes_skipped > trtpack.inspect(pack).file_size // 2
    )

    plan = rtx.keywords_plan(("8.0",))
    trtpack.add_engine(pack, plan)  # a new engine variant
    mark = server.mark()
    third = oci.push(pack, f"{ref}:3", layout=layout)
    assert third.uploaded == ["engines/rtx_sm80/engine.plan"]  # the program is not re-sent
    uploads = [p for m, p, *_ in server.since(mark) if m == "POST"]
    # the plan, the new manifest.json and, in the ModelPack layout, the new model config
    assert len(uploads) == (3 if layout == "modelpack" else 2)
    new_manifest = len(trtpack.inspect(pack).manifest.to_json())
    assert third.bytes_uploaded < len(plan) + new_manifest + 8192
    out = tmp_path / "v3.trtpack"
    oci.pull(f"{ref}:3", out)
    assert sha256(out) == sha256(pack)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_model_saved_twice_pushes_to_the_same_digest(registry, exported, tmp_path, layout):
    _, _, ep = exported("keywords")
    a, b = tmp_path / "a.trtpack", tmp_path / "b.trtpack"
    trtpack.save(ep, a)
    trtpack.save(ep, b)
    ref = f"oci://{registry}/models/twice-{layout}"
    assert (
        oci.push(a, f"{ref}:a", layout=layout).manifest_digest
        == oci.push(b, f"{ref}:b", layout=layout).manifest_digest
    )


# --- inspect: the manifest, not the weights -------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inspect_reads_the_manifest_without_the_weights(server, two_variants, layout):
    ref = f"oci://{server.host}/models/inspect-{layout}:1"
    oci.push(two_variants, ref, layout=layout)
    local = trtpack.inspect(two_variants)

    mark = server.mark()
    r = cli("inspect", ref)
    assert r.returncode == 0, r.stderr
    fetched = blob_gets(server.since(mark), f"models/inspect-{layout}")
    # one blob: the pack's manifest.json (a few KiB), never a weight or an engine
    assert fetched == {local.digest: len(local.manifest.to_json())}
    assert r.stdout.startswith(f"{ref}  ")
    assert f"digest   {local.digest}" in r.stdout and f"registry {layout} layout" in r.stdout
    assert "x     args[0]         float32  [x_dim0(1..64, opt 4), 6]" in r.stdout
    assert "rtx_sm80  TensorRT-RTX" in r.stdout and "rtx_sm86  TensorRT-RTX" in r.stdout

    r = cli("inspect", "--json", ref)
    assert r.returncode == 0 and json.loads(r.stdout) == local.manifest.to_dict()

    remote = oci.inspect(ref)
    assert remote.layout == layout and remote.bytes_downloaded == len(local.manifest.to_json())
    assert remote.info.digest == local.digest


# --- pull: only the variants a machine needs ------------------------------------------------


def _engines(path: Path) -> list[str]:
    return [v.name for v in trtpack.inspect(path).manifest.engines]


def test_pull_only_the_variants_asked_for(server, two_variants, tmp_path):
    ref = f"oci://{server.host}/models/variants:1"
    oci.push(two_variants, ref)
    full = trtpack.inspect(two_variants).manifest
    sm80 = full.members["engines/rtx_sm80/engine.plan"].sha256

    mark = server.mark()
    out = tmp_path / "sm86.trtpack"
    pulled = oci.pull(ref, out, variants=["rtx_sm86"])
    fetched = blob_gets(server.since(mark), "models/variants")
    assert f"sha256:{sm80}" not in fetched  # the other variant's engine never came down
    assert pulled.variants == ("rtx_sm86",) and pulled.left_out == {"rtx_sm80": "not asked for"}
    assert pulled.bytes_downloaded == sum(fetched.values())
    info = trtpack.verify(out)
    assert _engines(out) == ["rtx_sm86"]
    assert sorted(info.manifest.members) == [
        "engines/rtx_sm86/engine.plan", "program/graph.json", "program/weights.safetensors"
    ]  # fmt: skip
    assert info.manifest.interface == full.interface and info.manifest.program == full.program
    for name, member in info.manifest.members.items():
        assert member == full.members[name]  # the same bytes, member for member

    import torch

    x, mask, bias = torch.randn(3, 6), torch.randn(3, 6), torch.randn(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no GPU here: the program runs
        got = trtpack.load(out, device="cpu")(x, mask=mask, bias=bias)
        want = trtpack.load(two_variants, device="cpu")(x, mask=mask, bias=bias)
    assert torch.equal(got, want)

    again = tmp_path / "again.trtpack"
    oci.pull(ref, again, variants=["rtx_sm86"])
    assert sha256(again) == sha256(out)  # deterministic

    none = tmp_path / "none.trtpack"
    assert oci.pull(ref, none, variants="none").variants == ()
    assert _engines(none) == [] and trtpack.verify(none)

    both = tmp_path / "both.trtpack"
    oci.pull(ref, both, variants=["rtx_sm86", "rtx_sm80"])
    assert sha256(both) == sha256(two_variants)  # every variant: the pack as pushed

    with pytest.raises(
        trtpack.RegistryError, match=r"no engine variant 'sm90' \(it has: rtx_sm80, rtx_sm86\)"
    ):
        oci.pull(ref, tmp_path / "x.trtpack", variants=["sm90"])
    assert not (tmp_path / "x.trtpack").exists()


def test_pull_variants_auto_takes_what_fits_this_machine(registry, two_variants, tmp_path):
    from trtpack.engines.select import Environment

    ref = f"oci://{registry}/models/auto:1"
    oci.push(two_variants, ref)
    target = trtpack.inspect(two_variants).manifest.engines[0].target
    ada = Environment(gpu=(8, 6), runtimes={"tensorrt_rtx": target.trt_version},
                      torch_tensorrt="2.14.1", torch_tensorrt_flavor="tensorrt_rtx",
                      cuda_runtime=target.cuda_runtime, platform=target.platform or "")  # fmt: skip
    out = tmp_path / "auto.trtpack"
    pulled = oci.pull(ref, out, variants="auto", environment=ada)
    assert pulled.variants == ("rtx_sm86",) and _engines(out) == ["rtx_sm86"]
    assert pulled.left_out == {"rtx_sm80": "built for compute capability 8.0; this GPU is 8.6"}
    trtpack.verify(out)

    cpu = tmp_path / "cpu.trtpack"
    pulled = oci.pull(ref, cpu, variants="auto", environment=Environment())
    assert pulled.variants == () and set(pulled.left_out.values()) == {
        "no CUDA GPU on this machine"
    }
    assert trtpack.verify(cpu).manifest.program is not None


@pytest.mark.no_gpu
def test_cli_pull_variants(registry, two_variants, tmp_path):
    ref = f"oci://{registry}/models/cli-variants:1"
    assert cli("push", str(two_variants), ref).returncode == 0
    out = tmp_path / "one.trtpack"
    r = cli("pull", ref, "-o", str(out), "--variant", "rtx_sm80")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("engine variants: rtx_sm80") and _engines(out) == ["rtx_sm80"]
    assert r.stderr == "trtpack: note: left out variant rtx_sm86: not asked for\n"
    assert cli("verify", str(out)).returncode == 0

    auto = tmp_path / "auto.trtpack"
    r = cli("pull", ref, "-o", str(auto), "--variants", "auto")
    assert r.returncode == 0, r.stderr
    assert "engine variants: none (the program only)" in r.stdout
    assert "left out variant rtx_sm80: no CUDA GPU on this machine" in r.stderr
    assert _engines(auto) == [] and cli("verify", str(auto)).returncode == 0

    r = cli("pull", ref, "-o", str(tmp_path / "x.trtpack"), "--variant", "nope")
    assert r.returncode == 1
    assert (
        r.stderr.startswith("trtpack: error: ") and "name one of those with --variant" in r.stderr
    )
    r = cli("pull", ref, "-o", str(tmp_path / "x.trtpack"), "--variant", "a", "--variants", "auto")
    assert r.returncode == 2  # one or the other


# --- progress, transport, credentials --------------------------------------------------------


def test_progress_only_on_a_terminal_or_when_asked(registry, two_variants, tmp_path):
    import pty

    ref = f"oci://{registry}/models/progress:1"
    r = cli("push", str(two_variants), ref)
    assert r.returncode == 0 and r.stderr == ""  # not a terminal: stderr stays clean
    assert "member(s) uploaded" in r.stdout and "\r" not in r.stdout
    r = cli("pull", ref, "-o", str(tmp_path / "a.trtpack"))
    assert r.returncode == 0 and r.stderr == "" and r.stdout.count("\n") == 1

    r = cli("pull", ref, "-o", str(tmp_path / "b.trtpack"), "--progress")
    assert r.returncode == 0 and "\r" not in r.stderr  # asked for, in a log: a line per blob
    assert "pull engines/rtx_sm86/engine.plan  " in r.stderr and "received" in r.stderr
    r = cli("push", str(two_variants), ref.replace(":1", ":2"), "--progress")
    assert "already in the registry" in r.stderr

    def on_a_terminal(*args: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        p = subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        p.communicate()
        os.close(master)
        return p.returncode, seen.decode()

    code, err = on_a_terminal("pull", ref, "-o", str(tmp_path / "c.trtpack"))
    assert code == 0 and "\r" in err and "100%" in err and err.endswith("\n")
    code, err = on_a_terminal("pull", ref, "-o", str(tmp_path / "d.trtpack"), "--quiet")
    assert code == 0 and err == ""
    assert sha256(tmp_path / "c.trtpack") == sha256(two_variants)


def test_plain_http_is_explicit(registry, pack):
    def plain(ref: str, flag=None) -> bool:
        return oci.uses_plain_http(oci.parse_reference(ref), flag)

    assert not plain("oci://registry.example.com/models/x:1")  # TLS unless asked
    assert not plain("oci://10.0.0.5:5000/models/x:1")
    assert plain("oci://registry.example.com/models/x:1", True)
    assert plain("oci://127.0.0.1:5000/models/x:1") and plain("oci://localhost:5000/models/x:1")
    assert not plain("oci://127.0.0.1:5000/models/x:1", False)

    start = time.monotonic()
    with pytest.raises(
        trtpack.RegistryError,
        match=r"TLS with the registry at 127.0.0.1:\d+ failed .*pass plain_http=True \(--plain-http\)",
    ):
        oci.push(pack, f"oci://{registry}/models/tls:1", plain_http=False)
    assert time.monotonic() - start < 10  # at once, not after oras-py's two minutes of retries
    r = cli("push", str(pack), f"oci://{registry}/models/tls:1", "--no-plain-http")
    assert r.returncode == 1 and "if it serves plain HTTP, pass --plain-http" in r.stderr
    r = cli("push", str(pack), f"oci://{registry}/models/tls:1", "--plain-http")
    assert r.returncode == 0, r.stderr


def test_credentials_from_the_docker_config(auth_registry, pack, tmp_path, monkeypatch):
    host = auth_registry.host
    ref = f"oci://{host}/models/private:1"
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no ~/.docker/config.json of the machine's user
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    with pytest.raises(
        trtpack.RegistryError,
        match=rf"the registry at {host} asks for a user name and password.*docker login {host}",
    ):
        oci.push(pack, ref)
    wrong = docker_config(tmp_path / "wrong" / "config.json", host, "alice", "guess")
    with pytest.raises(trtpack.RegistryError, match="refused the user name and password"):
        oci.push(pack, ref, registry_config=wrong)
    with pytest.raises(trtpack.RegistryError, match="registry config .* does not exist"):
        oci.push(pack, ref, registry_config=tmp_path / "missing.json")

    good = docker_config(tmp_path / "good" / "config.json", host, "alice", "s3cret")
    assert oci.push(pack, ref, registry_config=good).uploaded
    out = tmp_path / "private.trtpack"
    oci.pull(ref, out, registry_config=good)
    assert sha256(out) == sha256(pack)

    # the command, with credentials where docker login puts them: ~/.docker/config.json
    env = {**os.environ, "HOME": str(home)}
    env.pop("DOCKER_CONFIG", None)
    r = cli("inspect", ref, env=env)
    assert r.returncode == 1 and f"docker login {host}" in r.stderr
    assert "--registry-config PATH" not in r.stderr and "--registry-config" in r.stderr
    docker_config(home / ".docker" / "config.json", host, "alice", "s3cret")
    r = cli("push", str(pack), ref.replace(":1", ":2"), env=env)
    assert r.returncode == 0, r.stderr
    r = cli("inspect", ref, env=env)
    assert r.returncode == 0 and "registry modelpack layout" in r.stdout
    (home / ".docker" / "config.json").unlink()
    # and in $DOCKER_CONFIG/config.json
    env["DOCKER_CONFIG"] = str(good.parent)
    out2 = tmp_path / "cli.trtpack"
    r = cli("pull", ref, "-o", str(out2), env=env)
    assert r.returncode == 0, r.stderr
    assert sha256(out2) == sha256(pack)


# --- errors ---------------------------------------------------------------------------------


def test_errors(registry, pack, tmp_path):
    down = free_port()
    with pytest.raises(
        trtpack.RegistryError, match=rf"cannot reach the registry at 127.0.0.1:{down}"
    ):
        oci.push(pack, f"oci://127.0.0.1:{down}/models/x:1")
    for bad in (
        "oci://127.0.0.1:5000",
        "oci://host/Upper/Case:1",
        "models/x:1",
        "oci://h/x:bad tag",
    ):
        with pytest.raises(trtpack.RegistryError, match="is not an OCI reference"):
            oci.push(pack, bad)
    with pytest.raises(trtpack.RegistryError, match="layout must be one of modelpack, trtpack"):
        oci.push(pack, f"oci://{registry}/models/x:1", layout="tar")
    with pytest.raises(
        trtpack.RegistryError, match=r"nothing at oci://127.0.0.1:\d+/models/missing:1"
    ):
        oci.pull(f"oci://{registry}/models/missing:1", tmp_path / "x.trtpack")
    with pytest.raises(trtpack.RegistryError, match=r"nothing at oci://"):
        oci.inspect(f"oci://{registry}/models/missing:1")
    assert not (tmp_path / "x.trtpack").exists()
    out = tmp_path / "exists.trtpack"
    out.write_bytes(b"keep me")
    with pytest.raises(trtpack.OutputExistsError, match="exists; pass overwrite=True"):
        oci.pull(f"oci://{registry}/models/anything:1", out)
    assert out.read_bytes() == b"keep me"

    damaged = tmp_path / "damaged.trtpack"
    data = bytearray(pack.read_bytes())
    weights = trtpack.inspect(pack).manifest.members["program/weights.safetensors"]
    with PackReader(pack) as reader:  # flip a byte inside the weights' data
        data[reader.info("program/weights.safetensors").offset + weights.size // 2] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(
        trtpack.IntegrityError,
        match="program/weights.safetensors: the registry computed another SHA-256",
    ):
        oci.push(damaged, f"oci://{registry}/models/damaged:1")

    pushed = oci.push(pack, f"oci://{registry}/models/bydigest:1")
    by_digest = f"oci://{registry}/models/bydigest@{pushed.manifest_digest}"
    oci.pull(by_digest, tmp_path / "d.trtpack")
    assert sha256(tmp_path / "d.trtpack") == sha256(pack)


def test_an_artifact_that_is_not_a_pack(registry, tmp_path):
    import oras.client
    import oras.provider

    other = tmp_path / "readme.txt"
    other.write_text("not a model")
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    client.push(
        target=f"{registry}/misc/readme:1", files=[str(other)], disable_path_validation=True
    )
    with pytest.raises(trtpack.RegistryError, match="is not a trtpack artifact"):
        oci.pull(f"oci://{registry}/misc/readme:1", tmp_path / "x.trtpack")

    # a ModelPack model from another tool: no trtpack manifest.json among its layers
    provider = oras.provider.Registry(hostname=registry, insecure=True)
    container = provider.get_container(f"{registry}/misc/model:1")
    config = tmp_path / "config.json"
    config.write_text('{"descriptor":{},"config":{},"modelfs":{"type":"layers","diffIds":[]}}')
    blobs = []
    for path, media_type in ((config, oci.MODELPACK_CONFIG_TYPE), (other, oci.MODELPACK_WEIGHT)):
        data = path.read_bytes()
        blob = {"mediaType": media_type, "size": len(data),
                "digest": "sha256:" + hashlib.sha256(data).hexdigest()}  # fmt: skip
        provider.upload_blob(str(path), container, blob)
        blobs.append(blob)
    blobs[1]["annotations"] = {oci.FILEPATH: "readme.txt"}
    provider.upload_manifest({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                              "artifactType": oci.MODELPACK_ARTIFACT_TYPE, "config": blobs[0],
                              "layers": [blobs[1]]}, container)  # fmt: skip
    with pytest.raises(
        trtpack.RegistryError, match="is a ModelPack model but not a trtpack artifact"
    ):
        oci.inspect(f"oci://{registry}/misc/model:1")


def test_cli(registry, pack, tmp_path):
    ref = f"oci://{registry}/models/cli:1"
    r = cli("push", str(pack), ref)
    assert r.returncode == 0 and "member(s) uploaded" in r.stdout, r.stderr
    assert "modelpack layout" in r.stdout
    out = tmp_path / "cli.trtpack"
    r = cli("pull", ref, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sha256(out) == sha256(pack)
    r = cli("pull", ref, "-o", str(out))
    assert r.returncode == 1 and "exists" in r.stderr and "pass --force" in r.stderr
    r = cli("pull", ref, "-o", str(out), "--force", "--json")
    data = json.loads(r.stdout)
    assert data["layout"] == "modelpack" and data["digest"] == trtpack.inspect(pack).digest
    r = cli("push", str(pack), ref.replace(":1", ":t"), "--layout", "trtpack", "--json")
    assert json.loads(r.stdout)["layout"] == "trtpack" and json.loads(r.stdout)["uploaded"] == []


# --- the signature travels as an OCI referrer -----------------------------------------------


def _keypair(folder: Path) -> tuple[Path, Path]:
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "signer.key", folder / "signer.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return private, public


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_signed_pack_verifies_after_push_and_pull(server, pack, tmp_path, layout):
    """Debian's docker-registry 2.8 has no referrers API: the signature manifest is listed in
    the referrers tag schema's index, ``sha256-<hex of the model manifest digest>``."""
    import requests

    from trtpack.signing import BUNDLE_MEDIA_TYPE, sign, verify_signature

    private, public = _keypair(tmp_path)
    sign(pack, private)
    ref = f"oci://{server.host}/models/signed-{layout}:1"
    pushed = oci.push(pack, ref, layout=layout)
    assert pushed.signature is not None and pushed.referrers == "tag"

    # what any OCI 1.1 client sees: the index at the referrers tag lists the signature
    tag = "sha256-" + pushed.manifest_digest.split(":")[1]
    r = requests.get(f"http://{server.host}/v2/models/signed-{layout}/manifests/{tag}",
                     headers={"Accept": oci.OCI_INDEX}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    index = r.json()
    assert index["mediaType"] == oci.OCI_INDEX
    assert index["manifests"] == [{"mediaType": oci.OCI_MANIFEST, "digest": pushed.signature,
                                   "size": index["manifests"][0]["size"],
                                   "artifactType": BUNDLE_MEDIA_TYPE}]  # fmt: skip
    r = requests.get(f"http://{server.host}/v2/models/signed-{layout}/manifests/{pushed.signature}",
                     headers={"Accept": oci.OCI_MANIFEST}, timeout=10)  # fmt: skip
    referrer = r.json()
    assert referrer["subject"]["digest"] == pushed.manifest_digest
    assert referrer["artifactType"] == BUNDLE_MEDIA_TYPE
    assert referrer["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert referrer["layers"][0]["digest"] == "sha256:" + sha256(Path(f"{pack}.sig"))

    out = tmp_path / "pulled" / "model.trtpack"
    out.parent.mkdir()
    pulled = oci.pull(ref, out)
    assert pulled.signature == f"{out}.sig"
    assert Path(f"{out}.sig").read_bytes() == Path(f"{pack}.sig").read_bytes()
    verify_signature(out, public)  # the pulled pack verifies
    r = cli("verify", str(out), "--key", str(public))
    assert r.returncode == 0 and "signature" in r.stdout and "verified" in r.stdout, r.stderr

    # pushed again (another tag, same manifest): listed once
    again = oci.push(pack, ref.replace(":1", ":2"), layout=layout)
    assert again.signature == pushed.signature
    r = requests.get(f"http://{server.host}/v2/models/signed-{layout}/manifests/{tag}",
                     headers={"Accept": oci.OCI_INDEX}, timeout=10)  # fmt: skip
    assert len(r.json()["manifests"]) == 1

    # pulled by digest, and with the CLI
    by_digest = f"oci://{server.host}/models/signed-{layout}@{pushed.manifest_digest}"
    out2 = tmp_path / "cli.trtpack"
    r = cli("pull", by_digest, "-o", str(out2))
    assert r.returncode == 0 and f"signature {out2}.sig" in r.stdout, r.stderr
    assert cli("verify", str(out2), "--key", str(public)).returncode == 0


def test_signature_edge_cases(registry, pack, tmp_path):
    from trtpack.signing import sign

    private, public = _keypair(tmp_path)
    ref = f"oci://{registry}/models/sig-edges:1"

    # unsigned: nothing attached; a pull over a stale signature (--force) removes it
    pushed = oci.push(pack, ref)
    assert pushed.signature is None
    out = tmp_path / "out.trtpack"
    stale = Path(f"{out}.sig")
    stale.write_text("{}")
    with pytest.raises(trtpack.OutputExistsError, match=r"out.trtpack.sig exists"):
        oci.pull(ref, out)  # OUT.sig is an output too
    assert not out.exists()
    pulled = oci.pull(ref, out, overwrite=True)
    assert pulled.signature is None and not stale.exists()
    assert "no signature" in pulled.signature_note and "removed the stale" in pulled.signature_note
    r = cli("verify", str(out), "--key", str(public))
    assert r.returncode == 1 and "not signed" in r.stderr

    # a stale PACK.sig (signed before the pack changed, put back after add_engine removed it)
    # is refused before anything is sent
    old = sign(pack, private).read_bytes()
    with pytest.warns(UserWarning, match="removed .*no longer matches"):
        trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)))
    Path(f"{pack}.sig").write_bytes(old)
    with pytest.raises(trtpack.RegistryError, match=r"signs another manifest.json .* stale"):
        oci.push(pack, ref.replace(":1", ":stale"))
    r = cli("push", str(pack), ref.replace(":1", ":stale"))
    assert r.returncode == 1 and "--no-signature" in r.stderr
    assert cli("push", str(pack), ref.replace(":1", ":stale"), "--no-signature").returncode == 0
    sign(pack, private)
    pushed = oci.push(pack, ref.replace(":1", ":2"))
    assert pushed.signature

    # some variants only: another manifest.json than the one signed, so no signature written
    part = tmp_path / "part.trtpack"
    pulled = oci.pull(ref.replace(":1", ":2"), part, variants="none")
    assert pulled.signature is None and not Path(f"{part}.sig").exists()
    assert "some engine variants only" in pulled.signature_note
    # signature=False: the pull leaves OUT.sig alone
    plain = tmp_path / "plain.trtpack"
    assert oci.pull(ref.replace(":1", ":2"), plain, signature=False).signature is None
    assert not Path(f"{plain}.sig").exists()
