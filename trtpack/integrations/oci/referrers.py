"""The pack's signature attached to the pushed manifest as an OCI referrer, and found again
on pull."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ...errors import RegistryError
from ...format.container import PathLike
from ...format.limits import MAX_SIGNATURE_BYTES
from ...format.manifest import MANIFEST_NAME
from .blobs import _DIGEST, _blob_exists, _download, _get_manifest, _put_manifest, _size, _upload
from .layouts import OCI_MANIFEST, _descriptor
from .progress import _Progress
from .transport import _MAX_OCI_MANIFEST, _json, _read, _Registry

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
    from ...signing import signature_path

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
    from ...signing import BUNDLE_MEDIA_TYPE

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
    from ...signing import BUNDLE_MEDIA_TYPE

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
