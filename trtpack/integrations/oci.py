"""A pack in an OCI registry, through oras-py. No torch (except ``pull(variants="auto")``,
which asks torch what GPU this machine has).

    trtpack push model.trtpack oci://127.0.0.1:5000/models/detector:1
    trtpack inspect oci://127.0.0.1:5000/models/detector:1
    trtpack pull oci://127.0.0.1:5000/models/detector:1 -o model.trtpack [--variant NAME]

Two layouts, both with one layer per pack member whose digest is the member's SHA-256 (the
SHA-256 the pack's manifest already records), so the registry stores each member once across
tags, versions and layouts: re-pushing a pack whose engine changed uploads that engine only.

- ``modelpack`` (the default): the CNCF ModelPack layout (github.com/modelpack/model-spec),
  so ModelPack-aware tools (modctl, registries' model views) list and extract it.
  ``artifactType: application/vnd.cncf.model.manifest.v1+json``; the config blob is a
  ModelPack model config (``descriptor``, ``config``, ``modelfs``); every member, the pack's
  ``manifest.json`` included, is a raw layer (``...weight.v1.raw`` for ``.safetensors`` and
  ``.plan``, ``...weight.config.v1.raw`` for JSON) annotated with ``org.cncf.model.filepath``
  and ``org.opencontainers.image.title``: a ModelPack extract or ``oras pull`` gives the
  pack's members as a folder.
- ``trtpack``: ``artifactType: application/vnd.trtpack.v1``, the pack's ``manifest.json`` as
  the config blob (its digest is the pack's digest), one layer per member.

Both carry the ``dev.trtpack.*`` annotations (inputs, outputs, engines), shown by ``oras
manifest fetch`` without downloading anything else. ``inspect`` reads the OCI manifest and the
pack's ``manifest.json`` only. ``pull`` checks every blob against the manifest and reassembles
the pack with trtpack's deterministic writer: the same bytes as the file that was pushed, or,
with ``variants``, the same pack holding only the chosen engine variants.

Transport: HTTPS, except for loopback hosts (127.0.0.0/8, localhost, ::1), which default to
plain HTTP as Docker treats them; ``plain_http`` (``--plain-http`` / ``--no-plain-http``)
decides explicitly. Credentials come from the Docker config that oras-py reads
(``~/.docker/config.json``, ``auths`` entries keyed ``HOST[:PORT]``, as ``docker login``
writes them), from ``$DOCKER_CONFIG/config.json``, or from ``registry_config``
(``--registry-config``); oras-py reads them (credential helpers included).

Every request is trtpack's own, through requests, bounded against a registry that misbehaves:
connect and read timeouts (``timeout``, ``--timeout``, ``TRTPACK_OCI_TIMEOUT``; DEFAULT_TIMEOUT
by default), at most _MAX_REDIRECTS redirects, every answer that is not a blob (manifests,
indexes, the /v2/ ping, tokens, errors) read with a cap before it is parsed, blobs streamed to
disk up to their descriptor's size and hashed as they pass, a pull's total size under
``max_size`` (``--max-size``). No retries: a failure is a RegistryError at once.

The pack's signature (``PACK.sig``) travels as an OCI referrer of the model manifest (see
"the signature" below); ``pull`` writes it to ``OUT.sig``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.cookiejar
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import (
    IntegrityError,
    MissingDependencyError,
    NoUsableEngineError,
    OutputExistsError,
    PackWriteError,
    RegistryError,
    TrtpackError,
)
from ..format.container import (
    Chunks,
    FileSlice,
    PathLike,
    Source,
    source_size,
    write_pack,
)
from ..format.limits import (
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    json_depth,
    parse_manifest_json,
)
from ..format.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, dumps_canonical
from ..reading import PackInfo, format_shape, human_size, open_pack, render
from ..reading import inspect as inspect_pack

ARTIFACT_TYPE = "application/vnd.trtpack.v1"
CONFIG_TYPE = "application/vnd.trtpack.format.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

# CNCF ModelPack (github.com/modelpack/model-spec, docs/spec.md, config.md, annotations.md)
MODELPACK_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
MODELPACK_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODELPACK_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"
TITLE = "org.opencontainers.image.title"

LAYOUTS = ("modelpack", "trtpack")
DEFAULT_LAYOUT = "modelpack"
#: what ``pull(variants=...)`` takes besides a list of names
VARIANT_CHOICES = ("all", "auto", "none")

_LOOPBACK = ("localhost", "::1")
#: seconds a registry may take to accept a connection, to send the next bytes of an answer,
#: or to send a whole answer that is not a blob (``timeout=``, ``--timeout``, or the
#: environment variable ``TRTPACK_OCI_TIMEOUT``)
DEFAULT_TIMEOUT = 30.0
#: bytes of members a pull writes at most unless ``max_size`` (``--max-size``) raises it
DEFAULT_MAX_SIZE = 64 << 30
#: an OCI manifest is a few KiB; containerd refuses those over 4 MiB
_MAX_OCI_MANIFEST = 4 << 20
#: the /v2/ ping, upload answers, error bodies (only their first 200 characters are shown)
_MAX_SMALL_BODY = 64 << 10
#: a token service's JSON answer (a JWT is a few KiB)
_MAX_TOKEN_BODY = 1 << 20
#: registries redirect blob downloads to storage once; more than this is a loop
_MAX_REDIRECTS = 5
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20
#: what a ModelPack extract restores: a regular rw-r--r-- file dated like the pack's members
_FILE_MODE = 0o644
_MTIME = "1980-01-01T00:00:00Z"

_REF = re.compile(
    r"^oci://(?P<host>[A-Za-z0-9.-]+(?::\d+)?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def target(self) -> str:
        ref = f"{self.host}/{self.repository}"
        return f"{ref}@{self.digest}" if self.digest else f"{ref}:{self.tag or 'latest'}"

    @property
    def hostname(self) -> str:
        return self.host.rpartition(":")[0] if ":" in self.host else self.host


def parse_reference(ref: str) -> Reference:
    m = _REF.match(ref)
    if not m:
        raise RegistryError(
            f"{ref!r} is not an OCI reference: expected oci://HOST[:PORT]/REPOSITORY[:TAG] "
            "(lower-case repository), e.g. oci://127.0.0.1:5000/models/detector:1"
        )
    return Reference(m["host"], m["repo"], m["tag"], m["digest"])


def uses_plain_http(ref: Reference, plain_http: bool | None = None) -> bool:
    """Whether to talk plain HTTP to ``ref``'s registry: as asked, else only for a loopback
    host (Docker's rule: it trusts 127.0.0.0/8 without TLS); every other host gets HTTPS."""
    if plain_http is not None:
        return plain_http
    host = ref.hostname
    return host in _LOOPBACK or re.fullmatch(r"127(\.\d{1,3}){3}", host) is not None


# --- talking to the registry -----------------------------------------------------------------
#
# Every request goes through _Registry.request: connect and read timeouts, redirects followed
# by hand (at most _MAX_REDIRECTS, the body of a redirect never read, credentials never sent
# to another origin), one bearer-token round trip on a 401, and every body that is not a blob
# read with a cap before it is parsed. oras-py only reads the Docker config (credentials).


def _seconds(timeout: float | None) -> float:
    """The timeout to use: as given, else ``TRTPACK_OCI_TIMEOUT``, else DEFAULT_TIMEOUT."""
    where = "timeout"
    if timeout is None:
        env = os.environ.get("TRTPACK_OCI_TIMEOUT", "").strip()
        if not env:
            return DEFAULT_TIMEOUT
        where = "TRTPACK_OCI_TIMEOUT"
        try:
            timeout = float(env)
        except ValueError:
            timeout = math.nan
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not math.isfinite(timeout) or timeout <= 0:  # fmt: skip
        raise RegistryError(f"{where} must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


@dataclass
class _Registry:
    ref: Reference
    session: Any  # requests.Session
    prefix: str  # "http" or "https"
    timeout: float
    basic: str | None = None  # base64 "user:password" from a Docker config
    token: str | None = None  # the bearer token the last challenge gave

    @property
    def where(self) -> str:
        return f"oci://{self.ref.target}"

    def url(self, path: str) -> str:
        """``path`` (``/v2/...``) on the registry."""
        return f"{self.prefix}://{self.ref.host}{path}"

    def api(self, kind: str, name: str) -> str:
        """``/v2/REPOSITORY/KIND/NAME`` (kind: blobs, manifests, referrers)."""
        return self.url(f"/v2/{self.ref.repository}/{kind}/{name}")

    def request(self, what: str, method: str, url: str, *,
                headers: dict[str, str] | None = None, data: Any = None,
                allow: tuple[int, ...] = (), auth: bool = True) -> Any:  # fmt: skip
        """One request, its body not read yet (the caller reads it with a cap, or closes it).
        A status >= 400 not in ``allow`` is a RegistryError; 2xx and ``allow`` are returned."""
        response = self._send(what, method, url, headers or {}, data, auth)
        if response.status_code == 401 and auth and 401 not in allow:
            challenge = response.headers.get("WWW-Authenticate", "")
            response.close()
            if challenge[:6].lower() == "bearer":
                self.token = self._bearer_token(challenge, what)
                response = self._send(what, method, url, headers or {}, data, auth)
        status = response.status_code
        if status in allow or status < 300:
            return response
        if status in (401, 403):
            response.close()
            raise RegistryError(
                f"{what} at {self.ref.target}: the registry refused (HTTP {status}); `docker "
                f"login {self.ref.host}` or registry_config=PATH (--registry-config) give it "
                "credentials", reference=self.where, status=status,
            )  # fmt: skip
        text = _read(self, response, _MAX_SMALL_BODY, f"the answer to {what}", truncate=True)
        detail = text.decode("utf-8", "replace")[:200]
        raise RegistryError(f"{what} at {self.ref.target} failed: HTTP {status} {detail}",
                            reference=self.where, status=status)  # fmt: skip

    def _send(self, what: str, method: str, url: str, headers: dict[str, str], data: Any,
              auth: bool) -> Any:  # fmt: skip
        """Send, following at most _MAX_REDIRECTS redirects of a GET or HEAD by hand (requests
        would read each redirect's body whole)."""
        import requests

        origin = _origin(self.url("/"))
        for _ in range(_MAX_REDIRECTS + 1):
            sent = {"Accept-Encoding": "identity", **headers}
            if auth and _origin(url) == origin:  # credentials go to the registry only
                if self.token:
                    sent["Authorization"] = f"Bearer {self.token}"
                elif self.basic:
                    sent["Authorization"] = f"Basic {self.basic}"
            try:
                response = self.session.request(method, url, headers=sent, data=data,
                                                stream=True, allow_redirects=False,
                                                timeout=(self.timeout, self.timeout))  # fmt: skip
            except requests.exceptions.SSLError as e:
                reason = str(e.args[0] if e.args else e)
                raise RegistryError(
                    f"TLS with the registry at {self.ref.host} failed to {what} "
                    f"({reason[:160]}); if it serves plain HTTP, pass plain_http=True "
                    "(--plain-http)", reference=self.where,
                ) from None  # fmt: skip
            except requests.exceptions.Timeout:
                raise _timed_out(self, what) from None
            except requests.RequestException as e:
                if _timed_out_cause(e):
                    raise _timed_out(self, what) from None
                raise RegistryError(
                    f"cannot reach the registry at {self.ref.host} to {what} ({type(e).__name__})",
                    reference=self.where,
                ) from None
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location or \
                    method not in ("GET", "HEAD"):  # fmt: skip
                return response
            response.close()  # its body is never read
            url = urljoin(url, location)
            if not url.startswith(("http://", "https://")):
                raise RegistryError(f"{what}: the registry redirected to {location[:200]!r}, "
                                    "not an HTTP(S) URL", reference=self.where)  # fmt: skip
        raise RegistryError(
            f"{what}: the registry at {self.ref.host} redirected more than {_MAX_REDIRECTS} "
            "times (a redirect loop?)", reference=self.where,
        )  # fmt: skip

    def _bearer_token(self, challenge: str, what: str) -> str:
        """The token a ``WWW-Authenticate: Bearer realm=...`` challenge asks for, from its realm
        (with the Docker config's user and password when there are some; else anonymous)."""
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.get("realm", "")
        if not realm.startswith(("http://", "https://")):
            raise RegistryError(
                f"{what}: the registry at {self.ref.host} asks for a token from "
                f"{realm[:200]!r}, not an HTTP(S) URL", reference=self.where,
            )  # fmt: skip
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        headers = {"Accept": "application/json"}
        if self.basic:
            headers["Authorization"] = f"Basic {self.basic}"
        saved, self.token = self.token, None
        try:
            response = self._send(f"get a token to {what}", "GET", url, headers, None, False)
        finally:
            self.token = saved
        raw = _read(self, response, _MAX_TOKEN_BODY, "the token service's answer")
        if response.status_code != 200:
            raise RegistryError(
                f"the token service of {self.ref.host} ({realm[:200]}) refused to {what} "
                f"(HTTP {response.status_code}); `docker login {self.ref.host}` or "
                "registry_config=PATH (--registry-config) give it credentials",
                reference=self.where, status=response.status_code,
            )  # fmt: skip
        answer = _json(self, raw, "the token service's answer")
        token = answer.get("token") or answer.get("access_token") if isinstance(answer, dict) \
            else None  # fmt: skip
        if not isinstance(token, str) or not token or not token.isascii():
            raise RegistryError(f"the token service of {self.ref.host} gave no token",
                                reference=self.where, field="token")  # fmt: skip
        return token


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _timed_out_cause(e: BaseException) -> bool:
    """Whether a requests error is, underneath, a read timeout (urllib3 wraps them)."""
    import urllib3.exceptions

    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (urllib3.exceptions.TimeoutError, socket.timeout)):
            return True
        args = getattr(seen, "args", ())
        nested = next((a for a in args if isinstance(a, BaseException)), None)
        seen = nested or seen.__cause__ or seen.__context__
    return False


def _timed_out(reg: _Registry, what: str) -> RegistryError:
    return RegistryError(
        f"the registry at {reg.ref.host} sent nothing for {reg.timeout:g} s while trying to "
        f"{what}; raise the limit with timeout=SECONDS (--timeout, TRTPACK_OCI_TIMEOUT) if it "
        "is only slow", reference=reg.where, field="timeout", limit=reg.timeout,
    )  # fmt: skip


def _chunks(reg: _Registry, response: Any, what: str, size: int,
            eager: bool = False) -> Iterator[bytes]:  # fmt: skip
    """The body of ``response`` in chunks of at most ``size`` bytes, transport failures as
    RegistryError. ``eager``: each chunk is what has arrived (read1), so that a caller can
    stop a body that trickles in a byte at a time; else full chunks (blobs)."""
    import requests
    import urllib3.exceptions

    try:
        if eager:
            while chunk := response.raw.read1(size):
                yield chunk
        else:
            yield from response.iter_content(size)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
        if isinstance(e, (requests.exceptions.Timeout, socket.timeout)) or _timed_out_cause(e):
            raise _timed_out(reg, f"read {what}") from None
        raise RegistryError(f"reading {what} from {reg.ref.host} failed ({type(e).__name__})",
                            reference=reg.where) from None  # fmt: skip


def _read(reg: _Registry, response: Any, cap: int, what: str, truncate: bool = False) -> bytes:
    """A body that is not a blob (a manifest, an index, a token, an error), at most ``cap``
    bytes and within the timeout as a whole: over the cap it is refused (``truncate``: cut),
    before anything is parsed."""
    with response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap and not truncate:
            raise _too_large(reg, what, cap, int(declared))
        parts, got = [], 0
        deadline = time.monotonic() + reg.timeout
        for chunk in _chunks(reg, response, what, 64 << 10, eager=True):
            parts.append(chunk)
            got += len(chunk)
            if got > cap:
                if truncate:
                    break
                raise _too_large(reg, what, cap, got, at_least=True)
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"{what} from {reg.ref.host} took more than {reg.timeout:g} s ({got} bytes "
                    "so far); raise timeout=SECONDS (--timeout) if the registry is only slow",
                    reference=reg.where, field="timeout", limit=reg.timeout,
                )  # fmt: skip
        return b"".join(parts)[:cap]


def _too_large(reg: _Registry, what: str, cap: int, got: int, at_least: bool = False
               ) -> RegistryError:  # fmt: skip
    size = f"more than {cap}" if at_least else str(got)
    return RegistryError(f"{reg.where}: {what} is {size} bytes, over trtpack's limit of {cap}",
                         reference=reg.where, field=what, limit=cap, value=got)  # fmt: skip


def _json(reg: _Registry, raw: bytes, what: str) -> Any:
    """JSON from the registry: bad JSON, or nesting deeper than MAX_JSON_DEPTH (before the
    parser's recursion limit), is a RegistryError."""
    try:
        value = json.loads(raw)
    except RecursionError:
        value, depth = None, MAX_JSON_DEPTH + 1
    except (ValueError, UnicodeDecodeError) as e:
        raise RegistryError(f"{reg.where}: {what} is not JSON ({e})", reference=reg.where,
                            field=what) from None  # fmt: skip
    else:
        depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise RegistryError(f"{reg.where}: {what} nests deeper than {MAX_JSON_DEPTH} levels",
                            reference=reg.where, field=what, limit=MAX_JSON_DEPTH)  # fmt: skip
    return value


def _reachable(ref: Reference, plain: bool, timeout: float) -> None:
    """Fail fast and clearly when nothing listens."""
    port = ref.host.rpartition(":")[2] if ":" in ref.host else ""
    try:
        socket.create_connection((ref.hostname, int(port or (80 if plain else 443))),
                                 timeout=timeout).close()  # fmt: skip
    except OSError as e:
        raise RegistryError(
            f"cannot reach the registry at {ref.host} ({e.strerror or e})",
            reference=f"oci://{ref.target}",
        ) from None


def _auth_configs(registry_config: PathLike | None) -> list[str]:
    """Docker configs to read besides ``~/.docker/config.json`` (which oras-py always reads)."""
    configs = []
    if os.environ.get("DOCKER_CONFIG"):
        configs.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    if registry_config is not None:
        if not Path(registry_config).is_file():
            raise RegistryError(f"registry config {registry_config} does not exist")
        configs.append(str(registry_config))
    return [c for c in configs if Path(c).is_file()]


def _credentials(ref: Reference, configs: list[str]) -> str | None:
    """base64 ``user:password`` for ``ref``'s host from the Docker configs (oras-py reads them,
    credential helpers included), or None."""
    import oras.auth.basic
    import oras.container

    backend = oras.auth.basic.BasicAuth()
    backend.load_configs(oras.container.Container(ref.target, registry=ref.host),
                         configs=list(configs) or None)  # fmt: skip
    found = getattr(backend, "_basic_auth", None)
    return found if isinstance(found, str) and found else None


def _connect(ref: Reference, plain_http: bool | None, registry_config: PathLike | None,
             timeout: float | None = None) -> _Registry:  # fmt: skip
    try:
        import oras.auth.basic  # noqa: F401
        import requests
    except ImportError as e:
        raise MissingDependencyError(
            f"OCI push/pull needs oras ({e}); pip install 'trtpack[oci]'"
        ) from e
    seconds = _seconds(timeout)
    plain = uses_plain_http(ref, plain_http)
    _reachable(ref, plain, seconds)
    prefix = "http" if plain else "https"
    configs = _auth_configs(registry_config)

    class Session(requests.Session):
        def get_redirect_target(self, resp: Any) -> None:
            # requests reads a redirect's whole body (even with allow_redirects=False, to
            # prepare Response.next): an endless one never ends. _Registry._send redirects.
            return None

    session = Session()
    # trust_env stays on: HTTPS_PROXY/NO_PROXY and REQUESTS_CA_BUNDLE work as with oras-py
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    reg = _Registry(ref, session, prefix, seconds)
    # The version check every OCI client starts with: 200, or 401 saying which auth it takes.
    ping = reg.request("reach the registry", "GET", reg.url("/v2/"), allow=(401,), auth=False)
    status = ping.status_code
    challenge = ping.headers.get("WWW-Authenticate", "") if status == 401 else ""
    _read(reg, ping, _MAX_SMALL_BODY, "the registry's answer to /v2/", truncate=True)
    if status == 401:
        reg.basic = _credentials(ref, configs)
    if challenge.lower().startswith("basic"):
        if not reg.basic:
            raise RegistryError(
                f"the registry at {ref.host} asks for a user name and password, and no Docker "
                f"config has them: `docker login {ref.host}` (writes ~/.docker/config.json), "
                "or registry_config=PATH (--registry-config) naming a config.json with an "
                f"auths entry for {ref.host}", reference=reg.where, status=401,
            )  # fmt: skip
        again = reg.request("reach the registry", "GET", reg.url("/v2/"), allow=(401,))
        _read(reg, again, _MAX_SMALL_BODY, "the registry's answer to /v2/", truncate=True)
        if again.status_code == 401:
            raise RegistryError(
                f"the registry at {ref.host} refused the user name and password of its "
                "Docker config entry (`docker login` again?)", reference=reg.where, status=401,
            )  # fmt: skip
    elif status not in (200, 401):
        raise RegistryError(
            f"{prefix}://{ref.host}/v2/ answered HTTP {status}: not an OCI registry"
            + (" (an HTTPS one? then pass plain_http=False (--no-plain-http))" if plain else ""),
            reference=reg.where, status=status,
        )  # fmt: skip
    return reg


# --- progress --------------------------------------------------------------------------------


class _Progress:
    """One line on stderr, redrawn in place on a terminal; one line per blob when asked for
    elsewhere (a log); nothing when off. ``enabled`` None: on only if the stream is a TTY."""

    def __init__(self, verb: str, enabled: bool | None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.on = self.tty if enabled is None else enabled
        self.verb, self.total, self.done, self.name = verb, 0, 0, ""
        self.started = self.last = time.monotonic()
        self.member_start = 0
        self.drawn = False

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None and self.on and self.tty and self.drawn:
            self._write("\n")  # the error message starts on a line of its own

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _draw(self) -> None:
        if not self.total:
            return  # nothing to measure yet (the pack's manifest.json, before its size is known)
        pct = 100 * self.done // self.total
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        line = (f"{self.verb} [{bar}] {pct:3d}%  {human_size(self.done)} / "
                f"{human_size(self.total)}  {human_size(int(rate))}/s  {self.name}")  # fmt: skip
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._write("\r" + line[:width] + "\x1b[K")
        self.last, self.drawn = time.monotonic(), True

    def begin(self, name: str) -> None:
        self.name, self.member_start = name, self.done
        if self.on and self.tty:
            self._draw()

    def restart(self) -> None:
        """The body is being sent again (the library retried the request)."""
        self.done = self.member_start

    def advance(self, n: int) -> None:
        self.done += n
        if self.on and self.tty and time.monotonic() - self.last > 0.1:
            self._draw()

    def note(self, name: str, size: int, what: str) -> None:
        if self.on and not self.tty:
            self._write(f"{self.verb} {name}  {human_size(size)}  {what}\n")

    def close(self, summary: str) -> None:
        if not self.on:
            return
        if self.tty and self.drawn:
            self.name = ""
            self._draw()
            self._write("\n")
        else:  # a log, or a terminal that saw no transfer
            self._write(f"{self.verb} {summary}\n")


class _Body:
    """A member's bytes as a request body: read from the pack file in chunks (never whole in
    memory), counted as they go. Iterable again from the start, should the library resend it."""

    def __init__(self, data: Source, progress: _Progress) -> None:
        self.data, self.size = data, source_size(data)
        self.progress = progress

    def __len__(self) -> int:
        return self.size

    def _chunks(self) -> Iterator[memoryview]:
        if isinstance(self.data, FileSlice):
            yield from self.data.chunks()
            return
        for part in self.data.parts if isinstance(self.data, Chunks) else (self.data,):
            view = memoryview(part).cast("B")
            for start in range(0, len(view), _CHUNK):
                yield view[start : start + _CHUNK]

    def __iter__(self) -> Iterator[memoryview]:
        self.progress.restart()
        for chunk in self._chunks():
            yield chunk
            self.progress.advance(len(chunk))


def _upload(reg: _Registry, layer: dict[str, Any], data: Source, what: str,
            progress: _Progress) -> None:  # fmt: skip
    progress.begin(what)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
    r = reg.request(f"start uploading {what}", "POST", reg.api("blobs", "uploads/"),
                    headers=headers)  # fmt: skip
    location = r.headers.get("Location")
    _read(reg, r, _MAX_SMALL_BODY, f"the answer to starting the upload of {what}", truncate=True)
    if not location:
        raise RegistryError(f"the registry at {reg.ref.host} gave no upload location for {what}",
                            reference=reg.where)  # fmt: skip
    url = urljoin(reg.url("/"), location)
    if not url.startswith(("http://", "https://")):
        raise RegistryError(f"the registry at {reg.ref.host} gave no HTTP(S) upload location "
                            f"for {what}", reference=reg.where)  # fmt: skip
    url += ("&" if "?" in url else "?") + urlencode({"digest": layer["digest"]})
    body = _Body(data, progress)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
    response = reg.request(f"upload {what}", "PUT", url, data=body, headers=headers,
                           allow=(400,))  # fmt: skip
    text = _read(reg, response, _MAX_SMALL_BODY, f"the answer to the upload of {what}",
                 truncate=True)  # fmt: skip
    if response.status_code == 400:
        if b"DIGEST_INVALID" in text:
            raise IntegrityError(
                f"{what}: the registry computed another SHA-256 than the manifest records "
                f"({layer['digest']}): the pack is damaged (`trtpack verify`)",
                member=what, field="sha256", expected=layer["digest"],
            )  # fmt: skip
        raise RegistryError(f"upload {what} at {reg.ref.target} failed: HTTP 400 "
                            f"{text.decode('utf-8', 'replace')[:200]}", reference=reg.where,
                            status=400)  # fmt: skip


def _blob_exists(reg: _Registry, digest: str) -> bool:
    response = reg.request("check a blob", "HEAD", reg.api("blobs", digest), allow=(404,))
    response.close()
    return bool(response.status_code == 200)


def _put_manifest(reg: _Registry, reference: str, body: bytes, media_type: str,
                  what: str) -> Any:  # fmt: skip
    """PUT a manifest or index under ``reference`` (a tag or its digest); the response, its
    (small) body read."""
    response = reg.request(what, "PUT", reg.api("manifests", reference), data=body,
                           headers={"Content-Type": media_type})  # fmt: skip
    _read(reg, response, _MAX_SMALL_BODY, f"the answer to {what}", truncate=True)
    return response


def _download(reg: _Registry, digest: str, size: int, what: str, progress: _Progress,
              out: IO[bytes] | None = None, out_path: PathLike | None = None) -> bytes:  # fmt: skip
    """Stream one blob, checking its size and SHA-256 as it comes; its bytes (``out`` None)
    or b"" (written to ``out``, never more than ``size`` bytes: a longer body is refused at
    the first byte past it)."""
    if not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{reg.where}: {what} has no valid sha256 digest ({digest[:80]!r})",
                            reference=reg.where, field="digest")  # fmt: skip
    progress.begin(what)
    response = reg.request(f"download {what}", "GET", reg.api("blobs", digest))
    sha, got, parts = hashlib.sha256(), 0, []
    with response:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) != size:
            raise IntegrityError(f"{what} from the registry is {declared} bytes, not the "
                                 f"{size} its descriptor records", member=what, field="size",
                                 expected=size, got=int(declared))  # fmt: skip
        for chunk in _chunks(reg, response, what, _CHUNK):
            got += len(chunk)
            if got > size:
                raise IntegrityError(f"{what} from the registry is larger than its {size} bytes",
                                     member=what, field="size", expected=size)  # fmt: skip
            sha.update(chunk)
            if out is None:
                parts.append(chunk)
            else:
                try:
                    out.write(chunk)
                except OSError as e:
                    raise PackWriteError(out_path or "the output", e) from None
            progress.advance(len(chunk))
    if got != size or "sha256:" + sha.hexdigest() != digest:
        raise IntegrityError(f"{what} from the registry does not match its digest {digest}",
                             member=what, field="sha256", expected=digest)  # fmt: skip
    return b"".join(parts)


def _get_manifest(reg: _Registry, reference: str | None = None, accept: str = OCI_MANIFEST,
                  missing_ok: bool = False) -> tuple[dict[str, Any] | None, str]:  # fmt: skip
    """An OCI manifest (the reference's tag or digest unless ``reference`` names another) and
    its digest (the SHA-256 of the bytes served; checked when the reference is a digest).
    A missing one is a RegistryError, or (None, "") when ``missing_ok``."""
    name = reference or reg.ref.digest or reg.ref.tag or "latest"
    where = reg.where if reference is None else f"oci://{reg.ref.host}/{reg.ref.repository}" + (
        f"@{name}" if name.startswith("sha256:") else f":{name}")  # fmt: skip
    response = reg.request("fetch the manifest", "GET", reg.api("manifests", name),
                           headers={"Accept": accept}, allow=(404,))  # fmt: skip
    if response.status_code == 404:
        response.close()
        if missing_ok:
            return None, ""
        raise RegistryError(f"nothing at {where}: the registry has no such artifact",
                            reference=where, status=404)  # fmt: skip
    raw = _read(reg, response, _MAX_OCI_MANIFEST, "the OCI manifest")
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if name.startswith("sha256:") and digest != name:
        raise IntegrityError(f"{where}: the registry served a manifest of {digest}",
                             field="digest", expected=name, got=digest)  # fmt: skip
    manifest = _json(reg, raw, "the OCI manifest")
    if not isinstance(manifest, dict):
        raise RegistryError(f"{where}: the manifest is not a JSON object", reference=where)
    return manifest, digest


# --- the two layouts -------------------------------------------------------------------------


def _media_type(member: str) -> str:
    if member.endswith(".plan"):
        return "application/vnd.trtpack.engine.v1"
    if member.endswith(".safetensors"):
        return "application/vnd.trtpack.weights.v1.safetensors"
    if member.endswith(".json"):
        return "application/vnd.trtpack.graph.v1+json"
    return "application/octet-stream"


def _modelpack_media_type(member: str) -> tuple[str, bool]:
    """The ModelPack media type of a member, and whether that is a guess."""
    if member.endswith(".json"):
        return MODELPACK_WEIGHT_CONFIG, False  # the manifest, program graphs
    if member.endswith((".safetensors", ".plan")):
        return MODELPACK_WEIGHT, False  # weights and TensorRT engines
    return MODELPACK_WEIGHT, True


def pack_annotations(info: PackInfo) -> dict[str, str]:
    m = info.manifest

    def io(specs: Any) -> str:
        return "; ".join(
            f"{s.name} {s.dtype}{format_shape(s.shape or (), m.symbols)}" if s.is_tensor
            else f"{s.name} {s.kind}={s.value!r}"
            for s in specs
        )  # fmt: skip

    notes = {
        "dev.trtpack.digest": info.digest,
        "dev.trtpack.format": ".".join(map(str, m.format_version)),
        "dev.trtpack.inputs": io(m.inputs),
        "dev.trtpack.outputs": io(m.outputs),
        "dev.trtpack.engines": ", ".join(
            f"{v.name} ({v.target.flavor} {v.target.trt_version}, "
            f"sm {'/'.join(v.target.compute_capabilities) or 'any'})"
            for v in m.engines
        )
        or "none",
    }
    for k, v in m.metadata.items():
        notes[f"dev.trtpack.metadata.{k}"] = v
    return notes


def _created(info: PackInfo, created: str | datetime | None) -> str | None:
    """RFC 3339 creation time: as given, else the pack's ``created`` metadata, else
    ``SOURCE_DATE_EPOCH``; else none (a push-time clock would give every push of the same
    bytes another manifest digest)."""
    if isinstance(created, datetime):
        when = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
        return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if created is not None:
        return str(created)
    if "created" in info.manifest.metadata:
        return info.manifest.metadata["created"]
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return _created(info, datetime.fromtimestamp(int(epoch), timezone.utc))
    return None


def _describe(info: PackInfo) -> str:
    m = info.manifest
    what = "ExportedProgram" if m.program is not None else "no program"
    engines = ", ".join(v.name for v in m.engines)
    return f"trtpack pack (format {m.format_version[0]}.{m.format_version[1]}): {what}, " + (
        f"TensorRT engine variants {engines}" if engines else "no TensorRT engines"
    )


def _modelpack_descriptor(info: PackInfo, created: str | None) -> dict[str, str]:
    """The model's name, version, title, description and creation time: from the pack's
    metadata (``name`` or ``model``, ``version``, ``title``, ``description``), never from the
    file's name or the tag, so that the same pack always gives the same manifest."""
    meta = info.manifest.metadata
    out = {}
    name = meta.get("name") or meta.get("model")
    if name:
        out["name"] = name
    title = meta.get("title") or name
    if title:
        out["title"] = title
    if meta.get("version"):
        out["version"] = meta["version"]
    out["description"] = meta.get("description") or _describe(info)
    if created:
        out["createdAt"] = created
    return out


def _descriptor(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = dict(annotations)
    return d


def _build(info: PackInfo, raw: bytes, layout: str, created: str | datetime | None
           ) -> tuple[dict[str, Any], dict[str, bytes]]:  # fmt: skip
    """The OCI manifest of a pack, and the blobs it needs that are not pack members (by
    digest: the pack's manifest.json, the ModelPack config)."""
    raw_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    members = sorted(info.manifest.members.items())
    extra = {raw_digest: raw}
    if layout == "trtpack":
        config = _descriptor(CONFIG_TYPE, raw_digest, len(raw))
        layers = [
            _descriptor(_media_type(n), f"sha256:{m.sha256}", m.size, **{TITLE: n})
            for n, m in members
        ]
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": layers,
            "annotations": pack_annotations(info),
        }, extra
    layers = []
    for name, digest, size in [(MANIFEST_NAME, raw_digest, len(raw))] + [
        (n, f"sha256:{m.sha256}", m.size) for n, m in members
    ]:
        media_type, guessed = _modelpack_media_type(name)
        notes = {FILEPATH: name, TITLE: name}
        notes[FILE_METADATA] = json.dumps(
            {"name": name.rsplit("/", 1)[-1], "mode": _FILE_MODE, "uid": 0, "gid": 0,
             "size": size, "mtime": _MTIME, "typeflag": ord("0")},
            separators=(",", ":"),
        )  # fmt: skip
        if guessed:
            notes[MEDIATYPE_UNTESTED] = "true"
        layers.append(_descriptor(media_type, digest, size, **notes))
    when = _created(info, created)
    descriptor = _modelpack_descriptor(info, when)
    model_config = {
        "descriptor": descriptor,
        "config": {"format": "trtpack"},
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
    }
    config_raw = json.dumps(model_config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    extra[config_digest] = config_raw
    annotations = {
        f"org.opencontainers.image.{key}": descriptor[field_]
        for key, field_ in (("title", "title"), ("version", "version"),
                            ("description", "description"), ("created", "createdAt"))
        if field_ in descriptor
    }  # fmt: skip
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODELPACK_ARTIFACT_TYPE,
        "config": _descriptor(MODELPACK_CONFIG_TYPE, config_digest, len(config_raw)),
        "layers": layers,
        "annotations": {**annotations, **pack_annotations(info)},
    }, extra


def _layout_of(oci: dict[str, Any], ref: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Which layout an OCI manifest has: its name, the descriptor of the pack's manifest.json
    and the layers by member name."""
    found, layers = oci.get("config"), oci.get("layers", [])
    if not isinstance(found, dict) or not isinstance(layers, list) or \
            not all(isinstance(layer, dict) for layer in layers):  # fmt: skip
        raise RegistryError(f"{ref} is not an OCI image manifest: its config is not a "
                            "descriptor or its layers are not a list of descriptors",
                            reference=ref, field="layers")  # fmt: skip
    config: dict[str, Any] = found

    def path(layer: dict[str, Any], *keys: str) -> str:
        a = layer.get("annotations")
        for key in keys:
            if isinstance(a, dict) and isinstance(a.get(key), str) and a[key]:
                return str(a[key])
        return ""

    if config.get("mediaType") == CONFIG_TYPE:
        return "trtpack", config, {path(layer, TITLE): layer for layer in layers}
    if (
        oci.get("artifactType") == MODELPACK_ARTIFACT_TYPE
        or config.get("mediaType") == MODELPACK_CONFIG_TYPE
    ):
        by_path = {path(layer, FILEPATH, TITLE): layer for layer in layers}
        if MANIFEST_NAME not in by_path:
            raise RegistryError(
                f"{ref} is a ModelPack model but not a trtpack artifact: no layer holds "
                f"{MANIFEST_NAME}"
            )
        return "modelpack", by_path[MANIFEST_NAME], by_path
    raise RegistryError(
        f"{ref} is not a trtpack artifact (its config is {config.get('mediaType')!r}, not a "
        "trtpack manifest or a ModelPack model config)"
    )


# --- the signature, as an OCI referrer of the model manifest -------------------------------------
#
# The pack's detached signature (PACK.sig, a sigstore bundle) travels the way signing tools
# attach signatures to images: an OCI 1.1 artifact manifest (artifactType: the bundle's media
# type, the empty config, one layer: the bundle) whose ``subject`` is the model manifest. A
# registry with the referrers API lists it at /v2/REPO/referrers/DIGEST; one without (Debian's
# docker-registry 2.8) gets the distribution spec's fallback: an image index tagged
# ``sha256-<hex of DIGEST>`` listing the referrers, which the pushing client keeps up to date.

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_EMPTY = b"{}"


def _signature_to_push(pack: PathLike, signature: PathLike | bool, digest: str
                       ) -> bytes | None:  # fmt: skip
    """The bundle to attach: ``signature`` True: PACK.sig if there is one; False: none; a path:
    that bundle. It must be the signature of this pack's manifest.json (``digest``): a stale
    one would reach the puller as a signature that never verifies."""
    from ..signing import signature_path

    if signature is False:
        return None
    path = signature_path(pack) if signature is True else Path(signature)
    if not path.is_file():
        if signature is True:
            return None
        raise RegistryError(f"signature {path} does not exist")
    size = path.stat().st_size
    if size > MAX_SIGNATURE_BYTES:
        raise RegistryError(f"signature {path} is {size} bytes, over trtpack's limit of "
                            f"{MAX_SIGNATURE_BYTES}", field="signature", limit=MAX_SIGNATURE_BYTES,
                            value=size)  # fmt: skip
    bundle = path.read_bytes()
    signed = _signed_manifest(bundle)
    if signed is None:
        raise RegistryError(f"{path} is not a trtpack signature bundle (`trtpack sign`); push "
                            "with signature=False (--no-signature) to leave it behind")  # fmt: skip
    if f"sha256:{signed}" != digest:
        raise RegistryError(
            f"{path} signs another manifest.json (sha256:{signed}) than {pack}'s ({digest}): "
            "it is stale; sign the pack again (`trtpack sign`) or push with signature=False "
            "(--no-signature)", field="signature", value=f"sha256:{signed}",
        )  # fmt: skip
    return bundle


def _signed_manifest(bundle: bytes) -> str | None:
    """The manifest.json SHA-256 a signature bundle's statement names, unverified (push has no
    key; the puller verifies), or None if it is not such a bundle."""
    import base64

    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        for resource in statement["predicate"]["resources"]:
            if resource["name"] == MANIFEST_NAME:
                digest = resource["digest"]
                return digest if isinstance(digest, str) else None
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    return None


def _attach_signature(reg: _Registry, subject: dict[str, Any], bundle: bytes,
                      bar: _Progress) -> tuple[str, str]:  # fmt: skip
    """Push ``bundle`` as a referrer of ``subject`` (a descriptor of the model manifest): its
    manifest digest, and "api" or "tag" (how the registry lists it)."""
    from ..signing import BUNDLE_MEDIA_TYPE

    config = _descriptor(EMPTY_TYPE, "sha256:" + hashlib.sha256(_EMPTY).hexdigest(), len(_EMPTY))
    layer = _descriptor(BUNDLE_MEDIA_TYPE, "sha256:" + hashlib.sha256(bundle).hexdigest(),
                        len(bundle))  # fmt: skip
    for blob, data in ((config, _EMPTY), (layer, bundle)):
        if not _blob_exists(reg, blob["digest"]):
            _upload(reg, blob, data, "the signature" if data is bundle else "an empty config", bar)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": BUNDLE_MEDIA_TYPE,
                "config": config, "layers": [layer], "subject": subject}  # fmt: skip
    body = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    response = _put_manifest(reg, digest, body, OCI_MANIFEST, "upload the signature manifest")
    if response.headers.get("OCI-Subject") == subject["digest"]:
        return digest, "api"  # the registry lists referrers itself
    # No referrers API: keep the referrers tag schema's index up to date (distribution spec
    # 1.1, "Pushing Manifests with Subject": pull it, 404 means empty, add once, push back).
    tag = _referrers_tag(subject["digest"])
    index, _ = _get_manifest(reg, tag, accept=OCI_INDEX, missing_ok=True)
    if index is None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    elif index.get("mediaType") != OCI_INDEX or not isinstance(index.get("manifests"), list):
        raise RegistryError(
            f"{reg.where}: the referrers tag {tag} holds something other than an OCI image "
            "index; trtpack does not overwrite it", reference=reg.where, field=tag,
        )  # fmt: skip
    if not any(isinstance(d, dict) and d.get("digest") == digest for d in index["manifests"]):
        entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                 "artifactType": BUNDLE_MEDIA_TYPE}  # fmt: skip
        index["manifests"].append(entry)
        raw = json.dumps(index, separators=(",", ":")).encode()
        _put_manifest(reg, tag, raw, OCI_INDEX, "update the referrers index")
    return digest, "tag"


def _referrers_tag(digest: str) -> str:
    """The referrers tag schema: ``<alg>-<hex>``, the hex truncated to 64 characters."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm}-{encoded[:64]}"


def _find_signature(reg: _Registry, subject: str) -> tuple[bytes, str] | None:
    """The signature bundle attached to the manifest ``subject`` and the digest of the
    referrer that holds it, or None. Referrers API first; its 404 means the registry has none,
    and then the referrers tag. Several signatures: the last one listed."""
    from ..signing import BUNDLE_MEDIA_TYPE

    url = reg.api("referrers", subject) + "?" + urlencode({"artifactType": BUNDLE_MEDIA_TYPE})
    response = reg.request("list the referrers", "GET", url, headers={"Accept": OCI_INDEX},
                           allow=(404,))  # fmt: skip
    if response.status_code == 404:
        response.close()
        index, _ = _get_manifest(reg, _referrers_tag(subject), accept=OCI_INDEX, missing_ok=True)
    else:
        raw = _read(reg, response, _MAX_OCI_MANIFEST, "the referrers list")
        index = _json(reg, raw, "the referrers list")
    if index is None:
        return None
    listed = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(listed, list):
        raise RegistryError(f"{reg.where}: the referrers of {subject} are not an image index",
                            reference=reg.where, field="manifests")  # fmt: skip
    found = [d for d in listed if isinstance(d, dict) and d.get("artifactType") ==
             BUNDLE_MEDIA_TYPE and isinstance(d.get("digest"), str)]  # fmt: skip
    if not found:
        return None
    digest = found[-1]["digest"]
    if not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{reg.where}: a referrer of {subject} has no valid sha256 digest",
                            reference=reg.where, field="digest")  # fmt: skip
    manifest, _ = _get_manifest(reg, digest)
    assert manifest is not None
    layers = manifest.get("layers")
    found_subject = manifest.get("subject")
    if not isinstance(found_subject, dict) or found_subject.get("digest") != subject:
        raise RegistryError(f"{reg.where}: the signature listed for {subject} names another "
                            "subject", reference=reg.where, field="subject")  # fmt: skip
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict) \
            or layers[0].get("mediaType") != BUNDLE_MEDIA_TYPE:  # fmt: skip
        raise RegistryError(f"{reg.where}: the signature manifest {digest} does not hold one "
                            "signature bundle", reference=reg.where, field="layers")  # fmt: skip
    size = _size(layers[0], "the signature", reg.where, MAX_SIGNATURE_BYTES)
    bundle = _download(reg, str(layers[0].get("digest")), size, "the signature",
                       _Progress("pull", False))  # fmt: skip
    return bundle, digest


def _size(desc: dict[str, Any], what: str, where: str, limit: int) -> int:
    """A descriptor's ``size``: an integer from 0 to ``limit``, else a RegistryError."""
    size = desc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise RegistryError(f"{where}: the descriptor of {what} has no size (got {size!r:.40})",
                            reference=where, field="size", value=size)  # fmt: skip
    if size > limit:
        raise RegistryError(f"{where}: {what} is {size} bytes, over trtpack's limit of {limit}",
                            reference=where, field="size", limit=limit, value=size)  # fmt: skip
    return size


# --- push ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    reference: str
    manifest_digest: str
    uploaded: list[str]  # members sent (the others were already in the registry)
    skipped: list[str]
    layout: str = DEFAULT_LAYOUT
    #: bytes sent: blobs (members, manifest.json, config) and the OCI manifest
    bytes_uploaded: int = 0
    #: bytes of blobs the registry already had
    bytes_skipped: int = 0
    #: the digest of the referrer manifest that carries the pack's signature (None: unsigned)
    signature: str | None = None
    #: how the registry lists that referrer: "api" (OCI 1.1 referrers API) or "tag" (the
    #: referrers tag schema ``sha256-<hex>``, for registries without the API)
    referrers: str | None = None


def push(
    pack: PathLike,
    ref: str,
    *,
    layout: str = DEFAULT_LAYOUT,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    progress: bool | None = None,
    created: str | datetime | None = None,
    signature: PathLike | bool = True,
    timeout: float | None = None,
) -> Pushed:
    """Push ``pack`` to ``ref`` in ``layout`` (``"modelpack"`` or ``"trtpack"``); blobs the
    registry already has are not sent again. ``progress`` None: a progress line on stderr
    only when it is a terminal. ``created``: the ModelPack creation time (default: the pack's
    ``created`` metadata, else ``SOURCE_DATE_EPOCH``, else none).

    ``signature`` True: the pack's ``PACK.sig``, if it has one, is attached as an OCI referrer
    of the pushed manifest (and must be the signature of this pack's manifest); a path: that
    bundle; False: none. ``timeout``: seconds the registry may stay silent (default
    ``TRTPACK_OCI_TIMEOUT`` or DEFAULT_TIMEOUT)."""
    reference = parse_reference(ref)
    if reference.digest:
        raise RegistryError(f"push to a tag, not a digest: {ref}")
    if layout not in LAYOUTS:
        raise RegistryError(f"layout must be one of {', '.join(LAYOUTS)} (--layout), "
                            f"not {layout!r}")  # fmt: skip
    with open_pack(pack) as (reader, info):
        raw = reader.read(MANIFEST_NAME)
        manifest, extra = _build(info, raw, layout, created)
        bundle = _signature_to_push(pack, signature, info.digest)
        reg = _connect(reference, plain_http, registry_config, timeout)
        members = {f"sha256:{m.sha256}": n for n, m in info.manifest.members.items()}
        labels = {**members, manifest["config"]["digest"]: "the ModelPack config",
                  "sha256:" + hashlib.sha256(raw).hexdigest(): MANIFEST_NAME}  # fmt: skip
        missing, uploaded, skipped = [], [], []
        skipped_bytes = 0
        for blob in [manifest["config"], *manifest["layers"]]:
            name = members.get(blob["digest"])
            if _blob_exists(reg, blob["digest"]):
                skipped_bytes += blob["size"]
                if name is not None:
                    skipped.append(name)
            else:
                missing.append(blob)
        with _Progress("push", progress) as bar:
            bar.total = sum(blob["size"] for blob in missing)
            for n in sorted(skipped):
                bar.note(n, info.manifest.members[n].size, "already in the registry")
            sent = 0
            for blob in missing:
                name = members.get(blob["digest"])
                what = labels[blob["digest"]]
                data = extra[blob["digest"]] if name is None else reader.slice(name)
                _upload(reg, blob, data, what, bar)
                sent += blob["size"]
                bar.note(what, blob["size"], "sent")
                if name is not None:
                    uploaded.append(name)
            # json.dumps' default separators: the bytes oras-py sent before, so the same pack
            # keeps its manifest digest across trtpack versions
            body = json.dumps(manifest).encode()
            _put_manifest(reg, reference.tag or "latest", body, OCI_MANIFEST,
                          "upload the manifest")  # fmt: skip
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            signed = how = None
            if bundle is not None:
                subject = _descriptor(OCI_MANIFEST, digest, len(body))
                signed, how = _attach_signature(reg, subject, bundle, bar)
                sent += len(bundle)
            bar.close(f"{len(missing)} blob(s), {human_size(sent)} sent; "
                      f"{human_size(skipped_bytes)} already in the registry")  # fmt: skip
    return Pushed(reference.target, digest, sorted(uploaded), sorted(skipped), layout,
                  sent + len(body), skipped_bytes, signed, how)  # fmt: skip


# --- reading ---------------------------------------------------------------------------------


def fetch_manifest(
    ref: str,
    *,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The OCI manifest of a pushed pack (what ``oras manifest fetch`` shows), either layout;
    RegistryError if the artifact is not a pack."""
    reg = _connect(parse_reference(ref), plain_http, registry_config, timeout)
    manifest, _ = _get_manifest(reg)
    assert manifest is not None
    _layout_of(manifest, ref)
    return manifest


@dataclass(frozen=True)
class RemotePack:
    """What ``inspect(ref)`` read: the OCI manifest and the pack's own manifest."""

    reference: str
    layout: str
    manifest_digest: str
    oci_manifest: dict[str, Any]
    #: the pack's facts; ``file_size`` is the members' total (the zip adds its headers)
    info: PackInfo
    #: bytes of blobs downloaded to read it: the pack's manifest.json, nothing else
    bytes_downloaded: int


def _manifest_from(raw: bytes, where: str, upgrade_old: bool = True) -> Manifest:
    """The pack's manifest from its manifest.json bytes (``upgrade_old``: upgraded in memory
    as ``inspect`` upgrades an older format). Whatever is wrong with it is a RegistryError
    (the ManifestError or UnsafePackError saying what, as its cause): the registry served it."""
    try:
        data = parse_manifest_json(raw, where)
        version = data.get("format_version") if isinstance(data, dict) else None
        if (
            upgrade_old
            and isinstance(version, list)
            and len(version) == 2
            and all(
                type(v) is int
                for v in version  # ["1", "0"] is for the schema check to refuse
            )
            and tuple(version) < FORMAT_VERSION
        ):
            from ..format.upgrade import upgrade

            data, _, _ = upgrade(data)
        return Manifest.from_dict(data)
    except TrtpackError as e:
        raise RegistryError(
            f"{where}: the pack's {MANIFEST_NAME} is not a valid trtpack manifest: {e}",
            reference=where,
            field=MANIFEST_NAME,
        ) from e
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        # what a reader that checks later than it reads (format.upgrade) may still raise on a
        # hand-made manifest: the registry served it, so it is the registry's answer at fault
        raise RegistryError(f"{where}: the pack's {MANIFEST_NAME} is not a valid trtpack "
                            f"manifest ({type(e).__name__}: {str(e)[:200]})", reference=where,
                            field=MANIFEST_NAME) from e  # fmt: skip


def _read_pack_manifest(reg: _Registry, desc: dict[str, Any], where: str,
                        bar: _Progress) -> bytes:  # fmt: skip
    size = _size(desc, MANIFEST_NAME, where, MAX_MANIFEST_BYTES)
    return _download(reg, str(desc.get("digest")), size, MANIFEST_NAME, bar)


def inspect(
    ref: str,
    *,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    timeout: float | None = None,
) -> RemotePack:
    """Read a pushed pack's manifest without pulling it: the OCI manifest, then the pack's
    ``manifest.json`` blob (a few KiB); no weights, no engines."""
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config, timeout)
    oci, digest = _get_manifest(reg)
    assert oci is not None
    layout, desc, _ = _layout_of(oci, ref)
    raw = _read_pack_manifest(reg, desc, ref, _Progress("inspect", False))
    manifest = _manifest_from(raw, ref)
    size = len(raw) + sum(m.size for m in manifest.members.values())
    info = PackInfo(Path("pack"), manifest, "sha256:" + hashlib.sha256(raw).hexdigest(), size)
    return RemotePack(f"oci://{reference.target}", layout, digest, oci, info, len(raw))


def render_remote(remote: RemotePack) -> str:
    """``trtpack inspect oci://...``: the table of a local inspect, headed by the reference."""
    first, rest = render(remote.info).split("\n", 1)
    first = remote.reference + first[len(remote.info.path.name) :]
    digest, rest = rest.split("\n", 1)
    where = f"registry {remote.layout} layout, OCI manifest {remote.manifest_digest}"
    return "\n".join([first, digest, where, rest])


# --- pull ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled(PackInfo):
    """The pulled pack's facts (a PackInfo) and what the pull did."""

    reference: str = ""
    layout: str = ""
    #: the engine variants the written pack holds
    variants: tuple[str, ...] = ()
    #: variants left out, with why (not asked for, or cannot run here)
    left_out: dict[str, str] = field(default_factory=dict)
    #: bytes of blobs downloaded
    bytes_downloaded: int = 0
    #: where the pack's signature was written (``OUT.sig``), or None
    signature: str | None = None
    #: why no signature was written, when none was
    signature_note: str = ""


def _choose(manifest: Manifest, variants: str | Sequence[str] | None, environment: Any,
            ref: str) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    names = [v.name for v in manifest.engines]
    if variants is None or variants == "all":
        return names, {}
    if variants == "none":
        return [], {n: "not asked for (--variants none)" for n in names}
    if variants == "auto":
        from ..engines.select import choose

        if environment is None:
            from ..engines.torchtrt import probe_environment

            environment = probe_environment()
        choice = choose(manifest.engines, environment)
        keep = [v.name for v in choice.fitting]
        if not keep and manifest.program is None:
            raise NoUsableEngineError(
                f"{ref}: {choice.summary()}, and the pack has no program to run instead; "
                "name the variants to pull: variants=[NAME] (--variant)"
            )
        return [n for n in names if n in keep], dict(choice.refused)
    if isinstance(variants, str):
        variants = [variants]
    unknown = sorted(set(variants) - set(names))
    if unknown:
        raise RegistryError(
            f"{ref} has no engine variant {', '.join(map(repr, unknown))} (it has: "
            f"{', '.join(names) or 'none'}); name one of those with variants=[NAME] (--variant), "
            f"or choose variants={'|'.join(VARIANT_CHOICES)} (--variants)"
        )
    keep = [n for n in names if n in set(variants)]
    if not keep and manifest.program is None:
        raise RegistryError(
            f"{ref} has no program: pull at least one engine variant, variants=[NAME] (--variant)"
        )
    return keep, {n: "not asked for" for n in names if n not in keep}


def _subset(raw: bytes, keep: Sequence[str], where: str) -> bytes:
    """The pack's manifest.json with only the ``keep`` engine variants and their members."""
    data = parse_manifest_json(raw, where)

    def members_of(variant: dict[str, Any]) -> set[str]:
        out = {e["member"] for e in variant.get("engines") or []}
        program = variant.get("program")
        if isinstance(program, dict):
            out |= {program["graph"], program["weights"]}
        return out

    engines = data.get("engines") or []
    kept = [v for v in engines if v["name"] in keep]
    used = members_of({"program": data.get("program")})
    dropped: set[str] = set()
    for v in engines:
        (used if v in kept else dropped).update(members_of(v))
    dropped -= used
    data["engines"] = kept
    data["members"] = {n: m for n, m in data["members"].items() if n not in dropped}
    out = dumps_canonical(data)
    Manifest.from_json(out)  # still a valid, consistent manifest
    return out


def pull(
    ref: str,
    out: PathLike,
    *,
    overwrite: bool = False,
    variants: str | Sequence[str] | None = None,
    environment: Any = None,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    progress: bool | None = None,
    signature: bool = True,
    max_size: int | None = None,
    timeout: float | None = None,
) -> Pulled:
    """Fetch the pack at ``ref`` into ``out`` (atomically), every blob checked. Either layout.

    ``variants`` None or ``"all"``: the pack as pushed, byte for byte. A list of names: the
    program and those engine variants only. ``"auto"``: the variants that can run on this
    machine (``trtpack.engines.select``; ``environment`` overrides what is probed). ``"none"``:
    the program only. Blobs of variants left out are never downloaded.

    ``signature``: the signature attached to the pushed manifest (an OCI referrer, as ``push``
    attaches ``PACK.sig``) is written to ``OUT.sig``, so that ``trtpack verify --key`` checks
    the pulled pack; ``OUT.sig`` is an output like ``out`` (``overwrite`` replaces it, and a
    stale one is removed). A pull of some variants only has another manifest.json than the one
    signed: no signature is written then.

    ``max_size``: the most bytes of members the pull writes (default DEFAULT_MAX_SIZE): a pack
    declaring more is refused before anything is downloaded. ``timeout``: seconds the registry
    may stay silent (default ``TRTPACK_OCI_TIMEOUT`` or DEFAULT_TIMEOUT). Nothing is written
    but ``out`` (and ``OUT.sig``), through temporary files beside it that a failure removes."""
    from ..signing import signature_path

    out_path = Path(out)
    limit = DEFAULT_MAX_SIZE if max_size is None else max_size
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise RegistryError(f"max_size must be a number of bytes, not {max_size!r}")
    if out_path.exists() and not overwrite:
        raise OutputExistsError(out)
    sig_path = signature_path(out_path)
    if signature and sig_path.exists() and not overwrite:
        raise OutputExistsError(sig_path)
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config, timeout)
    oci, manifest_digest = _get_manifest(reg)
    assert oci is not None
    layout, desc, layers = _layout_of(oci, ref)
    note = ""
    with _Progress("pull", progress) as bar:
        raw = _read_pack_manifest(reg, desc, ref, bar)
        downloaded = len(raw)
        manifest = _manifest_from(raw, ref, upgrade_old=False)
        keep, left_out = _choose(manifest, variants, environment, ref)
        subset = len(keep) != len(manifest.engines)
        if subset:
            raw = _subset(raw, keep, ref)
            manifest = _manifest_from(raw, ref, upgrade_old=False)
        wanted = sorted(manifest.members.items())
        for name, member in wanted:  # every layer is there before anything large is fetched
            layer = layers.get(name)
            if layer is None or layer.get("digest") != f"sha256:{member.sha256}" or \
                    layer.get("size") != member.size:  # fmt: skip
                raise RegistryError(f"{ref}: no layer holds member {name!r} of its manifest",
                                    reference=ref, field=name)  # fmt: skip
        total = sum(m.size for _, m in wanted)
        if total > limit:
            raise RegistryError(
                f"{ref}: its members are {total} bytes ({human_size(total)}), over the limit of "
                f"{limit} ({human_size(limit)}); raise it with max_size=BYTES (--max-size) if "
                "you trust this pack", reference=ref, field="max_size", limit=limit, value=total,
            )  # fmt: skip
        parent = out_path.parent if str(out_path.parent) else Path(".")
        _check_space(parent, out_path, total)
        bundle: bytes | None = None
        if signature and not subset:
            found = _find_signature(reg, manifest_digest)
            if found is None:
                note = "the registry holds no signature for it"
            else:
                bundle = found[0]
                downloaded += len(bundle)
        elif signature:
            note = ("not written: the pulled pack holds some engine variants only, and its "
                    "manifest.json is not the one signed")  # fmt: skip
        bar.total = downloaded + total
        bar.done = downloaded
        try:
            tmp_dir = tempfile.TemporaryDirectory(dir=parent, prefix=".trtpack-pull-")
        except OSError as e:
            raise PackWriteError(out_path, e) from None
        with tmp_dir as tmp:
            members = {}
            for i, (name, member) in enumerate(wanted):
                path = Path(tmp) / f"member{i}"
                try:
                    f = open(path, "wb")
                except OSError as e:
                    raise PackWriteError(out_path, e) from None
                with f:
                    _download(reg, f"sha256:{member.sha256}", member.size, name, bar, f,
                              out_path)  # fmt: skip
                bar.note(name, member.size, "received")
                downloaded += member.size
                members[name] = FileSlice(path, 0, member.size)
            final = raw
            stale = signature and sig_path.exists()  # only with overwrite (checked above)
            with warnings.catch_warnings():
                if signature:
                    # write_pack removes OUT.sig, which signed the bytes OUT had, and warns
                    # "sign again"; here the registry's signature takes its place below, or
                    # signature_note says it was removed
                    warnings.filterwarnings("ignore", message=r"trtpack: removed .*\.sig")
                write_pack(out_path, members, lambda _digests: final, overwrite=overwrite)
        if stale and bundle is None:
            note += f"; removed the stale {sig_path}"
        written = _place_signature(out_path, sig_path, bundle, signature)
        bar.close(f"{len(wanted)} member(s), {human_size(downloaded)} received")
    info = inspect_pack(out_path)
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(PackInfo)}
    return Pulled(**fields, reference=f"oci://{reference.target}", layout=layout,
                  variants=tuple(keep), left_out=left_out, bytes_downloaded=downloaded,
                  signature=None if written is None else str(written),
                  signature_note=note)  # fmt: skip


def _check_space(parent: Path, out_path: Path, total: int) -> None:
    """Refuse at once when the disk cannot hold the members twice (the temporary copies and
    the pack written from them) rather than fill it."""
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return  # the write says why, if it fails
    need = 2 * total + (1 << 20)
    if need > free:
        cause = OSError(errno.ENOSPC, f"needs about {human_size(need)} (the members twice), "
                                      f"{human_size(free)} free")  # fmt: skip
        raise PackWriteError(out_path, cause)


def _place_signature(out_path: Path, sig_path: Path, bundle: bytes | None,
                     signature: bool) -> Path | None:  # fmt: skip
    """Write ``bundle`` to ``sig_path`` beside the pulled pack, or remove a stale one there
    (``overwrite`` was checked before anything was downloaded). If the signature cannot be
    written, neither is the pack: it is removed, and the error says why."""
    from ..format.atomic import atomic_write

    if not signature:
        return None
    if bundle is None:
        try:
            sig_path.unlink(missing_ok=True)  # another pack's signature would never verify
        except OSError as e:
            raise PackWriteError(sig_path, e) from None
        return None
    try:
        with atomic_write(sig_path) as f:
            f.write(bundle)
    except BaseException:
        out_path.unlink(missing_ok=True)
        raise
    return sig_path
