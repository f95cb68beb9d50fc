"""Issue 9.2 and 9.7: registered pytree classes (dataclasses, caches) as inputs and outputs:
torch's key paths, the class round-trips, and a class not registered in the loading process
is named with what to import (not blamed on torch versions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytree_models as pm
import torch

import trtpack

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def decoder_pack(tmp_path_factory):
    args, kwargs = pm.example()
    past = torch.export.Dim("past", min=1, max=64)
    dyn = {"x": {1: torch.export.Dim("seq", min=1, max=32)},
           "cache": [[{1: past}, {1: past}], [{1: past}, {1: past}]]}  # fmt: skip
    ep = torch.export.export(pm.Decoder(), args, kwargs, dynamic_shapes=dyn)
    folder = tmp_path_factory.mktemp("pytrees")
    info = trtpack.save(ep, folder / "decoder.trtpack")
    return folder / "decoder.trtpack", ep, info


def test_paths_are_torch_key_paths(decoder_pack):
    _, _, info = decoder_pack
    m = info.manifest
    assert [i.path for i in m.inputs] == [
        "args[0]",
        "kwargs['cache']['key_cache'][0]", "kwargs['cache']['key_cache'][1]",
        "kwargs['cache']['value_cache'][0]", "kwargs['cache']['value_cache'][1]",
    ]  # fmt: skip
    assert [(o.name, o.path) for o in m.outputs] == [
        ("logits", "output.logits"), ("hidden", "output.hidden"),
    ]  # fmt: skip


def test_a_cache_input_and_a_dataclass_output_round_trip(decoder_pack):
    path, _, _ = decoder_pack
    pack = trtpack.load(path)
    for seq, past in [(3, 5), (1, 9), (7, 2)]:
        args, kwargs = pm.example(seq, past)
        got, want = pack(*args, **kwargs), pm.Decoder()(*args, **kwargs)
        assert type(got) is pm.Output
        assert torch.equal(got.logits, want.logits) and torch.equal(got.hidden, want.hidden)


def test_a_wrong_cache_is_refused_by_path(decoder_pack):
    path, _, _ = decoder_pack
    pack = trtpack.load(path)
    args, kwargs = pm.example()
    with pytest.raises(trtpack.InputMismatchError, match=r"kwargs\['cache'\] must be a "):
        pack(*args, cache=[1, 2])
    kwargs["cache"].key_cache.append(torch.randn(2, 5, 4))
    with pytest.raises(trtpack.InputMismatchError, match="must be a list of 2, got list of 3"):
        pack(*args, **kwargs)
    args, kwargs = pm.example(past=70)
    with pytest.raises(trtpack.InputMismatchError) as e:
        pack(*args, **kwargs)
    assert e.value.path == "kwargs['cache']['key_cache'][0]" and e.value.value == 70


def test_save_and_migrate_agree_on_custom_trees(decoder_pack, tmp_path):
    _, ep, info = decoder_pack
    torch.export.save(ep, tmp_path / "d.pt2")
    migrated = trtpack.migrate(tmp_path / "d.pt2", tmp_path / "m.trtpack")
    assert migrated.manifest.input_tree == info.manifest.input_tree

    # (symbol names differ: torch.export.save does not keep the user's Dim names)
    def facts(specs):
        return [(s.name, s.path, s.kind, s.dtype, len(s.shape or ())) for s in specs]

    assert facts(migrated.manifest.inputs) == facts(info.manifest.inputs)
    assert facts(migrated.manifest.outputs) == facts(info.manifest.outputs)


def test_unregistered_class_is_named_with_what_to_import(decoder_pack):
    """v0.1 said "this torch cannot read the program, written with export schema 8.20"
    although the versions were equal."""
    path, _, _ = decoder_pack
    code = (
        "import trtpack\n"
        "try:\n"
        f"    trtpack.load({str(path)!r})\n"
        "except trtpack.UnregisteredPytreeError as e:\n"
        "    print(e.type_name, e.module); print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=TESTS.parent)  # fmt: skip
    first, message = out.stdout.splitlines()[:2]
    assert first in ("pytree_models.Cache pytree_models", "pytree_models.Output pytree_models")
    assert "import pytree_models" in message and "not a torch version mismatch" in message
    # inspect needs no class at all (no torch)
    out = subprocess.run([sys.executable, "-m", "trtpack", "inspect", str(path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "kwargs['cache']['key_cache'][0]" in out.stdout


def test_unexpressed_guards_of_a_program_with_a_cache_input(tmp_path):
    """A guard the manifest cannot express is checked by the program's own guard code, which
    torch builds from example inputs: those are rebuilt with torch's spec, cache class
    included (they were rebuilt as plain tuples, and torch raised a raw ValueError — seen with
    transformers 5.17's DynamicCache)."""
    from test_container import rewrite

    args, kwargs = pm.example(seq=4)
    past = torch.export.Dim("past", min=1, max=64)
    dyn = {"x": {1: torch.export.Dim.AUTO},  # AUTO: export keeps the guard instead of failing
           "cache": [[{1: past}, {1: past}], [{1: past}, {1: past}]]}  # fmt: skip
    ep = torch.export.export(pm.GuardedDecoder(), args, kwargs, dynamic_shapes=dyn)
    path = trtpack.save(ep, tmp_path / "g.trtpack").path
    assert any("% 2" in g.source for g in trtpack.inspect(path).manifest.guards)

    def drop(m):  # as if the guard were outside the manifest's language
        for g in m["guards"]:
            if "% 2" in g["source"]:
                del g["expr"]

    bad = rewrite(path, tmp_path / "unexpressed.trtpack", edit_manifest=drop)
    pack = trtpack.load(bad, device="cpu")
    got, want = pack(*args, **kwargs), pm.GuardedDecoder()(*args, **kwargs)
    torch.testing.assert_close(got.logits, want.logits)
    odd_args, odd_kwargs = pm.example(seq=3)
    with pytest.raises(trtpack.InputMismatchError, match="program's own guard code"):
        pack(*odd_args, **odd_kwargs)
