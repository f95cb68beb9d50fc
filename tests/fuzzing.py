"""The fuzz target: damaged and crafted packs through every reader, nothing but TrtpackError.

Seeds are real files — a program pack, a pack with two TensorRT-RTX engine variants, a pack
migrated from a torch.export file, that torch.export file itself, the pre-2.7 torch.export
layout and a torch_tensorrt ``.ep`` — and each iteration damages one of them and runs one
entry point on it:

- byte damage (a flaky disk, a cut download): bit flips, bytes set to edge values,
  truncation, insertion, deletion, anywhere or in the zip's central directory;
- hash-consistent edits (an attacker, who can rewrite the manifest's digests): a member's
  bytes or a manifest field changed and the pack rewritten with matching SHA-256 and CRC-32,
  so the damage reaches the parsers behind the hash check.

Packs of older format versions (1.0-1.2 fixtures) take the same damage, so hash-consistent
edits reach the upgrade steps. A signed pack goes through ``verify(key=)`` and
``load(require_signature=)`` with its pack or its ``.sig`` bundle damaged (bytes, a JSON edit
of the bundle, or a statement edited and signed again with the signer's key); a signed entry
point that succeeds must have been handed the signed members, byte for byte (else: a silent
change, a finding).

An entry point may succeed or raise a :class:`trtpack.TrtpackError`; anything else is a
finding. ``tests/test_fuzz.py`` runs a few hundred iterations in CI; ``tools/fuzz.py`` runs
the long campaign and prints iterations/s.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import shutil
import signal
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OPS = ("inspect", "verify", "load", "load_noverify", "load_mmap", "cli_inspect", "migrate",
       "check")  # fmt: skip
SIGNED_OPS = ("verify_key", "load_signed", "load_signed_noverify")  # the "signed" seed's
# packs of older format versions: every reader upgrades them in memory (format/upgrade.py)
OLDER = {
    "v1.0_engines": "v1.0/keywords_engines.trtpack",
    "v1.1_guarded": "v1.1/guarded.trtpack",
    "v1.2_samples": "v1.2/keywords_samples.trtpack",
}


def make_seeds(out: Path) -> dict[str, bytes]:
    """The real files every iteration starts from (built once, in ``out``). Names with a dot
    are not seeds but the signed seed's companions: its bundle and the signer's keys."""
    import rtx
    import torch
    from models import CASES

    import trtpack

    out.mkdir(parents=True, exist_ok=True)
    _, ep = CASES["keywords"].export()
    program = out / "program.trtpack"
    if not program.exists():  # with reference samples (format 1.2): one more member and field
        trtpack.save(ep, program, metadata={"model": "keywords"}, samples=2)
    engines = out / "engines.trtpack"
    if not engines.exists():
        trtpack.save(ep, engines)
        trtpack.add_engine(engines, rtx.keywords_plan(("8.0",)), variant="sm80")
        trtpack.add_engine(engines, rtx.keywords_plan(("8.6", "8.9")), variant="ampere_ada")
    pt2 = FIXTURES / "v0" / "torch_export" / "with_buffers.pt2"
    migrated = out / "migrated.trtpack"
    if not migrated.exists():
        trtpack.migrate(pt2, migrated)
    signed = out / "signed.trtpack"
    if not signed.exists():
        trtpack.save(ep, signed, metadata={"model": "keywords"})
        trtpack.sign(signed, _keypair(out))
    del torch
    files = {
        "program": program,
        "engines": engines,
        "migrated": migrated,
        "pt2": pt2,
        "pre27": FIXTURES / "v0" / "torch_export" / "keywords_pre27.pt2",
        "torch_tensorrt": FIXTURES / "v0" / "torch_tensorrt" / "net_partitioned.ep",
        **{name: FIXTURES / rel for name, rel in OLDER.items()},
        "signed": signed,
        "signed.sig": signed.with_name(signed.name + ".sig"),
        "signed.key": out / "signer.key",
        "signed.pub": out / "signer.pub",
    }
    return {name: p.read_bytes() for name, p in files.items()}


def _keypair(out: Path) -> Path:
    """An EC signing key pair in ``out`` (signer.key, signer.pub); returns the private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    (out / "signer.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    (out / "signer.pub").write_bytes(key.public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return out / "signer.key"


# --- mutations ---------------------------------------------------------------------------


def _cd_start(data: bytes) -> int:
    """Where the central directory starts (roughly: the last 'PK\\1\\2' region)."""
    i = data.find(b"PK\x01\x02")
    return i if i >= 0 else max(0, len(data) - 256)


def _offset(rng: random.Random, data: bytes) -> int:
    if not data:
        return 0
    if rng.random() < 0.4:  # the zip's directory and end records: small, dense with fields
        return rng.randrange(_cd_start(data), len(data))
    if rng.random() < 0.3:  # the first member (manifest.json or the archive's first file)
        return rng.randrange(0, min(len(data), 4096))
    return rng.randrange(len(data))


_EDGE = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)


def byte_damage(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    buf = bytearray(data)
    kind = rng.choice(("flip", "flip", "edge", "truncate", "insert", "delete"))
    at = _offset(rng, data)
    if kind == "flip":
        n = rng.choice((1, 1, 2, 4, 8))
        for _ in range(n):
            i = _offset(rng, data)
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf), f"flip {n} bit(s) from {at}"
    if kind == "edge":
        n = rng.choice((1, 2, 4, 8))
        buf[at : at + n] = bytes([rng.choice(_EDGE)] * n)[: len(buf) - at]
        return bytes(buf), f"set {n} byte(s) at {at}"
    if kind == "truncate":
        return bytes(buf[:at]), f"truncate to {at}"
    if kind == "insert":
        n = rng.choice((1, 1, 4, 16))
        return bytes(buf[:at] + rng.randbytes(n) + buf[at:]), f"insert {n} at {at}"
    n = rng.choice((1, 1, 4, 16))
    return bytes(buf[:at] + buf[at + n :]), f"delete {n} at {at}"


def _mutate_json(rng: random.Random, value: object, depth: int = 0) -> object:
    """One random edit somewhere in a JSON value."""
    if isinstance(value, dict) and value and (depth < 2 or rng.random() < 0.8):
        key = rng.choice(sorted(value))
        out = dict(value)
        r = rng.random()
        if r < 0.1:
            del out[key]
        elif r < 0.15:
            out[key + "_x"] = out[key]
        else:
            out[key] = _mutate_json(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.85:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        r = rng.random()
        if r < 0.1:
            del out_list[i]
        elif r < 0.2:
            out_list.insert(i, out_list[i])
        else:
            out_list[i] = _mutate_json(rng, out_list[i], depth + 1)
        return out_list
    return rng.choice(
        (
            -1,
            0,
            1,
            2**31,
            2**63,
            -(2**63),
            1.5,
            None,
            True,
            "",
            "x",
            "bias=exec('1')",
            "torch.ops.aten.add.Tensor",
            "builtins.eval",
            "../x",
            [],
            {},
            [value],
            {"k": value},
            "a" * 300,
        )
    )


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


def _rezip_legacy(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def _rezip_pack(members: dict[str, bytes], manifest: dict) -> bytes:
    """A pack whose manifest records the (edited) members' real digests."""
    from trtpack.format.container import pack_bytes
    from trtpack.format.manifest import MANIFEST_NAME, dumps_canonical

    body = {n: b for n, b in members.items() if n != MANIFEST_NAME}

    def make(digests):
        m = json.loads(json.dumps(manifest))
        listed = m.get("members") if isinstance(m.get("members"), dict) else {}
        for name, d in digests.items():
            if name in listed and isinstance(listed[name], dict):
                listed[name] = {**listed[name], "sha256": d.sha256, "size": d.size}
        return dumps_canonical(m)

    return bytes(pack_bytes(body, make))


def consistent_edit(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """Edit a member or the manifest, then rewrite the file so every hash matches."""
    members = _members(data)
    is_pack = "manifest.json" in members
    name = rng.choice(sorted(members))
    body = members[name]
    desc = name
    if name.endswith(".json") or (body[:1] in (b"{", b"[") and rng.random() < 0.9):
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if value is not None:
            members[name] = json.dumps(_mutate_json(rng, value)).encode()
            desc = f"json edit of {name}"
    if desc == name:  # binary: damage bytes, mostly in the header (weights, plan)
        buf = bytearray(body)
        if buf:
            for _ in range(rng.choice((1, 2, 4))):
                i = rng.randrange(min(len(buf), 512) if rng.random() < 0.7 else len(buf))
                buf[i] = rng.randrange(256)
        members[name] = bytes(buf)
        desc = f"bytes of {name}"
    if not is_pack:
        return _rezip_legacy(members), f"consistent: {desc}"
    try:
        manifest = json.loads(members["manifest.json"])
    except ValueError:
        return _rezip_legacy(members), f"consistent (no manifest json): {desc}"
    if name == "manifest.json":
        manifest = json.loads(members["manifest.json"])
        if not isinstance(manifest, dict):
            return _rezip_legacy(members), f"consistent: {desc}"
    try:
        return _rezip_pack(members, manifest), f"consistent: {desc}"
    except Exception:  # the writer refused (e.g. an edited member name): plain zip instead
        return _rezip_legacy(members), f"consistent (plain zip): {desc}"


def bundle_damage(rng: random.Random, bundle: bytes, private_pem: bytes) -> tuple[bytes, str]:
    """Damage a signature bundle: its bytes, a field of its JSON, or its statement edited and
    signed again with the signer's key (what a signer's buggy tool could write: it verifies,
    so the damage reaches the statement's parser and the comparison with the pack)."""
    r = rng.random()
    if r < 0.3:
        return byte_damage(rng, bundle)
    value = json.loads(bundle)
    if r < 0.65:
        return json.dumps(_mutate_json(rng, value)).encode(), "json edit of the bundle"
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from trtpack.signing import _pae

    env = value["dsseEnvelope"]
    statement = _mutate_json(rng, json.loads(base64.b64decode(env["payload"])))
    payload = json.dumps(statement, sort_keys=True).encode()
    key = serialization.load_pem_private_key(private_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = key.sign(_pae(payload), ec.ECDSA(hashes.SHA256()))
    env["payload"] = base64.b64encode(payload).decode()
    env["signatures"] = [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]
    return json.dumps(value).encode(), "statement edited, signed again"


def mutate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    if rng.random() < 0.4:
        with contextlib.suppress(zipfile.BadZipFile):
            return consistent_edit(rng, data)
    return byte_damage(rng, data)


# --- entry points --------------------------------------------------------------------------


def run_op(op: str, path: Path, scratch: Path) -> None:
    import trtpack

    if op == "inspect":
        trtpack.inspect(path)
    elif op == "verify":
        trtpack.verify(path)
    elif op == "load":
        trtpack.load(path, device="cpu")
    elif op == "load_noverify":
        trtpack.load(path, device="cpu", verify=False)
    elif op == "load_mmap":  # the opt-in zero-copy CPU load
        trtpack.load(path, device="cpu", mmap=True)
    elif op == "verify_key":
        trtpack.verify(path, key=scratch / "signer.pub")
    elif op == "load_signed":
        trtpack.load(path, device="cpu", require_signature=scratch / "signer.pub")
    elif op == "load_signed_noverify":  # verify=False must not weaken a required signature
        trtpack.load(path, device="cpu", require_signature=scratch / "signer.pub", verify=False)
    elif op == "cli_inspect":
        from trtpack.cli.commands import main

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["inspect", str(path)])
            main(["inspect", "--json", str(path)])
    elif op == "check":  # reference samples run on the loaded program
        trtpack.load(path, device="cpu", check=True)
    elif op == "migrate":
        out = scratch / "migrated.trtpack"
        out.unlink(missing_ok=True)
        trtpack.migrate(path, out)
    else:
        raise ValueError(op)


class SilentChange(Exception):
    """A signed entry point accepted bytes that are not the signed ones."""


def _changed_members(signed: bytes, data: bytes) -> list[str]:
    """The members whose bytes differ from the signed pack's (as zipfile reads both)."""
    try:
        got = _members(data)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return []  # zipfile cannot read it; trtpack's reader checked what it read
    want = _members(signed)
    return sorted(n for n in set(want) | set(got) if want.get(n) != got.get(n))


class Hang(BaseException):
    """An entry point ran past the time limit."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def fire(*_: object) -> None:
        raise Hang(f"ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Finding:
    seed: str
    op: str
    mutation: str
    error: str
    file: Path | None = None


@dataclass
class Report:
    iterations: int = 0
    seconds: float = 0.0
    expected: int = 0  # a TrtpackError
    accepted: int = 0  # no error (the damage did not matter, e.g. in padding)
    unexpected: list[Finding] = field(default_factory=list)
    hangs: list[Finding] = field(default_factory=list)
    by_error: dict[str, int] = field(default_factory=dict)


def campaign(
    seeds: dict[str, bytes],
    iterations: int,
    *,
    seed: int,
    scratch: Path,
    ops: tuple[str, ...] = OPS,
    time_limit: float = 10.0,
    keep: Path | None = None,
    on_progress: Callable[[Report], None] | None = None,
    max_seconds: float | None = None,
) -> Report:
    """Run ``iterations`` damaged files through the entry points (or as many as fit in
    ``max_seconds``); collect what escapes."""
    import trtpack

    rng = random.Random(seed)
    report = Report()
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "target"
    names = [n for n in sorted(seeds) if "." not in n]
    if "signed.pub" in seeds:
        (scratch / "signer.pub").write_bytes(seeds["signed.pub"])
    start = time.perf_counter()
    for it in range(iterations):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        seed_name = rng.choice(names)
        sig = None
        if seed_name == "signed" and rng.random() < 0.6:
            data = seeds[seed_name]
            sig, mutation = bundle_damage(rng, seeds["signed.sig"], seeds["signed.key"])
            mutation = f"signature: {mutation}"
        else:
            data, mutation = mutate(rng, seeds[seed_name])
        op = rng.choice(SIGNED_OPS if seed_name == "signed" else ops)
        suffix = ".pt2" if seed_name in ("pt2", "pre27") else ".trtpack"
        target = path.with_suffix(suffix)
        target.write_bytes(data)
        sig_file = target.with_name(target.name + ".sig")
        sig_file.unlink(missing_ok=True)
        if seed_name == "signed":
            sig_file.write_bytes(sig if sig is not None else seeds["signed.sig"])
        try:
            with warnings.catch_warnings(), _deadline(time_limit):
                warnings.simplefilter("ignore")
                run_op(op, target, scratch)
            if op in SIGNED_OPS and (changed := _changed_members(seeds[seed_name], data)):
                raise SilentChange(f"{op} accepted a pack whose {changed} differ from the signed")
            report.accepted += 1
        except trtpack.TrtpackError as e:
            report.expected += 1
            key = type(e).__name__
            report.by_error[key] = report.by_error.get(key, 0) + 1
        except Hang as e:
            report.hangs.append(_finding(seed_name, op, mutation, repr(e), data, keep, it))
        except Exception as e:  # a finding: an error that is not trtpack's
            tb = traceback.format_exception(e)[-3:]
            report.unexpected.append(
                _finding(seed_name, op, mutation, "".join(tb).strip(), data, keep, it)
            )
        report.iterations += 1
        if on_progress is not None and report.iterations % 500 == 0:
            report.seconds = time.perf_counter() - start
            on_progress(report)
    report.seconds = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    return report


def _finding(
    seed: str, op: str, mutation: str, error: str, data: bytes, keep: Path | None, it: int
) -> Finding:
    file = None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        file = keep / f"{it:07d}-{seed}-{op}.bin"
        file.write_bytes(data)
    return Finding(seed, op, mutation, error, file)
