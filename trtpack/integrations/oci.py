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
(``--registry-config``). oras-py makes every request (auth, retries, manifests); trtpack
streams the blob bodies itself, to hash them as they pass, show progress, and never hold a
member in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

from ..errors import (
    IntegrityError,
    MissingDependencyError,
    NoUsableEngineError,
    OutputExistsError,
    RegistryError,
)
from ..format.container import (
    Chunks,
    FileSlice,
    PathLike,
    Source,
    source_size,
    write_pack,
)
from ..format.limits import MAX_MANIFEST_BYTES, parse_manifest_json, refuse
from ..format.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, dumps_canonical
from ..format.progress import Progress as _Progress
from ..format.progress import ProgressArg
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
#: an OCI manifest is a few KiB; containerd refuses those over 4 MiB
_MAX_OCI_MANIFEST = 4 << 20
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


@dataclass
class _Registry:
    ref: Reference
    oras: Any  # oras.provider.Registry
    container: Any  # oras.container.Container
    prefix: str  # "http" or "https"

    def url(self, path: str) -> str:
        return f"{self.prefix}://{path}"


def _reachable(ref: Reference, plain: bool) -> None:
    """Fail fast and clearly when nothing listens (oras-py retries a dead registry for about
    two minutes before giving up)."""
    port = ref.host.rpartition(":")[2] if ":" in ref.host else ""
    try:
        socket.create_connection((ref.hostname, int(port or (80 if plain else 443))),
                                 timeout=5).close()  # fmt: skip
    except OSError as e:
        raise RegistryError(
            f"cannot reach the registry at {ref.host} ({e.strerror or e})"
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


def _connect(
    ref: Reference, plain_http: bool | None, registry_config: PathLike | None
) -> _Registry:
    try:
        import oras.provider
    except ImportError as e:
        raise MissingDependencyError(
            f"OCI push/pull needs oras ({e}); pip install 'trtpack[oci]'"
        ) from e
    plain = uses_plain_http(ref, plain_http)
    _reachable(ref, plain)
    prefix = "http" if plain else "https"
    configs = _auth_configs(registry_config)
    # The version check every OCI client starts with: 200, or 401 saying which auth it takes.
    registry = oras.provider.Registry(hostname=ref.host, insecure=plain)
    ping = _ping(registry.session, ref, prefix)
    challenge = ping.headers.get("WWW-Authenticate", "") if ping.status_code == 401 else ""
    basic = challenge.lower().startswith("basic")
    if basic:
        registry = oras.provider.Registry(hostname=ref.host, insecure=plain, auth_backend="basic")
    container = registry.get_container(ref.target)
    registry.auth.load_configs(container, configs=list(configs) or None)
    if basic:
        if not getattr(registry.auth, "_basic_auth", None):
            raise RegistryError(
                f"the registry at {ref.host} asks for a user name and password, and no Docker "
                f"config has them: `docker login {ref.host}` (writes ~/.docker/config.json), "
                "or registry_config=PATH (--registry-config) naming a config.json with an "
                f"auths entry for {ref.host}"
            )
        # sent with every request: a streamed upload cannot be replayed after a 401
        registry.session.headers.update(registry.auth.get_auth_header())
        if _ping(registry.session, ref, prefix).status_code == 401:
            raise RegistryError(
                f"the registry at {ref.host} refused the user name and password of its "
                "Docker config entry (`docker login` again?)"
            )
    elif ping.status_code not in (200, 401):
        raise RegistryError(
            f"{prefix}://{ref.host}/v2/ answered HTTP {ping.status_code}: not an OCI registry"
            + (" (an HTTPS one? then pass plain_http=False (--no-plain-http))" if plain else "")
        )
    return _Registry(ref, registry, container, prefix)


def _ping(session: Any, ref: Reference, prefix: str) -> Any:
    import requests

    try:
        return session.get(f"{prefix}://{ref.host}/v2/", timeout=30)
    except requests.exceptions.SSLError as e:
        reason = str(e.args[0] if e.args else e)
        raise RegistryError(
            f"TLS with the registry at {ref.host} failed ({reason[:160]}); if it serves plain "
            "HTTP, pass plain_http=True (--plain-http)"
        ) from None
    except requests.RequestException as e:
        raise RegistryError(f"cannot reach the registry at {ref.host} ({e})") from None


def _call(what: str, ref: Reference, fn: Any, *args: Any, _allow: tuple[int, ...] = (),
          **kwargs: Any) -> Any:  # fmt: skip
    """Run one registry request, turning transport and HTTP failures into RegistryError
    (except the statuses in ``_allow``, left to the caller)."""
    import requests

    try:
        response = fn(*args, **kwargs)
    except requests.exceptions.SSLError:
        raise RegistryError(
            f"TLS with the registry at {ref.host} failed to {what}; if it serves plain HTTP, "
            "pass plain_http=True (--plain-http)"
        ) from None
    except requests.ConnectionError:
        raise RegistryError(
            f"cannot reach the registry at {ref.host} to {what} (is it running?)"
        ) from None
    except (requests.RequestException, ValueError) as e:
        if "Not Found" in str(e):
            raise RegistryError(
                f"nothing at oci://{ref.target}: the registry has no such artifact"
            ) from None
        raise RegistryError(f"{what} at {ref.target} failed: {e}") from None
    status = getattr(response, "status_code", 200)
    if status in _allow:
        return response
    if isinstance(status, int) and status in (401, 403):
        raise RegistryError(
            f"{what} at {ref.target}: the registry refused (HTTP {status}); `docker login "
            f"{ref.host}` or registry_config=PATH (--registry-config) give it credentials"
        )
    if isinstance(status, int) and status >= 400:
        raise RegistryError(f"{what} at {ref.target} failed: HTTP {status} {response.text[:200]}")
    return response


# --- progress --------------------------------------------------------------------------------


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
    import oras.utils

    progress.begin(what)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
    r = _call(f"start uploading {what}", reg.ref, reg.oras.do_request,
              reg.url(reg.container.upload_blob_url()), "POST", headers=headers)  # fmt: skip
    location = r.headers.get("Location")
    if not location:
        raise RegistryError(f"the registry at {reg.ref.host} gave no upload location for {what}")
    url = oras.utils.append_url_params(
        urljoin(f"{reg.prefix}://{reg.ref.host}/", location), {"digest": layer["digest"]}
    )
    body = _Body(data, progress)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
    response = _call(f"upload {what}", reg.ref, reg.oras.do_request, url, "PUT", data=body,
                     headers=headers, _allow=(400,))  # fmt: skip
    if response.status_code == 400:
        if "DIGEST_INVALID" in response.text:
            raise IntegrityError(
                f"{what}: the registry computed another SHA-256 than the manifest records "
                f"({layer['digest']}): the pack is damaged (`trtpack verify`)",
                member=what, field="sha256", expected=layer["digest"],
            )  # fmt: skip
        raise RegistryError(f"upload {what} at {reg.ref.target} failed: HTTP 400 "
                            f"{response.text[:200]}")  # fmt: skip


def _download(reg: _Registry, digest: str, size: int, what: str, progress: _Progress,
              out: IO[bytes] | None = None) -> bytes:  # fmt: skip
    """Stream one blob, checking its size and SHA-256 as it comes; its bytes (``out`` None)
    or b"" (written to ``out``)."""
    progress.begin(what)
    response = _call(f"download {what}", reg.ref, reg.oras.get_blob, reg.container, digest,
                     stream=True)  # fmt: skip
    sha, got, parts = hashlib.sha256(), 0, []
    with response:
        for chunk in response.iter_content(_CHUNK):
            got += len(chunk)
            if got > size:
                raise IntegrityError(f"{what} from the registry is larger than its {size} bytes")
            sha.update(chunk)
            if out is None:
                parts.append(chunk)
            else:
                out.write(chunk)
            progress.advance(len(chunk))
    if got != size or "sha256:" + sha.hexdigest() != digest:
        raise IntegrityError(f"{what} from the registry does not match its digest {digest}")
    return b"".join(parts)


def _get_manifest(reg: _Registry) -> tuple[dict[str, Any], str]:
    """The OCI manifest and its digest (the SHA-256 of the bytes served; checked against the
    reference's digest when it names one)."""
    response = _call("fetch the manifest", reg.ref, reg.oras.do_request,
                     reg.url(reg.container.manifest_url()), "GET",
                     headers={"Accept": OCI_MANIFEST}, _allow=(404,))  # fmt: skip
    if response.status_code == 404:
        raise RegistryError(f"nothing at oci://{reg.ref.target}: the registry has no such artifact")
    raw = response.content
    if len(raw) > _MAX_OCI_MANIFEST:
        raise refuse("size of the OCI manifest in bytes", _MAX_OCI_MANIFEST, len(raw),
                     f"oci://{reg.ref.target}")  # fmt: skip
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if reg.ref.digest and digest != reg.ref.digest:
        raise IntegrityError(f"oci://{reg.ref.target}: the registry served a manifest of {digest}")
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"oci://{reg.ref.target}: the manifest is not JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise RegistryError(f"oci://{reg.ref.target}: the manifest is not a JSON object")
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
    found = oci.get("config")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    layers = [layer for layer in oci.get("layers") or [] if isinstance(layer, dict)]

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


def push(
    pack: PathLike,
    ref: str,
    *,
    layout: str = DEFAULT_LAYOUT,
    plain_http: bool | None = None,
    registry_config: PathLike | None = None,
    progress: ProgressArg = None,
    created: str | datetime | None = None,
) -> Pushed:
    """Push ``pack`` to ``ref`` in ``layout`` (``"modelpack"`` or ``"trtpack"``); blobs the
    registry already has are not sent again. ``progress``: None, a progress line on stderr
    only when it is a terminal; True, always; False, none; a callable, events
    (``trtpack.format.progress``). ``created``: the ModelPack creation time (default: the pack's
    ``created`` metadata, else ``SOURCE_DATE_EPOCH``, else none)."""
    reference = parse_reference(ref)
    if reference.digest:
        raise RegistryError(f"push to a tag, not a digest: {ref}")
    if layout not in LAYOUTS:
        raise RegistryError(f"layout must be one of {', '.join(LAYOUTS)} (--layout), "
                            f"not {layout!r}")  # fmt: skip
    with open_pack(pack) as (reader, info):
        raw = reader.read(MANIFEST_NAME)
        manifest, extra = _build(info, raw, layout, created)
        reg = _connect(reference, plain_http, registry_config)
        members = {f"sha256:{m.sha256}": n for n, m in info.manifest.members.items()}
        labels = {**members, manifest["config"]["digest"]: "the ModelPack config",
                  "sha256:" + hashlib.sha256(raw).hexdigest(): MANIFEST_NAME}  # fmt: skip
        missing, uploaded, skipped = [], [], []
        skipped_bytes = 0
        for blob in [manifest["config"], *manifest["layers"]]:
            name = members.get(blob["digest"])
            if _call("check a blob", reference, reg.oras.blob_exists, blob, reg.container):
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
            response = _call("upload the manifest", reference, reg.oras.upload_manifest,
                             manifest, reg.container)  # fmt: skip
            bar.close(f"{len(missing)} blob(s), {human_size(sent)} sent; "
                      f"{human_size(skipped_bytes)} already in the registry")  # fmt: skip
    body = json.dumps(manifest).encode()  # what requests sent: its default separators
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return Pushed(reference.target, digest, sorted(uploaded), sorted(skipped), layout,
                  sent + len(body), skipped_bytes)  # fmt: skip


# --- reading ---------------------------------------------------------------------------------


def fetch_manifest(
    ref: str, *, plain_http: bool | None = None, registry_config: PathLike | None = None
) -> dict[str, Any]:
    """The OCI manifest of a pushed pack (what ``oras manifest fetch`` shows), either layout;
    RegistryError if the artifact is not a pack."""
    reg = _connect(parse_reference(ref), plain_http, registry_config)
    manifest, _ = _get_manifest(reg)
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


def _manifest_from(raw: bytes, where: str) -> Manifest:
    """The pack's manifest from its manifest.json bytes, upgraded in memory as ``inspect``
    upgrades an older format."""
    data = parse_manifest_json(raw, where)
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, list) and len(version) == 2 and tuple(version) < FORMAT_VERSION:
        from ..format.upgrade import upgrade

        data, _, _ = upgrade(data)
    return Manifest.from_dict(data)


def _read_pack_manifest(reg: _Registry, desc: dict[str, Any], where: str,
                        bar: _Progress) -> bytes:  # fmt: skip
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise RegistryError(f"{where}: the descriptor of {MANIFEST_NAME} has no size")
    if size > MAX_MANIFEST_BYTES:
        raise refuse(f"size of {MANIFEST_NAME} in bytes", MAX_MANIFEST_BYTES, size, where)
    return _download(reg, str(desc.get("digest")), size, MANIFEST_NAME, bar)


def inspect(
    ref: str, *, plain_http: bool | None = None, registry_config: PathLike | None = None
) -> RemotePack:
    """Read a pushed pack's manifest without pulling it: the OCI manifest, then the pack's
    ``manifest.json`` blob (a few KiB); no weights, no engines."""
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config)
    oci, digest = _get_manifest(reg)
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
    progress: ProgressArg = None,
) -> Pulled:
    """Fetch the pack at ``ref`` into ``out`` (atomically), every blob checked. Either layout.

    ``variants`` None or ``"all"``: the pack as pushed, byte for byte. A list of names: the
    program and those engine variants only. ``"auto"``: the variants that can run on this
    machine (``trtpack.engines.select``; ``environment`` overrides what is probed). ``"none"``:
    the program only. Blobs of variants left out are never downloaded."""
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise OutputExistsError(out)
    reference = parse_reference(ref)
    reg = _connect(reference, plain_http, registry_config)
    oci, _ = _get_manifest(reg)
    layout, desc, layers = _layout_of(oci, ref)
    with _Progress("pull", progress) as bar:
        raw = _read_pack_manifest(reg, desc, ref, bar)
        downloaded = len(raw)
        manifest = Manifest.from_json(raw)
        keep, left_out = _choose(manifest, variants, environment, ref)
        if len(keep) != len(manifest.engines):
            raw = _subset(raw, keep, ref)
            manifest = Manifest.from_json(raw)
        wanted = sorted(manifest.members.items())
        for name, member in wanted:  # every layer is there before anything large is fetched
            layer = layers.get(name)
            if layer is None or layer.get("digest") != f"sha256:{member.sha256}" or \
                    layer.get("size") != member.size:  # fmt: skip
                raise RegistryError(f"{ref}: no layer holds member {name!r} of its manifest")
        bar.total = downloaded + sum(m.size for _, m in wanted)
        bar.done = downloaded
        parent = out_path.parent if str(out_path.parent) else Path(".")
        with tempfile.TemporaryDirectory(dir=parent, prefix=".trtpack-pull-") as tmp:
            members = {}
            for i, (name, member) in enumerate(wanted):
                path = Path(tmp) / f"member{i}"
                with open(path, "wb") as f:
                    _download(reg, f"sha256:{member.sha256}", member.size, name, bar, f)
                bar.note(name, member.size, "received")
                downloaded += member.size
                members[name] = FileSlice(path, 0, member.size)
            final = raw
            write_pack(out_path, members, lambda _digests: final, overwrite=overwrite)
        bar.close(f"{len(wanted)} member(s), {human_size(downloaded)} received")
    info = inspect_pack(out_path)
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(PackInfo)}
    return Pulled(**fields, reference=f"oci://{reference.target}", layout=layout,
                  variants=tuple(keep), left_out=left_out,
                  bytes_downloaded=downloaded)  # fmt: skip
