"""Loading a pack never unpickles anything: a malicious pickle planted in any member is never
executed, and a normal load calls no unpickler at all."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from test_container import rewrite

import trtpack
from trtpack.format.manifest import MANIFEST_NAME


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def evil_payloads(marker: str) -> dict[str, bytes]:
    plain = pickle.dumps(Evil(marker), protocol=2)
    as_torch_save = io.BytesIO()
    torch.save({"w": Evil(marker)}, as_torch_save)  # torch.save: a zip holding data.pkl
    return {"pickle": plain, "torch.save": as_torch_save.getvalue()}


MEMBERS = ["program/graph.json", "program/weights.safetensors"]


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_planted_pickle_in_a_member_is_never_executed(small_pack, tmp_path, member, kind):
    marker = tmp_path / "PWNED"
    payload = evil_payloads(str(marker))[kind]
    bad = rewrite(small_pack, tmp_path / "evil.trtpack", replace={member: payload})
    trtpack.verify(bad)  # the hashes are right: only the content is hostile
    with pytest.raises(trtpack.TrtpackError) as e:
        trtpack.load(bad, device="cpu")
    assert "not a valid safetensors file" in str(e.value) or "cannot read the program" in str(
        e.value
    )
    assert not marker.exists()


def test_planted_pickle_as_the_manifest_is_never_executed(small_pack, tmp_path):
    marker = tmp_path / "PWNED"
    with zipfile.ZipFile(small_pack) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members[MANIFEST_NAME] = evil_payloads(str(marker))["pickle"]
    bad = tmp_path / "evil_manifest.trtpack"
    with zipfile.ZipFile(bad, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for fn in (trtpack.inspect, trtpack.verify, lambda p: trtpack.load(p, device="cpu")):
        with pytest.raises(trtpack.ManifestError, match="not valid JSON"):
            fn(bad)
    assert not marker.exists()


def test_pickle_inside_safetensors_metadata_is_only_json(small_pack, tmp_path):
    """A valid safetensors file whose layout metadata carries pickle bytes: parsed as JSON
    (and refused), never unpickled."""
    from safetensors.torch import save

    marker = tmp_path / "PWNED"
    blob = save(
        {"w": torch.zeros(2)},
        metadata={"trtpack.tensors": evil_payloads(str(marker))["pickle"].decode("latin1")},
    )
    bad = rewrite(
        small_pack, tmp_path / "meta.trtpack", replace={"program/weights.safetensors": blob}
    )
    with pytest.raises(trtpack.IntegrityError, match="has no 'trtpack.tensors' metadata"):
        trtpack.load(bad, device="cpu")
    assert not marker.exists()


def test_a_normal_load_and_call_unpickles_nothing(small_pack, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("an unpickler was called while loading a pack")

    import torch.serialization

    for target, name in [
        (pickle, "loads"),
        (pickle, "load"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
        (torch._C, "_pickle_load_obj"),
    ]:
        monkeypatch.setattr(target, name, forbidden)
    pack = trtpack.load(small_pack, device="cpu")
    out = pack(torch.randn(3, 6), mask=torch.randn(3, 6), bias=torch.randn(6))
    assert out.shape == (3, 6)
