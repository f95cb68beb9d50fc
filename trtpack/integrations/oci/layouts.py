"""The two layouts (ModelPack and trtpack): the OCI manifest of a pack, its annotations and
descriptors, and which layout a pulled manifest has. No network."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from typing import Any

from ...errors import RegistryError
from ...format.manifest import MANIFEST_NAME
from ...reading import PackInfo, format_shape

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
#: what a ModelPack extract restores: a regular rw-r--r-- file dated like the pack's members
_FILE_MODE = 0o644
_MTIME = "1980-01-01T00:00:00Z"


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
