"""OCI transfers against a registry that misbehaves: a real HTTP server on 127.0.0.1 (the
standard library's, in a thread) that stalls, sends endless bodies, loops redirects, nests
JSON 100,000 deep or types fields wrongly, at every request a push, pull or inspect makes.
Every case must end in a RegistryError (or IntegrityError for bytes that do not match) within
seconds, with bounded memory, and leave nothing outside the output. Timeouts are 1 s here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import trtpack
from trtpack.format.container import PackReader
from trtpack.integrations import oci
from trtpack.reading import open_pack

pytest.importorskip("oras")
pytest.importorskip("requests")
FIXTURES = Path(__file__).parent / "fixtures"
PACK = FIXTURES / "v1.0" / "keywords.trtpack"
REPO = "models/x"
TIMEOUT = 1.0  # every request in these tests: 1 s of silence at most

Handler = Callable[["_Handler"], None]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _any(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.registry.seen.append((self.command, path, dict(self.headers)))
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        try:
            self.server.registry.answer(self, path)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    do_GET = do_HEAD = do_POST = do_PUT = _any

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             length: bool = True) -> None:  # fmt: skip
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def endless(self, status: int = 200, headers: dict[str, str] | None = None,
                start: bytes = b"") -> None:  # fmt: skip
        """Headers, then bytes until the client hangs up (or the test ends)."""
        self.close_connection = True
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(start)
        chunk = b"[" * 65536
        stop = self.server.registry.stop
        while not stop.is_set():
            self.wfile.write(chunk)

    def stall(self, status: int | None = None, start: bytes = b"", length: int = 0) -> None:
        """Say nothing (or the headers, declaring ``length``, and ``start`` only) until the
        test ends."""
        self.close_connection = True
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(start)
            self.wfile.flush()
        self.server.registry.stop.wait(60)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: Registry


@dataclass
class Registry:
    """A registry serving one pack (trtpack layout) under ``models/x:1``, well by default;
    ``routes`` (path -> handler) make any request misbehave."""

    host: str = ""
    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[tuple[str, str, dict]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    bearer: str | None = None  # a token the registry demands (from /token)
    referrers_api: bool = False  # takes pushes and lists referrers (OCI 1.1), else read-only

    @property
    def ref(self) -> str:
        return f"oci://{self.host}/{REPO}:1"

    def answer(self, h: _Handler, path: str) -> None:
        if path in self.routes:
            return self.routes[path](h)
        if self.bearer and path != "/token" and \
                h.headers.get("Authorization") != f"Bearer {self.bearer}":  # fmt: skip
            realm = f'Bearer realm="http://{self.host}/token",service="test",scope="repository:{REPO}:pull"'
            return h.send(401, b"{}", {"WWW-Authenticate": realm})
        if path == "/v2/":
            return h.send(200, b"{}")
        if path == "/token":
            return h.send(200, json.dumps({"token": self.bearer}).encode())
        if self.referrers_api and h.command in ("POST", "PUT"):
            return self.take(h, path)
        if self.referrers_api and path.startswith(f"/v2/{REPO}/referrers/"):
            subject = path.rsplit("/", 1)[1]
            listed = [
                {"mediaType": oci.OCI_MANIFEST, "digest": sha(raw), "size": len(raw),
                 "artifactType": json.loads(raw).get("artifactType")}
                for raw in self.manifests.values()
                if json.loads(raw).get("subject", {}).get("digest") == subject
            ]  # fmt: skip
            index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": listed}
            return h.send(200, json.dumps(index).encode(), {"Content-Type": oci.OCI_INDEX})
        kind, _, name = path.removeprefix(f"/v2/{REPO}/").partition("/")
        store = {"manifests": self.manifests, "blobs": self.blobs}.get(kind, {})
        if name in store:
            body = store[name]
            ctype = oci.OCI_MANIFEST if kind == "manifests" else "application/octet-stream"
            return h.send(200, body, {"Content-Type": ctype, "Docker-Content-Digest": sha(body)})
        return h.send(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

    def take(self, h: _Handler, path: str) -> None:
        """Uploads: POST starts one, PUT ?digest= stores the blob; PUT of a manifest stores it
        under its tag and its digest, answering OCI-Subject as a registry with the referrers
        API does."""
        if path == f"/v2/{REPO}/blobs/uploads/":
            return h.send(202, b"", {"Location": "/upload/1"})
        if path == "/upload/1":
            digest = h.path.split("digest=", 1)[1]
            assert sha(h.body) == digest.replace("%3A", ":")
            self.blobs[sha(h.body)] = h.body
            return h.send(201)
        name = path.removeprefix(f"/v2/{REPO}/manifests/")
        self.manifests[name] = self.manifests[sha(h.body)] = h.body
        subject = json.loads(h.body).get("subject")
        return h.send(201, b"", {"OCI-Subject": subject["digest"]} if subject else {})

    def serve(self, pack: Path, raw: bytes | None = None) -> dict:
        """Serve ``pack`` in the trtpack layout (``raw``: another manifest.json in its place)."""
        with open_pack(pack) as (reader, info):
            real = reader.read("manifest.json")
            manifest, extra = oci._build(info, real, "trtpack", None)
            for name in info.manifest.members:
                self.blobs[f"sha256:{info.manifest.members[name].sha256}"] = reader.read(name)
        self.blobs.update(extra)
        if raw is not None:
            self.blobs[sha(raw)] = raw
            manifest["config"] = {"mediaType": oci.CONFIG_TYPE, "digest": sha(raw),
                                  "size": len(raw)}  # fmt: skip
        self.put(manifest)
        return manifest

    def put(self, manifest: dict) -> None:
        self.manifests["1"] = json.dumps(manifest).encode()

    def gets(self, kind: str) -> list[str]:
        return [p for m, p, _ in self.seen if m == "GET" and f"/{kind}/" in p]


@pytest.fixture
def registry():
    reg = Registry()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.registry = reg
    reg.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield reg
    reg.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def out(tmp_path):
    """Where a pull writes; the test checks that nothing else appears in its folder."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder / "pulled.trtpack"


def nothing_written(out: Path) -> None:
    assert list(out.parent.iterdir()) == [], list(out.parent.iterdir())


def fails(call: Callable[[], object], error: type[Exception], match: str,
          seconds: float = 5.0) -> Exception:  # fmt: skip
    start = time.monotonic()
    with pytest.raises(error, match=match) as info:
        call()
    took = time.monotonic() - start
    assert took < seconds, f"took {took:.1f} s"
    return info.value


# --- stalls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/v2/", "manifest", "token"])
def test_a_stalled_answer_is_a_registry_error_after_the_timeout(registry, where):
    registry.serve(PACK)
    if where == "token":
        registry.bearer = "t0k"
        registry.routes["/token"] = lambda h: h.stall()
    else:
        path = "/v2/" if where == "/v2/" else f"/v2/{REPO}/manifests/1"
        registry.routes[path] = lambda h: h.stall()
    e = fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError,
              r"sent nothing for 1 s .*timeout=SECONDS \(--timeout, TRTPACK_OCI_TIMEOUT\)")  # fmt: skip
    assert e.field == "timeout" and e.limit == TIMEOUT


def test_a_blob_that_stalls_midway_leaves_nothing(registry, out):
    registry.serve(PACK)
    weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
    data = registry.blobs[f"sha256:{weights.sha256}"]
    path = f"/v2/{REPO}/blobs/sha256:{weights.sha256}"
    registry.routes[path] = lambda h: h.stall(200, data[:100], len(data))
    fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT), trtpack.RegistryError,
          "sent nothing for 1 s")  # fmt: skip
    nothing_written(out)


def test_a_body_that_trickles_is_cut_at_the_timeout(registry):
    """A byte every 0.2 s: each read is within the timeout, the whole answer is not."""
    registry.serve(PACK)

    def trickle(h: _Handler) -> None:
        h.close_connection = True
        h.send_response(200)
        h.end_headers()
        while not registry.stop.wait(0.2):
            h.wfile.write(b" ")
            h.wfile.flush()

    registry.routes[f"/v2/{REPO}/manifests/1"] = trickle
    fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError,
          r"took more than 1 s")  # fmt: skip


def test_the_default_timeout_comes_from_the_environment(registry, monkeypatch):
    registry.serve(PACK)
    registry.routes[f"/v2/{REPO}/manifests/1"] = lambda h: h.stall()
    monkeypatch.setenv("TRTPACK_OCI_TIMEOUT", "0.5")
    fails(lambda: oci.inspect(registry.ref), trtpack.RegistryError, "sent nothing for 0.5 s",
          seconds=3)  # fmt: skip
    monkeypatch.setenv("TRTPACK_OCI_TIMEOUT", "soon")
    with pytest.raises(trtpack.RegistryError, match="TRTPACK_OCI_TIMEOUT must be a positive"):
        oci.inspect(registry.ref)
    with pytest.raises(trtpack.RegistryError, match="timeout must be a positive"):
        oci.inspect(registry.ref, timeout=0)


# --- endless bodies --------------------------------------------------------------------------

ENDLESS = {
    "manifest": (f"/v2/{REPO}/manifests/1", 200, "the OCI manifest is more than 4194304 bytes"),
    "/v2/ ping": ("/v2/", 200, None),  # read 64 KiB at most and go on: then the manifest
    "404 body": (f"/v2/{REPO}/manifests/1", 404, "nothing at"),
    "500 body": (f"/v2/{REPO}/manifests/1", 500, r"HTTP 500 \[\[\["),
    "token": ("/token", 200, "the token service's answer is more than 1048576 bytes"),
}


@pytest.mark.parametrize("case", list(ENDLESS))
def test_an_endless_body_is_read_up_to_a_cap(registry, case):
    registry.serve(PACK)
    path, status, match = ENDLESS[case]
    if case == "token":
        registry.bearer = "t0k"
    registry.routes[path] = lambda h: h.endless(status)
    if match is None:  # the ping is not parsed: 64 KiB of it read, then the real requests
        assert oci.inspect(registry.ref, timeout=TIMEOUT).layout == "trtpack"
        return
    fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError, match)


def test_a_declared_length_over_the_cap_is_refused_before_reading(registry):
    registry.serve(PACK)

    def huge(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 40))
        h.end_headers()
        registry.stop.wait(60)

    registry.routes[f"/v2/{REPO}/manifests/1"] = huge
    e = fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError,
              "the OCI manifest is 1099511627776 bytes, over trtpack's limit of 4194304",
              seconds=1)  # fmt: skip
    assert (e.limit, e.value) == (4 << 20, 1 << 40)


#: runs the CLI and, at exit, reports its own peak RSS (VmHWM, of the process after exec: the
#: rusage of a child would count the forking test process's memory too)
_PEAK = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            sys.stderr.write('\\npeak ' + line.split()[1] + '\\n')\n"
    "atexit.register(peak)\n"
    "sys.argv = ['trtpack', *sys.argv[1:]]\n"
    "runpy.run_module('trtpack', run_name='__main__', alter_sys=True)\n"
)


def _run(args: list[str]) -> tuple[int, str, float, int]:
    """The CLI in a child process: (exit status, stderr, seconds, peak RSS in MiB)."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True)
    err, _, peak = r.stderr.rstrip().rpartition("\npeak ")
    return r.returncode, err.strip() + "\n", time.monotonic() - start, int(peak) // 1024


@pytest.mark.parametrize("case", ["manifest", "500 body", "token", "blob"])
def test_the_cli_stays_small_and_quick_against_endless_bodies(registry, out, case):
    """Before: RSS past 2 GiB within 10-36 s. Now: refused at the cap, RSS that of a bare
    `trtpack inspect`, in about a second."""
    registry.serve(PACK)
    if case == "blob":
        weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
        registry.routes[f"/v2/{REPO}/blobs/sha256:{weights.sha256}"] = lambda h: h.endless()
        args = ["pull", registry.ref, "-o", str(out)]
    else:
        path, status, _ = ENDLESS[case]
        if case == "token":
            registry.bearer = "t0k"
        registry.routes[path] = lambda h: h.endless(status)
        args = ["inspect", registry.ref]
    code, err, seconds, rss = _run([*args, "--timeout", "1"])
    print(f"\n{case}: exit {code} in {seconds:.2f} s, max RSS {rss} MiB: {err.strip()[:120]}")
    assert code == 1 and err.startswith("trtpack: error: "), err
    assert seconds < 10 and rss < 80
    nothing_written(out)


# --- blobs: at most what the descriptor says ------------------------------------------------


def test_a_blob_longer_than_its_descriptor_is_cut_at_the_first_extra_byte(registry, out):
    registry.serve(PACK)
    weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
    data = registry.blobs[f"sha256:{weights.sha256}"]
    registry.routes[f"/v2/{REPO}/blobs/sha256:{weights.sha256}"] = lambda h: h.endless(start=data)
    e = fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT), trtpack.IntegrityError,
              f"program/weights.safetensors from the registry is larger than its {weights.size}")  # fmt: skip
    assert e.field == "size"
    nothing_written(out)


def test_a_blob_whose_bytes_differ_is_refused(registry, out):
    registry.serve(PACK)
    weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
    key = f"sha256:{weights.sha256}"
    registry.blobs[key] = bytes(len(registry.blobs[key]))  # right size, wrong bytes
    fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT), trtpack.IntegrityError,
          "does not match its digest")  # fmt: skip
    nothing_written(out)


def _declaring(size: int) -> bytes:
    """The fixture's manifest.json with its weights member declared ``size`` bytes."""
    with PackReader(PACK) as reader:
        data = json.loads(reader.read("manifest.json"))
    data["members"]["program/weights.safetensors"]["size"] = size
    return json.dumps(data).encode()


def test_a_pack_larger_than_max_size_is_refused_before_any_blob(registry, out):
    """A declared 1 TiB member (and a 1 TiB layer) with an endless blob: before, the disk
    filled; now refused before the first blob request, unless max_size is raised."""
    manifest = registry.serve(PACK, raw=_declaring(1 << 40))
    for layer in manifest["layers"]:
        if layer["annotations"][oci.TITLE] == "program/weights.safetensors":
            layer["size"] = 1 << 40
            weights = layer["digest"]
    registry.put(manifest)
    registry.routes[f"/v2/{REPO}/blobs/{weights}"] = lambda h: h.endless()
    e = fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT), trtpack.RegistryError,
              r"its members are \d+ bytes \(1024.0 GiB\), over the limit of 68719476736 \(64.0 GiB\);"
              r" raise it with max_size=BYTES \(--max-size\)")  # fmt: skip
    assert e.field == "max_size" and e.limit == oci.DEFAULT_MAX_SIZE
    assert registry.gets("blobs") == [f"/v2/{REPO}/blobs/{manifest['config']['digest']}"]
    # raised: this disk cannot hold it, which is said before anything is written
    fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT, max_size=1 << 41),
          trtpack.PackWriteError, "needs about 2048.0 GiB")  # fmt: skip
    assert len(registry.gets("blobs")) == 2
    nothing_written(out)
    small = trtpack.inspect(PACK).file_size // 2
    fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT, max_size=small),
          trtpack.RegistryError, "over the limit")  # fmt: skip


def test_cli_max_size(registry, out):
    registry.serve(PACK)
    code, err, _, _ = _run(["pull", registry.ref, "-o", str(out), "--max-size", "1K"])
    assert code == 1 and "over the limit of 1024 (1.0 KiB)" in err and "--max-size" in err
    nothing_written(out)
    code, err, _, _ = _run(["pull", registry.ref, "-o", str(out), "--max-size", "1M"])
    assert code == 0, err
    assert trtpack.verify(out).digest == trtpack.inspect(PACK).digest


# --- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["manifest", "blob", "ping"])
def test_a_redirect_loop_is_a_registry_error_at_once(registry, out, what):
    """Before: 133-136 s of oras-py retries. Now: 6 requests, then a RegistryError."""
    registry.serve(PACK)
    weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
    path = {"manifest": f"/v2/{REPO}/manifests/1", "ping": "/v2/",
            "blob": f"/v2/{REPO}/blobs/sha256:{weights.sha256}"}[what]  # fmt: skip
    registry.routes[path] = lambda h: h.endless(302, {"Location": path})  # endless body, too
    fails(lambda: oci.pull(registry.ref, out, timeout=TIMEOUT), trtpack.RegistryError,
          "redirected more than 5 times", seconds=2)  # fmt: skip
    assert [p for _, p, _ in registry.seen].count(path) == 6
    nothing_written(out)


def test_a_redirect_to_another_host_gets_no_credentials(registry, out, tmp_path):
    """A registry that sends blob downloads to storage elsewhere: the blob comes, the
    registry's token does not go with it."""
    storage = Registry()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.registry = storage
    storage.host = f"localhost:{server.server_address[1]}"  # another origin
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        registry.serve(PACK)
        registry.bearer = "s3cret-token"
        weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
        key = f"sha256:{weights.sha256}"
        storage.routes["/weights"] = lambda h: h.send(200, registry.blobs[key])
        registry.routes[f"/v2/{REPO}/blobs/{key}"] = lambda h: h.send(
            307, b"", {"Location": f"http://{storage.host}/weights"}
        )
        oci.pull(registry.ref, out, timeout=TIMEOUT)
        assert trtpack.verify(out).digest == trtpack.inspect(PACK).digest
        assert [p for _, p, _ in storage.seen] == ["/weights"]
        assert "Authorization" not in storage.seen[0][2]
        sent = [h.get("Authorization") for _, p, h in registry.seen if p.endswith(key)]
        assert sent == ["Bearer s3cret-token"]
    finally:
        storage.stop.set()
        server.shutdown()
        server.server_close()


# --- what the registry says: deep JSON, wrong types -----------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("where", ["manifest", "token", "pack manifest"])
def test_deep_json_is_a_registry_error(registry, out, where):
    """Before: RecursionError."""
    if where == "pack manifest":
        registry.serve(PACK, raw=b'{"a":' + DEEP + b"}")
    else:
        registry.serve(PACK)
    if where == "manifest":
        registry.manifests["1"] = DEEP
    elif where == "token":
        registry.bearer = "t0k"
        registry.routes["/token"] = lambda h: h.send(200, DEEP)
    for call in (lambda: oci.inspect(registry.ref, timeout=TIMEOUT),
                 lambda: oci.pull(registry.ref, out, timeout=TIMEOUT)):  # fmt: skip
        fails(call, trtpack.RegistryError, "nests deeper than 100|nesting depth")
    nothing_written(out)


def _pack_manifest(**changes: object) -> bytes:
    with PackReader(PACK) as reader:
        data = json.loads(reader.read("manifest.json"))
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    "raw",
    [
        _pack_manifest(format_version=["1", "0"]),  # before: TypeError
        _pack_manifest(format_version=[1]),
        _pack_manifest(members=[1, 2]),
        _pack_manifest(engines=[7]),
        b"[]",
        b"not json",
    ],
    ids=[
        "format_version strings",
        "format_version short",
        "members list",
        "engines numbers",
        "a list",
        "not json",
    ],
)
def test_a_wrongly_typed_pack_manifest_is_a_registry_error(registry, out, raw):
    registry.serve(PACK, raw=raw)
    for call in (lambda: oci.inspect(registry.ref, timeout=TIMEOUT),
                 lambda: oci.pull(registry.ref, out, timeout=TIMEOUT)):  # fmt: skip
        e = fails(call, trtpack.RegistryError, "the pack's manifest.json is not a valid trtpack")
        assert e.field == "manifest.json"
    nothing_written(out)


ZERO = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"config": {"mediaType": oci.CONFIG_TYPE, "digest": "sha256:../../x", "size": 10}},
            "manifest.json has no valid sha256 digest",
        ),
        (
            {"config": {"mediaType": oci.CONFIG_TYPE, "digest": ZERO, "size": "10"}},
            "the descriptor of manifest.json has no size",
        ),
        (
            {"config": {"mediaType": oci.CONFIG_TYPE, "digest": ZERO, "size": True}},
            "the descriptor of manifest.json has no size",
        ),
        (
            {"config": {"mediaType": oci.CONFIG_TYPE, "digest": ZERO, "size": 1 << 40}},
            "manifest.json is 1099511627776 bytes, over trtpack's limit of 16777216",
        ),
        ({"config": ["not", "a", "descriptor"]}, "is not an OCI image manifest"),
        ({"layers": {"not": "a list"}}, "is not an OCI image manifest"),
        ({"layers": [1, 2]}, "is not an OCI image manifest"),
    ],
    ids=[
        "digest path",
        "size string",
        "size bool",
        "size huge",
        "config list",
        "layers dict",
        "layers numbers",
    ],
)
def test_a_wrongly_typed_oci_manifest_is_a_registry_error(registry, out, change, match):
    manifest = registry.serve(PACK)
    registry.put({**manifest, **change})
    for call in (lambda: oci.inspect(registry.ref, timeout=TIMEOUT),
                 lambda: oci.pull(registry.ref, out, timeout=TIMEOUT)):  # fmt: skip
        fails(call, trtpack.RegistryError, match)
    nothing_written(out)
    assert registry.gets("blobs") == []  # refused from the manifest, before any blob


# --- a registry that behaves, through a token service ---------------------------------------


def test_bearer_token_auth_round_trip(registry, out):
    """The token dance every public registry does: 401 with a Bearer challenge, a token from
    its realm, the request again with it."""
    registry.serve(PACK)
    registry.bearer = "t0k"
    remote = oci.inspect(registry.ref, timeout=TIMEOUT)
    assert remote.info.digest == trtpack.inspect(PACK).digest
    oci.pull(registry.ref, out, timeout=TIMEOUT)
    assert out.read_bytes() == PACK.read_bytes()
    tokens = [p for m, p, _ in registry.seen if p == "/token"]
    assert len(tokens) == 2  # once per command: the token is reused
    registry.routes["/token"] = lambda h: h.send(200, b'{"token": ["not", "a", "string"]}')
    fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError,
          "gave no token")  # fmt: skip
    registry.routes["/token"] = lambda h: h.send(401, b"no")
    fails(lambda: oci.inspect(registry.ref, timeout=TIMEOUT), trtpack.RegistryError,
          r"token service .* refused .*HTTP 401")  # fmt: skip


# --- the signature through a registry with the OCI 1.1 referrers API ------------------------


def test_a_signature_through_the_referrers_api(registry, tmp_path, out):
    """Debian's registry (tests/test_oci.py) has no referrers API; this one answers
    OCI-Subject and lists referrers, so no ``sha256-<hex>`` tag is written."""
    pytest.importorskip("cryptography")
    from test_oci import _keypair

    from trtpack.signing import sign, verify_signature

    private, public = _keypair(tmp_path)
    pack = tmp_path / "model.trtpack"
    pack.write_bytes(PACK.read_bytes())
    sign(pack, private)
    registry.referrers_api = True
    pushed = oci.push(pack, registry.ref, timeout=TIMEOUT)
    assert pushed.referrers == "api" and pushed.signature in registry.manifests
    assert not any(name.startswith("sha256-") for name in registry.manifests)
    pulled = oci.pull(registry.ref, out, timeout=TIMEOUT)
    assert pulled.signature == f"{out}.sig"
    verify_signature(out, public)
    assert any("/referrers/" in p for _, p, _ in registry.seen)

    # a listed referrer whose manifest names another subject is refused, nothing written
    other = json.loads(registry.manifests[pushed.signature])
    other["subject"]["digest"] = "sha256:" + "1" * 64
    raw = json.dumps(other).encode()
    registry.manifests[sha(raw)] = raw
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": sha(raw), "size": len(raw),
         "artifactType": other["artifactType"]}]}  # fmt: skip
    listing = f"/v2/{REPO}/referrers/{pushed.manifest_digest}"
    registry.routes[listing] = lambda h: h.send(200, json.dumps(index).encode())
    again = tmp_path / "again" / "model.trtpack"
    again.parent.mkdir()
    fails(lambda: oci.pull(registry.ref, again, timeout=TIMEOUT), trtpack.RegistryError,
          "the signature listed for .* names another subject")  # fmt: skip
    # and one served with other bytes than its digest
    registry.routes[f"/v2/{REPO}/manifests/{sha(raw)}"] = lambda h: h.send(200, raw + b" ")
    fails(lambda: oci.pull(registry.ref, again, timeout=TIMEOUT), trtpack.IntegrityError,
          "the registry served a manifest of")  # fmt: skip
    assert list(again.parent.iterdir()) == []


@pytest.mark.parametrize("where", ["blob check", "upload stalls", "upload answer endless",
                                   "manifest answer endless", "upload redirect loop"])  # fmt: skip
def test_push_against_a_misbehaving_registry(registry, tmp_path, where):
    registry.referrers_api = True  # takes uploads
    manifest = f"/v2/{REPO}/manifests/1"
    if where == "blob check":
        weights = trtpack.inspect(PACK).manifest.members["program/weights.safetensors"]
        registry.routes[f"/v2/{REPO}/blobs/sha256:{weights.sha256}"] = lambda h: h.stall()
        match = "sent nothing for 1 s while trying to check a blob"
    elif where == "upload stalls":
        registry.routes["/upload/1"] = lambda h: h.stall()
        match = "sent nothing for 1 s while trying to upload"
    elif where == "upload answer endless":
        registry.routes["/upload/1"] = lambda h: h.endless(201)
        match = None  # 64 KiB of it read, then on: the upload went through
    elif where == "manifest answer endless":
        registry.routes[manifest] = lambda h: h.endless(201)
        match = None
    else:
        loop = f"/v2/{REPO}/blobs/uploads/"
        registry.routes[loop] = lambda h: h.send(307, b"", {"Location": loop})
        match = "HTTP 307"  # a redirected POST is not followed: refused at once
    if match is None:
        start = time.monotonic()
        oci.push(PACK, registry.ref, timeout=TIMEOUT)
        assert time.monotonic() - start < 5
    else:
        fails(lambda: oci.push(PACK, registry.ref, timeout=TIMEOUT), trtpack.RegistryError, match)
