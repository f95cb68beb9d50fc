"""The registry's HTTP client, bounded: references and the plain-HTTP rule, timeouts, caps on
every body that is not a blob, redirects followed by hand, bearer tokens, Docker credentials
(through oras-py), and the connection every push, pull and inspect starts with."""

from __future__ import annotations

import http.cookiejar
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from ...errors import MissingDependencyError, RegistryError
from ...format.container import PathLike
from ...format.limits import MAX_JSON_DEPTH, json_depth

_LOOPBACK = ("localhost", "::1")
#: seconds a registry may take to accept a connection, to send the next bytes of an answer,
#: or to send a whole answer that is not a blob (``timeout=``, ``--timeout``, or the
#: environment variable ``TRTPACK_OCI_TIMEOUT``)
DEFAULT_TIMEOUT = 30.0
#: an OCI manifest is a few KiB; containerd refuses those over 4 MiB
_MAX_OCI_MANIFEST = 4 << 20
#: the /v2/ ping, upload answers, error bodies (only their first 200 characters are shown)
_MAX_SMALL_BODY = 64 << 10
#: a token service's JSON answer (a JWT is a few KiB)
_MAX_TOKEN_BODY = 1 << 20
#: registries redirect blob downloads to storage once; more than this is a loop
_MAX_REDIRECTS = 5

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
