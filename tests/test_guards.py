"""Issue 9.1: every input guard torch.export recorded is in the manifest, as data, and checked
on every call (trtpack/format/guards.py). v0.1 kept only ranges: calls that ep.module() refuses ran
and returned wrong values. See also tests/test_corpus.py (ExportDB with every dim dynamic)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_container import raw_members, rewrite

import trtpack
from trtpack.format.guards import compile_guard, from_torch, sources
from trtpack.format.manifest import IOSpec

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def guarded(exported, tmp_path_factory):
    _, model, ep = exported("guarded")
    path = tmp_path_factory.mktemp("guarded") / "g.trtpack"
    trtpack.save(ep, path)
    return path, model, ep


def test_guards_are_in_the_manifest_in_a_torch_free_language(guarded):
    path, _, _ = guarded
    exprs = [g.expr for g in trtpack.inspect(path).manifest.guards]
    assert exprs == ["x.shape[1] % 4 == 0", "x.shape[0] != 3", "x.shape[0] <= y.shape[0]",
                     "x.shape[1] == y.shape[1]"]  # fmt: skip


@pytest.mark.parametrize(
    ("x", "y", "dim", "value", "condition"),
    [
        ((3, 8), (9, 8), 0, 3, "x.shape[0] != 3"),
        ((4, 7), (9, 7), 1, 7, "x.shape[1] % 4 == 0"),
        ((10, 8), (9, 8), 0, 10, "x.shape[0] <= y.shape[0]"),
    ],
)
def test_a_call_that_breaks_a_guard_is_refused_with_fields(guarded, x, y, dim, value, condition):
    path, _, ep = guarded
    pack = trtpack.load(path)
    a, b = torch.randn(*x), torch.randn(*y)
    with pytest.raises(Exception, match="Guard failed"):
        ep.module()(a, b)  # torch refuses it too
    with pytest.raises(trtpack.InputMismatchError, match="breaks the program's guard") as e:
        pack(a, b)
    err = e.value
    assert (err.input, err.path, err.dim, err.value, err.condition) == (
        "x", "args[0]", dim, value, condition,
    )  # fmt: skip


def test_calls_inside_every_guard_equal_eager(guarded):
    path, model, _ = guarded
    pack = trtpack.load(path)
    for x, y in [((5, 12), (5, 12)), ((2, 4), (7, 4)), ((4, 8), (4, 8))]:
        a, b = torch.randn(*x), torch.randn(*y)
        torch.testing.assert_close(pack(a, b), model(a, b), rtol=0, atol=0)


def test_range_errors_carry_fields_too(small_pack):
    pack = trtpack.load(small_pack)
    with pytest.raises(trtpack.InputMismatchError) as e:
        pack(torch.randn(65, 6), mask=torch.randn(65, 6), bias=torch.randn(6))
    assert (e.value.input, e.value.path, e.value.dim, e.value.value) == ("x", "args[0]", 0, 65)
    assert e.value.condition == "1 <= x_dim0 <= 64"


def test_save_and_migrate_give_the_same_guards_and_digest(guarded, tmp_path):
    path, _, ep = guarded
    pt2 = tmp_path / "g.pt2"
    torch.export.save(ep, pt2)
    migrated = trtpack.migrate(pt2, tmp_path / "m.trtpack")
    assert migrated.manifest.guards == trtpack.inspect(path).manifest.guards
    assert migrated.digest == trtpack.inspect(path).digest


def test_an_unexpressed_guard_is_checked_by_the_program(guarded, tmp_path):
    """A guard outside the language is kept as torch's text, and every call then also runs
    the program's own guard code: never unchecked."""
    path, model, _ = guarded

    def drop(m):
        for g in m["guards"]:
            if "% 4" in g["source"]:
                del g["expr"]

    bad = rewrite(path, tmp_path / "unexpressed.trtpack", edit_manifest=drop)
    pack = trtpack.load(bad)
    a, b = torch.randn(5, 8), torch.randn(9, 8)
    torch.testing.assert_close(pack(a, b), model(a, b), rtol=0, atol=0)
    with pytest.raises(trtpack.InputMismatchError, match="program's own guard code") as e:
        pack(torch.randn(4, 7), torch.randn(9, 7))
    assert "% 4" in e.value.condition
    assert "(torch's text: checked by the program)" in trtpack.reading.render(trtpack.inspect(bad))


@pytest.mark.parametrize(
    "text",
    ["__import__('os').system('touch /tmp/pwned') == 0", "L['x'].size.__class__ == 1",
     "(lambda: 1)() == 1", "L['x'].size()[0] == [i for i in range(3)]"],
)  # fmt: skip
def test_guard_code_that_is_not_arithmetic_is_refused_before_torch(guarded, tmp_path, text):
    """torch turns guards_code into a function with exec (ep.module()): a guard is code."""
    path, _, _ = guarded
    graph = json.loads(raw_members(path)["program/graph.json"])
    graph["guards_code"] = [text]
    bad = rewrite(path, tmp_path / "evil.trtpack",
                  replace={"program/graph.json": json.dumps(graph).encode()})  # fmt: skip
    with pytest.raises(trtpack.UnsafePackError, match="guards_code") as e:
        trtpack.load(bad)
    assert e.value.member == "program/graph.json"
    assert not Path("/tmp/pwned").exists()


def test_a_guard_outside_the_language_in_the_manifest_is_refused(guarded, tmp_path):
    path, _, _ = guarded

    def evil(m):
        m["guards"][0]["expr"] = "x.shape[0].__class__ == 1"

    with pytest.raises(trtpack.ManifestError, match="outside the guard language"):
        trtpack.inspect(rewrite(path, tmp_path / "e.trtpack", edit_manifest=evil))


def test_format_1_0_packs_read_their_guards_from_the_program(tmp_path):
    old = shutil.copy(FIXTURES / "v1.0" / "keywords.trtpack", tmp_path / "old.trtpack")
    info = trtpack.inspect(old)
    assert info.upgraded_from == (1, 0)
    assert [g.expr for g in info.manifest.guards] == ["x.shape[0] == mask.shape[0]"]
    out = trtpack.migrate(old, tmp_path / "new.trtpack")
    assert (
        out.manifest.format_version == trtpack.FORMAT_VERSION
        and out.manifest.guards == info.manifest.guards
    )


X_AND_N = (IOSpec("x", "args[0]", "tensor", "float32", ("s0", 1)),
           IOSpec("n", "args[1]", "symint", symbol="s1"))  # fmt: skip


def test_the_language_compiles_without_evaluating_code():
    check, first = compile_guard("Max(x.shape[0], 2) * 2 // 3 + n % 5 >= 1", X_AND_N)
    assert first == ("x", 0)
    assert check([torch.zeros(4, 1), 7]) is True
    names = sources([("x", "args[0]"), ("mask", "kwargs['mask']"), ("b", "args[1]['k'][0]")],
                    ["x", "targets"])  # fmt: skip
    inputs = [IOSpec(n, p, "tensor", "float32", (2, 2))
              for n, p in [("x", "args[0]"), ("mask", "kwargs['mask']"), ("b", "args[1]['k'][0]")]]  # fmt: skip
    guards = from_torch(
        ["L['targets']['k'][0].size()[0] == L['mask'].size()[1]", "L['x'].dim() == 2",
         "L['x'] == 2"], names, inputs,
    )  # fmt: skip
    # a tensor compared as a number is outside the language: the program's own check runs it
    assert [expr for _, expr in guards] == ["b.shape[0] == mask.shape[1]", None, None]


def test_unexpressed_guards_also_hold_calls_routed_to_the_program(guarded, tmp_path):
    """A call outside an engine profile that falls back to the program is still checked by
    the program's own guard code."""
    from trtpack.contract import Contract
    from trtpack.runtime import LoadedPack

    path, model, _ = guarded

    def drop(m):
        for g in m["guards"]:
            if "% 4" in g["source"]:
                del g["expr"]

    bad = rewrite(path, tmp_path / "unexpressed.trtpack", edit_manifest=drop)
    info = trtpack.inspect(bad)
    ran = []
    pack = LoadedPack(
        info, device=torch.device("cpu"), module=lambda *a, **k: ran.append("engine"),
        contract=Contract(info.manifest, engine_ranges={"x_dim0": (2, 4)}, variant="v"),
        backend="tensorrt", variant="v", outside_profile="fallback",
    )  # fmt: skip
    a, b = torch.randn(5, 8), torch.randn(9, 8)  # outside the profile, inside every guard
    torch.testing.assert_close(pack(a, b), model(a, b), rtol=0, atol=0)
    with pytest.raises(trtpack.InputMismatchError, match="program's own guard code"):
        pack(torch.randn(5, 7), torch.randn(9, 7))  # outside the profile, breaks % 4
    assert ran == []


@pytest.mark.parametrize(
    "expr, used_as",
    [("x >= 2", "a number"), ("x + 1 == n", "a number"),
     ("n.shape[0] == 2", "a tensor"), ("n.stride[0] == 1", "a tensor"),
     ("n.storage_offset == 0", "a tensor")],
)  # fmt: skip
def test_a_guard_must_use_tensors_as_tensors_and_numbers_as_numbers(expr, used_as):
    """Found by tools/fuzz.py (seed 500): a manifest whose guard was the bare tensor input
    ``x`` compiled, and every call then escaped as torch's "Boolean value of Tensor with more
    than one value is ambiguous". Such a guard is now refused when the manifest is read."""
    with pytest.raises(trtpack.ManifestError, match=f"as {used_as}") as e:
        compile_guard(expr, X_AND_N)
    assert e.value.field == "guards" and e.value.got in ("x", "n")


def test_a_pack_with_a_tensor_used_as_a_number_in_a_guard_is_refused(guarded, tmp_path):
    path, _, _ = guarded

    def bare_tensor(m):
        m["guards"][0]["expr"] = "x"

    bad = rewrite(path, tmp_path / "bare.trtpack", edit_manifest=bare_tensor)
    for read in (trtpack.inspect, lambda p: trtpack.load(p, device="cpu")):
        with pytest.raises(trtpack.ManifestError, match="uses 'x' as a number"):
            read(bad)
