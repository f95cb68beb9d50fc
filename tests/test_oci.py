"""OCI registry, for real: Debian's docker-registry started by the test, listening on
127.0.0.1 only, storing in a temporary directory; stopped after."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rtx

import trtpack
from trtpack.integrations import oci

pytest.importorskip("oras")
REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(
    REGISTRY is None,
    reason="docker-registry is not installed (tools/setup.sh installs it with apt)",
)
FIXTURES = Path(__file__).parent / "fixtures"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    server = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=subprocess.DEVNULL,
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
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=20)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pack(tmp_path):
    path = tmp_path / "detector.trtpack"
    path.write_bytes((FIXTURES / "v1.0" / "keywords.trtpack").read_bytes())
    return path


def test_push_pull_round_trip_is_byte_identical(registry, pack, tmp_path):
    ref = f"oci://{registry}/models/detector:1"
    pushed = oci.push(pack, ref)
    assert pushed.skipped == [] and sorted(pushed.uploaded) == sorted(
        trtpack.inspect(pack).manifest.members
    )
    out = tmp_path / "pulled.trtpack"
    info = oci.pull(ref, out)
    assert sha256(out) == sha256(pack)  # the same bytes: a registry or cache sees one digest
    assert info.digest == trtpack.inspect(pack).digest
    trtpack.verify(out)


def test_manifest_shows_inputs_without_downloading_the_pack(registry, pack):
    ref = f"oci://{registry}/models/shown:1"
    oci.push(pack, ref)
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


def test_repushing_sends_only_what_changed(registry, pack, tmp_path):
    ref = f"oci://{registry}/models/dedup"
    first = oci.push(pack, f"{ref}:1")
    again = oci.push(pack, f"{ref}:2")
    assert again.uploaded == [] and again.manifest_digest == first.manifest_digest
    trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)))  # a new engine variant
    third = oci.push(pack, f"{ref}:3")
    assert third.uploaded == ["engines/rtx_sm80/engine.plan"]  # the program is not re-sent
    out = tmp_path / "v3.trtpack"
    oci.pull(f"{ref}:3", out)
    assert sha256(out) == sha256(pack)


def test_same_model_saved_twice_pushes_to_the_same_digest(registry, exported, tmp_path):
    _, _, ep = exported("keywords")
    a, b = tmp_path / "a.trtpack", tmp_path / "b.trtpack"
    trtpack.save(ep, a)
    trtpack.save(ep, b)
    ref = f"oci://{registry}/models/twice"
    assert oci.push(a, f"{ref}:a").manifest_digest == oci.push(b, f"{ref}:b").manifest_digest


def test_errors(registry, pack, tmp_path):
    down = _free_port()
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
    with pytest.raises(
        trtpack.RegistryError, match=r"nothing at oci://127.0.0.1:\d+/models/missing:1"
    ):
        oci.pull(f"oci://{registry}/models/missing:1", tmp_path / "x.trtpack")
    assert not (tmp_path / "x.trtpack").exists()
    out = tmp_path / "exists.trtpack"
    out.write_bytes(b"keep me")
    with pytest.raises(trtpack.OutputExistsError, match="exists; pass overwrite=True"):
        oci.pull(f"oci://{registry}/models/anything:1", out)
    assert out.read_bytes() == b"keep me"


def test_an_artifact_that_is_not_a_pack(registry, tmp_path):
    import oras.client

    other = tmp_path / "readme.txt"
    other.write_text("not a model")
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    client.push(
        target=f"{registry}/misc/readme:1", files=[str(other)], disable_path_validation=True
    )
    with pytest.raises(trtpack.RegistryError, match="is not a trtpack artifact"):
        oci.pull(f"oci://{registry}/misc/readme:1", tmp_path / "x.trtpack")


def test_cli(registry, pack, tmp_path):
    run = [sys.executable, "-m", "trtpack"]
    ref = f"oci://{registry}/models/cli:1"
    r = subprocess.run([*run, "push", str(pack), ref], capture_output=True, text=True)
    assert r.returncode == 0 and "member(s) uploaded" in r.stdout, r.stderr
    out = tmp_path / "cli.trtpack"
    r = subprocess.run([*run, "pull", ref, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sha256(out) == sha256(pack)
    r = subprocess.run([*run, "pull", ref, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "exists" in r.stderr
