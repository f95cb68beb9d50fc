"""Signed packs: ``trtpack sign`` writes an OpenSSF model-signing bundle over the manifest;
``verify --key`` and ``load(require_signature=KEY)`` refuse a tampered or unsigned pack before
any member other than the manifest is read."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from test_container import raw_members, rewrite

import trtpack
from trtpack.cli.commands import main as cli
from trtpack.signing import signature_path, verify

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
