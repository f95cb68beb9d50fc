"""save -> load -> call gives the eager outputs, for every kind of model users export."""

from __future__ import annotations

import pytest
import torch
from models import CASES, assert_same

import trtpack

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path


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


class _Blocks(torch.nn.Module):
    def forward(self, x):
        return x.reshape(-1, 16, x.shape[1]).sum(1)


def test_shapes_spec_assumptions_are_kept(tmp_path):
    """torch's experimental shapes API (torch.fx.experimental.dynamic_spec, issue 22.8):
    2.13 has the module but torch.export does not take a ShapesSpec (torch.compile does);
    2.14.1's export does, making B unbacked and recording ``B % 16 == 0`` as runtime asserts
    in the graph and ``B >= 16`` as its range. The pack keeps both as manifest facts: the
    range on the symbol (named B, the ShapeVar's name), the assertions as guards, so a call
    that breaks one is refused by the contract naming the input, before the program runs."""
    from torch.fx.experimental.dynamic_spec import ShapesSpec, ShapeVar, TensorSpec

    b = ShapeVar("B")
    spec = ShapesSpec({"x": TensorSpec([b, None])}, assumptions=[b % 16 == 0, b >= 16])
    args = (torch.randn(32, 4),)
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 14):
        with pytest.raises(TypeError, match="ShapesSpec"):
            torch.export.export(_Blocks(), args, dynamic_shapes=spec)
        return
    ep = torch.export.export(_Blocks(), args, dynamic_shapes=spec)
    path = tmp_path / "blocks.trtpack"
    trtpack.save(ep, path)
    pack = trtpack.load(path, device="cpu")
    assert pack.fast_path_reason is None, pack.fast_path_reason
    manifest = trtpack.inspect(path).manifest
    assert list(manifest.symbols) == ["B"]
    assert (manifest.symbols["B"].min, manifest.symbols["B"].max) == (16, None)
    assert manifest.inputs[0].shape == ("B", 4)
    guards = {g.source: g.expr for g in manifest.guards}
    assert guards["Eq(Mod(u0, 16), 0)"] == "x.shape[0] % 16 == 0"
    # the same facts by migrate of torch's own file
    torch.export.save(ep, tmp_path / "blocks.pt2")
    trtpack.migrate(tmp_path / "blocks.pt2", tmp_path / "migrated.trtpack")
    migrated = trtpack.inspect(tmp_path / "migrated.trtpack").manifest
    assert {g.source: g.expr for g in migrated.guards} == guards
    x = torch.randn(48, 4)
    assert torch.equal(pack(x), ep.module()(x))
    with pytest.raises(RuntimeError, match=r"Eq\(Mod\(u0, 16\), 0\)"):
        ep.module()(torch.randn(40, 4))  # torch: its runtime assertion, inside the program
    with pytest.raises(trtpack.InputMismatchError, match=r"x.shape\[0\] % 16 == 0") as e:
        pack(torch.randn(40, 4))
    assert (e.value.input, e.value.dim) == ("x", 0)
    with pytest.raises(trtpack.InputMismatchError, match=r"outside the allowed range"):
        pack(torch.randn(8, 4))
    from trtpack.reading import render

    assert "x.shape[0] % 16 == 0" in render(trtpack.inspect(path))


class _Compare(torch.nn.Module):
    def forward(self, x, y):
        return x.sum() + y.sum() if x.shape[0] <= y.shape[0] else x.sum() - y.sum()


def test_the_loaded_program_checks_guards_like_torchs(tmp_path):
    """Issue 22, item 1: ``pack.exported_program`` comes back with example inputs (made from
    the manifest, no pickle), so its ``module()`` builds torch's guard check as the original
    does; without them it returned 8.0 for a call the original refuses."""
    from torch.export import Dim

    ep = torch.export.export(_Compare(), (torch.ones(3), torch.ones(5)),
                             dynamic_shapes=({0: Dim("a")}, {0: Dim("b")}))  # fmt: skip
    trtpack.save(ep, tmp_path / "m.trtpack")
    loaded = trtpack.load(tmp_path / "m.trtpack", device="cpu").exported_program
    messages = []
    for program in (ep, loaded):
        with pytest.raises(AssertionError, match="Guard failed") as e:
            program.module()(torch.ones(6), torch.ones(2))
        messages.append(str(e.value))
    assert messages[0] == messages[1] == "Guard failed: x.size()[0] <= y.size()[0]"
    torch.testing.assert_close(loaded.module()(torch.ones(2), torch.ones(4)), torch.tensor(6.0))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_loaded_program_has_example_inputs_of_the_exported_structure(name, exported, tmp_path):
    """Same pytree structure, dtypes and (where opt is the example size) shapes as torch's."""
    _, _, ep = exported(name)
    trtpack.save(ep, tmp_path / "m.trtpack")
    pack = trtpack.load(tmp_path / "m.trtpack", device="cpu")
    import torch.utils._pytree as pytree

    want, want_spec = pytree.tree_flatten(ep.example_inputs)
    got, got_spec = pytree.tree_flatten(pack.exported_program.example_inputs)
    assert got_spec == want_spec
    by_example = all(s.opt_source == "example" for s in pack.manifest.symbols.values())
    for g, w in zip(got, want):
        if isinstance(w, torch.Tensor):
            assert g.dtype == w.dtype and (g.shape == w.shape or not by_example)
        else:
            assert g == w
