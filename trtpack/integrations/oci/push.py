"""``trtpack push``: a pack to a registry, blobs it already has not sent again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from ...errors import RegistryError
from ...format.container import PathLike
from ...format.manifest import MANIFEST_NAME
from ...reading import human_size, open_pack
from .blobs import _blob_exists, _put_manifest, _upload
from .layouts import DEFAULT_LAYOUT, LAYOUTS, OCI_MANIFEST, _build, _descriptor
from .progress import ProgressArg, _Progress
from .referrers import _attach_signature, _signature_to_push
from .transport import _connect, parse_reference


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
    progress: ProgressArg = None,
    created: str | datetime | None = None,
    signature: PathLike | bool = True,
    timeout: float | None = None,
) -> Pushed:
    """Push ``pack`` to ``ref`` in ``layout`` (``"modelpack"`` or ``"trtpack"``); blobs the
    registry already has are not sent again. ``progress``: None, a progress line on stderr
    only when it is a terminal; True, always; False, none; a callable, events
    (``trtpack.format.progress``). ``created``: the ModelPack creation time (default: the pack's
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
