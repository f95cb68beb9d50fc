"""A pack in an OCI registry, through oras-py. No torch.

    trtpack push model.trtpack oci://127.0.0.1:5000/models/detector:1
    trtpack pull oci://127.0.0.1:5000/models/detector:1 -o model.trtpack

The artifact (``artifactType: application/vnd.trtpack.v1``) has the pack's ``manifest.json`` as
its config blob and one layer per member, each layer's digest being the member's SHA-256 the
manifest already records. So the registry stores each member once, across tags and versions:
re-pushing a pack whose engine changed uploads that engine only. The OCI manifest's
annotations summarize inputs, outputs and engines, so ``oras manifest fetch`` (or a registry
UI) shows them without downloading anything else. ``pull`` checks every blob against the
manifest and reassembles the pack with trtpack's deterministic writer: the same bytes as the
file that was pushed.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, MissingDependencyError, OutputExistsError, RegistryError
from ..format.container import FileSlice, PathLike, write_pack
from ..format.manifest import MANIFEST_NAME, Manifest
from ..info import PackInfo, format_shape, inspect, open_pack

ARTIFACT_TYPE = "application/vnd.trtpack.v1"
CONFIG_TYPE = "application/vnd.trtpack.format.manifest.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
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


def parse_reference(ref: str) -> Reference:
    m = _REF.match(ref)
    if not m:
        raise RegistryError(
            f"{ref!r} is not an OCI reference: expected oci://HOST[:PORT]/REPOSITORY[:TAG] "
            "(lower-case repository), e.g. oci://127.0.0.1:5000/models/detector:1"
        )
    return Reference(m["host"], m["repo"], m["tag"], m["digest"])


def _reachable(ref: Reference) -> None:
    """Fail fast and clearly when nothing listens (oras-py retries a dead registry for about
    two minutes before giving up)."""
    host, _, port = ref.host.rpartition(":") if ":" in ref.host else (ref.host, "", "")
    local = host in ("127.0.0.1", "localhost", "::1")
    try:
        socket.create_connection((host, int(port or (80 if local else 443))), timeout=5).close()
    except OSError as e:
        raise RegistryError(
            f"cannot reach the registry at {ref.host} ({e.strerror or e})"
        ) from None


def _registry(ref: Reference) -> Any:
    try:
        import oras.provider
    except ImportError as e:
        raise MissingDependencyError(
            f"OCI push/pull needs oras ({e}); pip install 'trtpack[oci]'"
        ) from e
    _reachable(ref)
    local = ref.host.split(":")[0] in ("127.0.0.1", "localhost", "::1")
    return oras.provider.Registry(hostname=ref.host, insecure=local)


def _media_type(member: str) -> str:
    if member.endswith(".plan"):
        return "application/vnd.trtpack.engine.v1"
    if member.endswith(".safetensors"):
        return "application/vnd.trtpack.weights.v1.safetensors"
    if member.endswith(".json"):
        return "application/vnd.trtpack.graph.v1+json"
    return "application/octet-stream"


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


def _call(what: str, ref: Reference, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one registry request, turning transport and HTTP failures into RegistryError."""
    import requests

    try:
        response = fn(*args, **kwargs)
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
    if isinstance(status, int) and status >= 400:
        raise RegistryError(f"{what} at {ref.target} failed: HTTP {status} {response.text[:200]}")
    return response


@dataclass(frozen=True)
class Pushed:
    reference: str
    manifest_digest: str
    uploaded: list[str]  # members sent (the others were already in the registry)
    skipped: list[str]


def push(pack: PathLike, ref: str) -> Pushed:
    """Push ``pack`` to ``ref``; members the registry already has are not sent again."""
    reference = parse_reference(ref)
    if reference.digest:
        raise RegistryError(f"push to a tag, not a digest: {ref}")
    registry = _registry(reference)
    container = registry.get_container(reference.target)
    uploaded: list[str] = []
    skipped: list[str] = []
    with open_pack(pack) as (reader, info), tempfile.TemporaryDirectory() as tmp:
        raw = reader.read(MANIFEST_NAME)
        blobs: list[tuple[str, str, str, bytes | None]] = [
            (MANIFEST_NAME, CONFIG_TYPE, "sha256:" + hashlib.sha256(raw).hexdigest(), raw)
        ]
        for name, member in sorted(info.manifest.members.items()):
            blobs.append((name, _media_type(name), f"sha256:{member.sha256}", None))
        layers = []
        for name, media_type, digest, data in blobs:
            size = len(data) if data is not None else info.manifest.members[name].size
            layer = {"mediaType": media_type, "digest": digest, "size": size}
            if name != MANIFEST_NAME:
                layer["annotations"] = {"org.opencontainers.image.title": name}
                layers.append(layer)
            else:
                config = layer
            exists = _call("check a blob", reference, registry.blob_exists, layer, container)
            if exists:
                skipped.append(name)
                continue
            path = Path(tmp) / f"blob{len(uploaded)}"
            with open(path, "wb") as f:
                f.write(data if data is not None else reader.view(name))
            _call(f"upload {name}", reference, registry.upload_blob, str(path), container, layer)
            path.unlink()
            uploaded.append(name)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": layers,
            "annotations": pack_annotations(info),
        }
        response = _call("upload the manifest", reference, registry.upload_manifest, manifest,
                         container)  # fmt: skip
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:  # what requests sent: json.dumps with its default separators
        digest = "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
    return Pushed(reference.target, digest,
                  [n for n in uploaded if n != MANIFEST_NAME],
                  [n for n in skipped if n != MANIFEST_NAME])  # fmt: skip


def fetch_manifest(ref: str) -> dict[str, Any]:
    """The OCI manifest of a pushed pack (what ``oras manifest fetch`` shows)."""
    reference = parse_reference(ref)
    registry = _registry(reference)
    container = registry.get_container(reference.target)
    manifest = _call("fetch the manifest", reference, registry.get_manifest, container,
                     allowed_media_type=[OCI_MANIFEST])  # fmt: skip
    if not isinstance(manifest, dict) or manifest.get("config", {}).get("mediaType") != CONFIG_TYPE:
        raise RegistryError(
            f"{ref} is not a trtpack artifact (its config is not a trtpack manifest)"
        )
    return manifest


def pull(ref: str, out: PathLike, *, overwrite: bool = False) -> PackInfo:
    """Fetch the pack at ``ref`` into ``out`` (atomically), every blob checked; the result is
    byte-identical to the pack that was pushed."""
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise OutputExistsError(out)
    reference = parse_reference(ref)
    oci = fetch_manifest(ref)
    registry = _registry(reference)
    container = registry.get_container(reference.target)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "manifest.json"
        _call("download the manifest", reference, registry.download_blob, container,
              oci["config"]["digest"], str(config_path))  # fmt: skip
        raw = config_path.read_bytes()
        _check(raw, oci["config"]["digest"], "manifest.json")
        manifest = Manifest.from_json(raw)
        titles = {
            layer.get("annotations", {}).get("org.opencontainers.image.title"): layer
            for layer in oci.get("layers", [])
        }
        members = {}
        for i, (name, member) in enumerate(sorted(manifest.members.items())):
            layer = titles.get(name)
            if layer is None or layer["digest"] != f"sha256:{member.sha256}":
                raise RegistryError(f"{ref}: no layer holds member {name!r} of its manifest")
            path = Path(tmp) / f"member{i}"
            _call(f"download {name}", reference, registry.download_blob, container,
                  layer["digest"], str(path))  # fmt: skip
            _check_file(path, member.sha256, member.size, name)
            members[name] = FileSlice(path, 0, member.size)
        write_pack(out_path, members, lambda _digests: raw, overwrite=True)
    return inspect(out_path)


def _check(data: bytes, digest: str, what: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise IntegrityError(f"{what} from the registry is {got}, expected {digest}")


def _check_file(path: Path, sha256: str, size: int, what: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    if path.stat().st_size != size or h.hexdigest() != sha256:
        raise IntegrityError(f"{what} from the registry does not match the manifest's SHA-256")
