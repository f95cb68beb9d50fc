"""Blobs and manifests up and down the registry, through the transport: uploads streamed
from the pack file, downloads checked for size and SHA-256 as they stream."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlencode, urljoin

from ...errors import IntegrityError, PackWriteError, RegistryError
from ...format.container import Chunks, FileSlice, PathLike, Source, source_size
from .layouts import OCI_MANIFEST
from .progress import _Progress
from .transport import _MAX_OCI_MANIFEST, _MAX_SMALL_BODY, _chunks, _json, _read, _Registry

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20


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
