"""Signatures over a pack's manifest, in the OpenSSF model-signing format (no torch).

The signature is a detached sigstore bundle (``PACK.sig``, JSON, media type v0.3) whose DSSE
envelope carries an in-toto statement with predicate type ``https://model_signing/signature/v1.0``
and serialization ``files``: one resource per member (name, sha256 from the manifest) plus
``manifest.json`` itself. So ``model_signing`` can verify the members extracted to a directory,
and trtpack verifies by reading only ``manifest.json``: since the manifest records every
member's SHA-256, a later member read is checked against a now-trusted manifest.
Key-based (ECDSA PEM) signing only; no transparency log, works offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError, SignatureError, UnsignedPackError
from .format.container import SIGNATURE_SUFFIX, PackReader, atomic_write
from .format.limits import (
    MAX_KEY_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_SIGNATURE_OBJECTS,
    MAX_SIGNATURES,
)
from .format.manifest import MANIFEST_NAME
from .format.progress import ProgressArg
from .reading import PackInfo, open_pack, read_info, verify_members, with_program_guards
from .reading import verify as verify_hashes

PathLike = str | os.PathLike

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "signing needs the 'cryptography' package: pip install 'trtpack[sign]'"
        ) from None


def _load_key(key: PathLike, *, private: bool) -> object:
    from cryptography.hazmat.primitives import serialization

    raw, size = _read_capped(Path(key), MAX_KEY_BYTES)
    if raw is None:
        raise SignatureError(
            f"{key} is {size} bytes, over trtpack's limit of {MAX_KEY_BYTES} for a PEM key "
            "(schema/SPEC.md, Limits)",
            path=str(key), reason="key too large", expected=MAX_KEY_BYTES, got=size,
        )  # fmt: skip
    try:
        if private:
            return serialization.load_pem_private_key(raw, password=None)
        return serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as e:
        kind = "private" if private else "public"
        raise SignatureError(
            f"{key} is not a PEM {kind} key: {e}", path=str(key), reason="key unreadable"
        ) from None


def _read_capped(path: Path, limit: int) -> tuple[bytes | None, int]:
    """``(bytes, size)``, or ``(None, size)`` when the file holds more than ``limit`` bytes:
    a regular file is refused by its size before any read, anything else (a pipe, a device)
    after reading ``limit + 1`` bytes. Never more than that is held in memory."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            return None, st.st_size
        data = f.read(limit + 1)
    return (None, len(data)) if len(data) > limit else (data, len(data))


class _OverLimit(Exception):
    def __init__(self, what: str, limit: int) -> None:
        self.what, self.limit = what, limit


def _parse_bundle(raw: bytes) -> Any:
    """The bundle's JSON, parsed with a budget: the parse stops at the first object past
    the caps, so a bundle of 200,000 signatures costs microseconds, not a public-key check
    (or a Python object) each."""
    objects = signatures = 0

    def count(obj: dict) -> dict:
        nonlocal objects, signatures
        objects += 1
        if objects > MAX_SIGNATURE_OBJECTS:
            raise _OverLimit("JSON objects", MAX_SIGNATURE_OBJECTS)
        if "sig" in obj:
            signatures += 1
            if signatures > MAX_SIGNATURES:
                raise _OverLimit("signatures", MAX_SIGNATURES)
        return obj

    return json.loads(raw, object_hook=count)


def signature_path(pack: PathLike) -> Path:
    """Where the detached signature of ``pack`` lives by default: ``PACK.sig`` beside it."""
    p = Path(pack)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def _pae(payload: bytes) -> bytes:
    # DSSE pre-authentication encoding: what is actually signed.
    t = PAYLOAD_TYPE.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _resources(reader: PackReader) -> tuple[list[dict], str]:
    """(path, sha256) of every member plus the manifest, sorted as model_signing sorts them."""
    info = read_info(reader, program_guards=False)  # reads manifest.json only
    raw_digest = info.digest.removeprefix("sha256:")
    items = {name: m.sha256.removeprefix("sha256:") for name, m in info.manifest.members.items()}
    items[MANIFEST_NAME] = raw_digest
    resources = [
        {"name": name, "algorithm": "sha256", "digest": digest}
        for name, digest in sorted(items.items())
    ]
    return resources, raw_digest


def _root_digest(resources: list[dict]) -> str:
    # model_signing's subject digest: SHA-256 over the concatenated raw resource digests.
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def _statement(resources: list[dict], name: str) -> dict:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": _root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [],
            },
            "resources": resources,
        },
    }


def _hash_for(key: Any) -> Any:  # a cryptography HashAlgorithm
    from cryptography.hazmat.primitives import hashes

    # The curve's matching hash, as model_signing picks it.
    bits = key.curve.key_size
    return hashes.SHA256() if bits <= 256 else hashes.SHA384() if bits <= 384 else hashes.SHA512()


def sign(pack: PathLike, key: PathLike, *, output: PathLike | None = None) -> Path:
    """Sign ``pack``'s manifest with an EC private key (PEM); write the bundle to ``output``
    (default ``PACK.sig``) atomically and return its path. The pack itself is not changed."""
    _require_cryptography()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = _load_key(key, private=True)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise SignatureError(
            f"{key}: not an elliptic-curve private key", path=str(key), reason="key type"
        )
    with PackReader(pack) as reader:
        resources, _ = _resources(reader)
    payload = json.dumps(_statement(resources, Path(pack).stem), sort_keys=True).encode()
    sig = private.sign(_pae(payload), ec.ECDSA(_hash_for(private)))
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(public_pem).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    out = Path(output) if output is not None else signature_path(pack)
    with atomic_write(out) as fp:
        fp.write(json.dumps(bundle, indent=2, sort_keys=True).encode() + b"\n")
    return out


def verify_reader(reader: PackReader, key: PathLike, signature: PathLike | None = None) -> dict:
    """Check ``reader``'s pack against its signature, reading only ``manifest.json``.

    Returns the verified in-toto statement. Raises UnsignedPackError when there is no
    signature, SignatureError when it does not verify or does not match the manifest."""
    _require_cryptography()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    path = str(reader.path)
    sig_path = Path(signature) if signature is not None else signature_path(reader.path)
    if not sig_path.is_file():
        raise UnsignedPackError(
            f"{path} is not signed: no signature at {sig_path}", path=path, reason="unsigned"
        )

    def fail(reason: str, expected: object = None, got: object = None) -> SignatureError:
        msg = f"{path}: signature {sig_path} does not verify: {reason}"
        return SignatureError(msg, path=path, reason=reason, expected=expected, got=got)

    def over(what: str, limit: int, got: object) -> SignatureError:
        # refused before any public-key check, and before the whole bundle is in memory
        msg = (f"{path}: signature {sig_path} holds {got} {what}, over trtpack's limit of "
               f"{limit} (schema/SPEC.md, Limits)")  # fmt: skip
        return SignatureError(msg, path=path, reason=f"{what} over the limit", expected=limit,
                              got=got)  # fmt: skip

    try:
        raw, size = _read_capped(sig_path, MAX_SIGNATURE_BYTES)
    except OSError as e:
        raise fail(f"cannot read it ({e.strerror or e})") from None
    if raw is None:
        raise over("bytes", MAX_SIGNATURE_BYTES, size)
    try:
        bundle = _parse_bundle(raw)
        env = bundle["dsseEnvelope"]
        if isinstance(env["signatures"], list) and len(env["signatures"]) > MAX_SIGNATURES:
            raise over("signatures", MAX_SIGNATURES, len(env["signatures"]))
        payload = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        payload_type = env["payloadType"]
    except _OverLimit as e:
        raise over(e.what, e.limit, f"more than {e.limit}") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise fail(f"not a sigstore bundle with a DSSE envelope ({e})") from None
    if payload_type != PAYLOAD_TYPE:
        raise fail("payload type", PAYLOAD_TYPE, payload_type)
    public = _load_key(key, private=False)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise fail("the key is not an elliptic-curve public key")
    for s in sigs:
        try:
            public.verify(s, _pae(payload), ec.ECDSA(_hash_for(public)))
            break
        except InvalidSignature:
            continue
    else:
        raise fail("no signature in the bundle was made by this key")
    try:
        statement = json.loads(payload)
        signed = statement["predicate"]["resources"]
        subject = statement["subject"][0]["digest"]["sha256"]
        predicate_type = statement["predicateType"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise fail(f"the statement is malformed ({e})") from None
    # a statement signed by the right key can still be malformed (another tool, a bug):
    # its resources are compared and hashed below, so their shape is checked first
    if not isinstance(signed, list) or not all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("digest"), str)
        for r in signed
    ):
        raise fail("the statement is malformed (predicate.resources is not a list of "
                   "{name, digest} strings)")  # fmt: skip
    if predicate_type != PREDICATE_TYPE:
        raise fail("predicate type", PREDICATE_TYPE, predicate_type)
    actual, manifest_digest = _resources(reader)
    want = {r["name"]: r["digest"] for r in signed}
    got = {r["name"]: r["digest"] for r in actual}
    if want.get(MANIFEST_NAME) != manifest_digest or want != got:
        diff = sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))
        raise fail(
            f"the pack differs from what was signed in {', '.join(diff)}",
            {n: want.get(n) for n in diff},
            {n: got.get(n) for n in diff},
        )
    if subject != _root_digest(sorted(signed, key=lambda r: r["name"])):
        raise fail("the subject digest does not match the signed resources")
    return statement


def verify_signature(pack: PathLike, key: PathLike, signature: PathLike | None = None) -> dict:
    """Verify ``pack``'s signature (default ``PACK.sig``) with a PEM public key."""
    with PackReader(pack) as reader:
        return verify_reader(reader, key, signature)


def verify(
    path: PathLike,
    *,
    key: PathLike | None = None,
    signature: PathLike | None = None,
    progress: ProgressArg = None,
) -> PackInfo:
    """``trtpack.verify``: check every member's SHA-256 and size against the manifest, and
    every engine plan's header against its variant's target (IntegrityError, EngineError).

    ``key``: a PEM public key; the pack's signature (``signature``, default ``PATH.sig``)
    must verify with it first (SignatureError / UnsignedPackError), before any member but the
    manifest is read. Signature and hashes are checked in one open of the file, so a file
    swapped between the two checks cannot pass.

    ``progress``: the bytes hashed, as ``save``'s (``trtpack.format.progress``): a line on
    stderr when it is a terminal (``None``), always (``True``), never (``False``), or a
    callable given a ``ProgressEvent`` for each member and every ~0.1 s of bytes."""
    if key is None:
        if signature is not None:
            raise SignatureError("a signature to check needs the signer's public key (key=)")
        return verify_hashes(path, progress=progress)
    with open_pack(path, program_guards=False) as (reader, info):
        verify_reader(reader, key, signature)
        verify_members(reader, info, progress=progress)
        return with_program_guards(reader, info)
