"""save -> load -> call gives the eager outputs, for every kind of model users export."""

from __future__ import annotations

import pytest
import torch
from models import CASES, assert_same

import trtpack


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip_matches_eager(name, exported, tmp_path):
    case, model, ep = exported(name)
    path = tmp_path / f"{name}.trtpack"
    trtpack.save(ep, path)
    pack = trtpack.load(path, device="cpu")
    assert pack.backend == "exported_program" and pack.fallback_reason is None
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        with torch.no_grad():
            want = model(*args, **kwargs)
            got = pack(*args, **kwargs)
        assert_same(got, want)


def test_loaded_pack_exposes_manifest_and_program(small_pack):
    pack = trtpack.load(small_pack, device="cpu")
    assert [i.name for i in pack.manifest.inputs] == ["x", "mask", "bias"]
    assert isinstance(pack.exported_program, torch.export.ExportedProgram)
    assert pack.manifest.metadata == {"model": "keywords"}
    assert pack.digest == trtpack.inspect(small_pack).digest
    assert pack.device == torch.device("cpu")
    assert "keywords.trtpack" in repr(pack)


def test_loaded_program_keeps_ranges(small_pack, exported):
    _, _, ep = exported("keywords")
    loaded = trtpack.load(small_pack, device="cpu").exported_program
    original = sorted((int(v.lower), str(v.upper)) for v in ep.range_constraints.values())
    restored = sorted((int(v.lower), str(v.upper)) for v in loaded.range_constraints.values())
    assert restored == original


def test_resave_of_loaded_program_is_identical(small_pack, tmp_path):
    """Loading then saving again gives the same members (the format is a fixed point)."""
    ep = trtpack.load(small_pack, device="cpu").exported_program
    again = tmp_path / "again.trtpack"
    trtpack.save(ep, again, metadata={"model": "keywords"})
    first, second = trtpack.inspect(small_pack).manifest, trtpack.inspect(again).manifest
    assert second.members == first.members  # every member: names, sizes, SHA-256s
    assert second.inputs == first.inputs and second.outputs == first.outputs
    # the whole manifest but its producer (the writing process) and the time it was written
    a, b = first.to_dict(), second.to_dict()
    for m in (a, b):
        m.pop("producer", None)
        m.pop("created", None)
    assert a == b


def test_save_is_byte_reproducible(exported, tmp_path):
    _, _, ep = exported("with_buffers")
    a, b = tmp_path / "a.trtpack", tmp_path / "b.trtpack"
    trtpack.save(ep, a, metadata={"k": "v"})
    trtpack.save(ep, b, metadata={"k": "v"})
    assert a.read_bytes() == b.read_bytes()


def test_save_is_byte_reproducible_across_processes(tmp_path):
    """A fresh process exporting the same model writes the same bytes (no random ids), even
    one that has imported other libraries (here TensorRT-RTX) beforehand."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "import importlib.util as u; (u.find_spec(sys.argv[3]) and __import__(sys.argv[3]));"
        "import trtpack; from models import CASES;"
        "_, ep = CASES['with_buffers'].export(); trtpack.save(ep, sys.argv[1])"
    )
    here = str(Path(__file__).parent)
    for name, extra in (("p1", "json"), ("p2", "tensorrt_rtx")):
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / name), here, extra], check=True
        )
    assert (tmp_path / "p1").read_bytes() == (tmp_path / "p2").read_bytes()


def test_tied_weights_are_stored_once_and_stay_tied(exported, tmp_path):
    _, _, ep = exported("with_buffers")
    path = tmp_path / "tied.trtpack"
    trtpack.save(ep, path)
    from safetensors import safe_open

    pack = trtpack.load(path, device="cpu")
    weights = pack.manifest.program.weights
    with trtpack.format.container.PackReader(path) as reader:
        member = tmp_path / "weights.safetensors"
        member.write_bytes(reader.read(weights))
    with safe_open(member, "pt") as f:
        keys = set(f.keys())
    assert len(keys & {"emb.weight", "out.weight"}) == 1  # one storage, one stored tensor
    sd = pack.exported_program.state_dict
    assert (
        sd["emb.weight"].untyped_storage().data_ptr()
        == sd["out.weight"].untyped_storage().data_ptr()
    )


def test_views_and_non_contiguous_weights_round_trip(tmp_path):
    class Views(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.arange(24.0).reshape(4, 6)
            self.register_buffer("t", base.t())  # transposed: not contiguous
            self.register_buffer(
                "cl", torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
            )
            whole = torch.arange(10.0)
            self.register_buffer("head", whole[:4])  # views sharing one storage
            self.register_buffer("tail", whole[6:])

        def forward(self, x):
            return x + self.t.sum() + self.cl.sum() + self.head.sum() * self.tail.sum()

    model = Views()
    ep = torch.export.export(model, (torch.randn(3),))
    path = tmp_path / "views.trtpack"
    trtpack.save(ep, path)
    loaded = trtpack.load(path, device="cpu")
    sd = loaded.exported_program.state_dict
    for name in ("t", "cl", "head", "tail"):
        assert torch.equal(sd[name], getattr(model, name))
        assert sd[name].stride() == getattr(model, name).stride(), name
    assert sd["head"].untyped_storage().data_ptr() == sd["tail"].untyped_storage().data_ptr()
    x = torch.randn(3)
    torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_cuda_on_a_cpu_only_torch_is_a_trtpack_error(small_pack):
    """torch's own answer is an AssertionError ("Torch not compiled with CUDA enabled")."""
    for device in ("cuda", "cuda:0"):
        with pytest.raises(trtpack.DeviceError, match="CPU-only build.*device='cpu'") as e:
            trtpack.load(small_pack, device=device)
        assert e.value.device == device
    with pytest.raises(trtpack.DeviceError, match="'gpu' cannot be used here"):
        trtpack.load(small_pack, device="gpu")
