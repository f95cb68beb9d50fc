"""Signed packs: ``trtpack sign`` writes an OpenSSF model-signing bundle over the manifest;
``verify --key`` and ``load(require_signature=KEY)`` refuse a tampered or unsigned pack before
any member other than the manifest is read."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
from test_container import raw_members, rewrite

import trtpack
from trtpack.cli.commands import main as cli
from trtpack.signing import signature_path
from trtpack.signing import verify_signature as verify

ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")


def _keypair(folder: Path, name: str = "signer") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = folder / f"{name}.key"
    public = folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def signed(small_pack, tmp_path):
    pack = tmp_path / "model.trtpack"
    shutil.copy(small_pack, pack)
    private, public = _keypair(tmp_path)
    before = pack.read_bytes()
    sig = trtpack.sign(pack, private)
    assert sig == signature_path(pack) and sig.is_file()
    assert pack.read_bytes() == before, "signing must not change the pack (digest rules)"
    return pack, private, public


def test_sign_then_verify_and_load(signed):
    pack, _, public = signed
    statement = verify(pack, public)
    names = {r["name"] for r in statement["predicate"]["resources"]}
    assert names == {"manifest.json", *trtpack.inspect(pack).manifest.members}
    loaded = trtpack.load(pack, device="cpu", require_signature=public)
    assert loaded.manifest.inputs
    events: list = []  # the hashes after the signature: progress as without a key
    info = trtpack.verify(pack, key=public, progress=events.append)
    total = sum(m.size for m in info.manifest.members.values())
    assert events[-1].operation == "verify" and events[-1].done == events[-1].total == total


def test_wrong_key_refused(signed, tmp_path):
    pack, _, _ = signed
    _, other = _keypair(tmp_path, "other")
    with pytest.raises(trtpack.SignatureError) as info:
        trtpack.load(pack, require_signature=other)
    assert "this key" in info.value.reason


def test_unsigned_pack_refused(small_pack, tmp_path):
    _, public = _keypair(tmp_path)
    pack = tmp_path / "unsigned.trtpack"
    shutil.copy(small_pack, pack)
    with pytest.raises(trtpack.UnsignedPackError):
        trtpack.load(pack, require_signature=public)
    assert cli(["verify", str(pack), "--key", str(public)]) == 1


def test_hash_consistent_swap_refused_before_members_are_read(signed, tmp_path):
    """An attacker rewrites the weights and fixes the manifest's hash: every hash is
    consistent, but the signature no longer matches. The weights member is also made
    unreadable garbage: the error is the signature's, so nothing but the manifest was used."""
    pack, _, public = signed
    tampered = tmp_path / "tampered.trtpack"
    rewrite(pack, tampered, replace={"program/weights.safetensors": b"\xff" * 64})
    shutil.copy(signature_path(pack), signature_path(tampered))
    trtpack.inspect(tampered)  # a well-formed pack, by itself
    with pytest.raises(trtpack.SignatureError) as info:
        trtpack.load(tampered, require_signature=public)
    assert "program/weights.safetensors" in str(info.value)
    assert info.value.expected != info.value.got


def test_tampered_manifest_byte_refused(signed, tmp_path):
    pack, _, public = signed
    tampered = tmp_path / "edited.trtpack"

    def edit(m):
        m["metadata"] = {**m.get("metadata", {}), "model": "someone-else"}

    rewrite(pack, tampered, edit_manifest=edit)
    shutil.copy(signature_path(pack), signature_path(tampered))
    with pytest.raises(trtpack.SignatureError) as info:
        verify(tampered, public)
    assert "manifest.json" in str(info.value)


def test_tampered_bundle_refused(signed):
    pack, _, public = signed
    sig = signature_path(pack)
    bundle = json.loads(sig.read_text())
    bundle["dsseEnvelope"]["payload"] = bundle["dsseEnvelope"]["payload"][:-8] + "AAAAAAA="
    sig.write_text(json.dumps(bundle))
    with pytest.raises(trtpack.SignatureError):
        verify(pack, public)
    sig.write_text("not json")
    with pytest.raises(trtpack.SignatureError):
        verify(pack, public)


def test_cli_sign_and_verify(small_pack, tmp_path, capsys):
    pack = tmp_path / "cli.trtpack"
    shutil.copy(small_pack, pack)
    private, public = _keypair(tmp_path)
    assert cli(["sign", str(pack), "--key", str(private)]) == 0
    assert cli(["verify", str(pack), "--key", str(public)]) == 0
    out = capsys.readouterr().out
    assert "signature" in out and "verified" in out
    assert (
        cli(["verify", str(pack), "--key", str(private)]) == 1
    )  # a private key is not a public one


def test_model_signing_verifier_accepts_a_trtpack_signature(signed, tmp_path):
    """Interoperability: the OpenSSF model-signing library's own verifier checks a
    trtpack signature over the pack's members (manifest included) extracted to a folder."""
    model_signing = pytest.importorskip("model_signing")
    pack, _, public = signed
    folder = tmp_path / pack.stem
    folder.mkdir()
    for name, data in raw_members(pack).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    with zipfile.ZipFile(pack) as z:
        assert sorted(z.namelist()) == sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
    config.verify(folder, signature_path(pack))


def test_a_format_1_0_pack_reads_no_member_before_its_signature(tmp_path):
    """A 1.0 pack's guards are read from its graph JSON: only after the signature verified.
    Here the graph is garbage (hashes consistent) and the pack unsigned: the refusal is
    about the signature, not the graph."""
    from test_container import rewrite

    old = Path(__file__).parent / "fixtures" / "v1.0" / "keywords.trtpack"
    bad = rewrite(old, tmp_path / "old.trtpack", replace={"program/graph.json": b"{not json"})
    _, public = _keypair(tmp_path)
    with pytest.raises(trtpack.UnsignedPackError):
        trtpack.load(bad, device="cpu", require_signature=public)


# --- issue 20: a required signature covers every byte the load uses ---------------------

WEIGHTS = "program/weights.safetensors"


def _flip_last_byte(pack: Path, member: str) -> None:
    """One byte of ``member``'s data flipped in place: the manifest, and so the signature,
    untouched (the attack of issue 20, item 1)."""
    from trtpack.format.container import PackReader

    with PackReader(pack) as reader:
        info = reader.info(member)
    with open(pack, "r+b") as f:
        f.seek(info.offset + info.size - 1)
        byte = f.read(1)[0]
        f.seek(info.offset + info.size - 1)
        f.write(bytes([byte ^ 0xFF]))


def test_a_required_signature_hashes_members_even_with_verify_false(signed):
    pack, _, public = signed
    _flip_last_byte(pack, WEIGHTS)
    trtpack.load(pack, device="cpu", verify=False)  # unsigned, unverified: the caller's call
    with (
        pytest.warns(UserWarning, match="verify=False is ignored with require_signature"),
        pytest.raises(trtpack.IntegrityError) as info,
    ):
        trtpack.load(pack, device="cpu", require_signature=public, verify=False)
    assert not isinstance(info.value, trtpack.SignatureError)  # the manifest's signature holds
    assert info.value.member == WEIGHTS and info.value.field == "sha256"
    with pytest.raises(trtpack.IntegrityError) as info:
        trtpack.verify(pack, key=public)  # signature and hashes, in one open
    assert info.value.member == WEIGHTS
    assert cli(["verify", str(pack), "--key", str(public)]) == 1


def _weaken_guard(pack: Path, member: str) -> None:
    """The 1.0 fixture's guard ``x.size()[0] == mask.size()[0]`` made ``>=`` in place: the
    graph stays valid JSON, only its hash tells."""
    data = pack.read_bytes()
    guard = b"L['x'].size()[0] == L['mask'].size()[0]"
    assert data.count(guard) == 1
    pack.write_bytes(data.replace(guard, guard.replace(b"==", b">=")))


@pytest.mark.parametrize("tamper", [_flip_last_byte, _weaken_guard])
def test_a_signed_1_0_pack_derives_no_guard_from_unhashed_bytes(tmp_path, tamper):
    """A 1.0 pack's guards come from its graph JSON: with a required signature that member
    is hashed before it is parsed (a flipped byte is reported as a hash mismatch, not as
    bad JSON), whatever ``verify`` says (a weakened guard is never used)."""
    old = Path(__file__).parent / "fixtures" / "v1.0" / "keywords.trtpack"
    pack = tmp_path / "old.trtpack"
    shutil.copy(old, pack)
    private, public = _keypair(tmp_path)
    trtpack.sign(pack, private)
    graph = trtpack.inspect(pack).manifest.program.graph
    tamper(pack, graph)
    with (
        pytest.warns(UserWarning),
        pytest.raises(trtpack.IntegrityError) as info,
    ):
        trtpack.load(pack, device="cpu", require_signature=public, verify=False)
    assert info.value.field == "sha256" and info.value.member == graph, info.value


# --- issue 20: signature bundles are bounded ------------------------------------------


def _timed_refusal(pack: Path, public: Path) -> tuple[trtpack.SignatureError, float]:
    import time

    start = time.perf_counter()
    with pytest.raises(trtpack.SignatureError) as info:
        verify(pack, public)
    return info.value, time.perf_counter() - start


def test_a_bundle_of_200000_signatures_is_refused_in_milliseconds(signed):
    """Issue 20, item 6: 200,000 well-formed signatures (21 MB) cost 17 s of public-key
    checks before the refusal; the parse now stops at the 17th."""
    from trtpack.format.limits import MAX_SIGNATURES

    pack, _, public = signed
    sig = signature_path(pack)
    bundle = json.loads(sig.read_text())
    one = json.dumps(bundle["dsseEnvelope"]["signatures"][0]).encode()
    bundle["dsseEnvelope"]["signatures"] = []
    head, tail = json.dumps(bundle).encode().split(b'"signatures": []')
    sig.write_bytes(head + b'"signatures": [' + b", ".join([one] * 200_000) + b"]" + tail)
    assert sig.stat().st_size > 20_000_000
    error, seconds = _timed_refusal(pack, public)
    assert error.expected == MAX_SIGNATURES and "signatures" in error.reason, error
    assert error.got == f"more than {MAX_SIGNATURES}", error  # the parse stopped there
    assert seconds < 0.5, seconds  # 0.08 s measured (reading the 21 MB file), was 17 s
    # the same count as bare strings (no object to count while parsing): refused after it
    bundle["dsseEnvelope"]["signatures"] = ["AAAA"] * 1_000
    sig.write_text(json.dumps(bundle))
    error, _ = _timed_refusal(pack, public)
    assert error.got == 1_000 and error.expected == MAX_SIGNATURES, error


def test_a_bundle_of_many_objects_is_refused_while_parsing(signed):
    from trtpack.format.limits import MAX_SIGNATURE_OBJECTS

    pack, _, public = signed
    sig = signature_path(pack)
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["tlogEntries"] = [{}] * 1_000_000
    sig.write_text(json.dumps(bundle))
    error, seconds = _timed_refusal(pack, public)
    assert error.expected == MAX_SIGNATURE_OBJECTS and "objects" in error.reason, error
    assert seconds < 0.5, seconds


def test_a_huge_bundle_or_key_is_refused_by_its_size_unread(signed, tmp_path):
    """A 1 GiB .sig reached 2 GiB RSS: now its size refuses it before a byte is read (the
    files are sparse: no disk, and a read would show in the time)."""
    from trtpack.format.limits import MAX_KEY_BYTES, MAX_SIGNATURE_BYTES

    pack, _, public = signed
    with open(signature_path(pack), "r+b") as f:
        f.truncate(1 << 30)
    error, seconds = _timed_refusal(pack, public)
    assert error.expected == MAX_SIGNATURE_BYTES and error.got == 1 << 30, error
    assert seconds < 0.5, seconds
    assert cli(["verify", str(pack), "--key", str(public)]) == 1
    big_key = tmp_path / "big.pub"
    with open(big_key, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(trtpack.SignatureError) as info:
        trtpack.sign(pack, big_key)
    assert info.value.expected == MAX_KEY_BYTES and info.value.reason == "key too large"


# --- issue 20: writers over a signed pack remove its stale signature, and say so ----------


def test_save_over_a_signed_pack_removes_its_signature(signed, exported):
    pack, private, public = signed
    _, _, ep = exported("keywords")
    with pytest.warns(UserWarning, match=r"removed .*model\.trtpack\.sig.*trtpack sign"):
        trtpack.save(ep, pack, metadata={"model": "changed"}, overwrite=True)
    assert not signature_path(pack).exists()
    with pytest.raises(trtpack.UnsignedPackError):
        trtpack.load(pack, require_signature=public)
    trtpack.sign(pack, private)  # signed again, it verifies
    verify(pack, public)


def _standard_plan(path: Path) -> Path:
    """A standard TensorRT 10.13 plan header (all trtpack reads of a plan without a GPU)."""
    header = b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes([10, 13, 3, 9]) + bytes(36)
    path.write_bytes(header + b"x\0out" + bytes(64))
    return path


def test_cli_writers_over_a_signed_pack_say_they_removed_its_signature(tmp_path, capsys):
    private, _ = _keypair(tmp_path)
    plan, pack = _standard_plan(tmp_path / "a.plan"), tmp_path / "engine.trtpack"
    spec = ["--input-spec", "x:float32[1..8@4,16]", "--output-spec", "out:float32[1]"]
    assert cli(["pack", str(plan), *spec, "-o", str(pack)]) == 0
    trtpack.sign(pack, private)
    capsys.readouterr()
    assert cli(["add-engine", str(pack), str(plan), "--variant", "again"]) == 0
    err = capsys.readouterr().err
    assert f"trtpack: warning: removed {signature_path(pack)}" in err, err
    assert not signature_path(pack).exists()
    # a write to -o OUT leaves the source's signature alone, and removes OUT's stale one
    out = tmp_path / "migrated.trtpack"
    old = Path(__file__).parent / "fixtures" / "v1.0" / "keywords.trtpack"
    signature_path(out).write_text("{}")
    assert cli(["migrate", str(old), str(out), "--force"]) == 0
    assert "removed" in capsys.readouterr().err and not signature_path(out).exists()


def test_a_failed_write_keeps_the_signature(signed, tmp_path):
    from trtpack.format.container import FileSlice, write_pack

    pack, _, public = signed
    before = pack.read_bytes()
    missing = FileSlice(tmp_path / "gone.bin", 0, 10)
    with pytest.raises(OSError):
        write_pack(pack, {"a.bin": missing}, lambda _d: b"{}")
    assert pack.read_bytes() == before and signature_path(pack).is_file()
    verify(pack, public)


def test_verify_without_key_mentions_the_signature_it_did_not_check(signed, capsys):
    pack, _, public = signed
    assert cli(["verify", str(pack)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK") and f"signature {signature_path(pack)} NOT checked" in out
    assert cli(["verify", str(pack), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["signature"] is None
    assert data["unchecked_signature"] == str(signature_path(pack))
    assert cli(["verify", str(pack), "--key", str(public), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["signature"] == str(signature_path(pack)) and data["unchecked_signature"] is None
    signature_path(pack).unlink()
    assert cli(["verify", str(pack)]) == 0
    assert "signature" not in capsys.readouterr().out


def test_verify_key_checks_signature_and_hashes_in_one_open(signed, tmp_path, monkeypatch, capsys):
    """`verify --key` checked the signature on one open of the file and the hashes on a
    second: a pack swapped in between (its own hashes consistent, unsigned) printed OK. The
    swap is made right after the real signature check; what is hashed and reported must
    still be the signed file."""
    import trtpack.signing as signing

    pack, _, public = signed
    signed_digest = trtpack.inspect(pack).digest
    other = rewrite(pack, tmp_path / "other.trtpack", replace={WEIGHTS: b"\0" * 64})
    real = signing.verify_reader

    def verify_then_swap(*args, **kwargs):
        statement = real(*args, **kwargs)
        other.replace(pack)  # the attacker's rename, in the window between the checks
        return statement

    monkeypatch.setattr(signing, "verify_reader", verify_then_swap)
    assert cli(["verify", str(pack), "--key", str(public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == signed_digest


@pytest.mark.parametrize(
    "resources",
    [7, None, [1], [{"name": {}, "digest": "00"}], [{"name": ["a"], "digest": "00"}],
     [{"name": "manifest.json"}], [{"name": "manifest.json", "digest": 1.5}],
     [{"name": None, "digest": "00"}]],
)  # fmt: skip
def test_a_signed_statement_with_malformed_resources_is_a_signature_error(signed, resources):
    """Found by the fuzzer (a statement edited and signed again with the signer's key): a
    statement that verifies but whose resources are not {name, digest} strings raised
    TypeError (not iterable, unhashable, unorderable) from verify(key=) and load."""
    import base64

    from cryptography.hazmat.primitives import hashes

    from trtpack.signing import _pae

    pack, private, public = signed
    sig = signature_path(pack)
    bundle = json.loads(sig.read_text())
    env = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["resources"] = resources
    payload = json.dumps(statement).encode()
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    env["payload"] = base64.b64encode(payload).decode()
    env["signatures"] = [{"sig": base64.b64encode(
        key.sign(_pae(payload), ec.ECDSA(hashes.SHA256()))).decode(), "keyid": ""}]  # fmt: skip
    sig.write_text(json.dumps(bundle))
    with pytest.raises(trtpack.SignatureError, match="statement is malformed"):
        trtpack.verify(pack, key=public)
    with pytest.raises(trtpack.SignatureError, match="statement is malformed"):
        trtpack.load(pack, device="cpu", require_signature=public)
