"""ExportedProgram -> manifest: names, paths, kinds, dtypes, symbolic shapes, ranges, opt."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import trtpack
from trtpack.format.manifest import opt_rule
from trtpack.program.derive import Range
from trtpack.program.serialize import derive_interface


def shapes(iface):
    return {i.name: i.shape for i in iface.inputs if i.is_tensor}


def test_symbol_names_paths_and_shared_symbol(exported):
    """Symbols are named ``<input>_dim<i>`` at their first appearance: torch.export's JSON
    does not keep the user's Dim names, and save and migrate must give the same manifest."""
    _, _, ep = exported("keywords")
    iface = derive_interface(ep)
    assert [(i.name, i.path) for i in iface.inputs] == [
        ("x", "args[0]"),
        ("mask", "kwargs['mask']"),
        ("bias", "kwargs['bias']"),
    ]
    assert shapes(iface) == {"x": ("x_dim0", 6), "mask": ("x_dim0", 6), "bias": (6,)}
    # one symbol for the dim the two inputs share; opt is the example size seen at export
    assert iface.symbols == {"x_dim0": trtpack.format.manifest.Symbol(1, 64, 4, "example")}


def test_derived_dims_are_expressions_of_their_root(exported):
    _, _, ep = exported("derived")
    iface = derive_interface(ep)
    assert shapes(iface) == {"x": ("x_dim0", 3), "y": ("2*x_dim0", 3), "z": ("x_dim0+1",)}
    assert iface.symbols["x_dim0"] == trtpack.format.manifest.Symbol(2, 32, 4, "example")
    assert iface.outputs[0].shape == ("2*x_dim0", 3)


def test_non_tensor_inputs_record_kind_and_specialized_value(exported):
    _, _, ep = exported("scalars")
    got = [(i.name, i.kind, i.value) for i in derive_interface(ep).inputs[1:]]
    assert got == [
        ("n", "int", 3),
        ("alpha", "float", 0.5),
        ("flag", "bool", True),
        ("mode", "str", "double"),
        ("nothing", "none", None),
    ]


def test_dynamic_int_input_is_a_symbol(exported):
    _, _, ep = exported("dynamic_int")
    n = derive_interface(ep).inputs[1]
    assert (n.kind, n.symbol, n.value) == ("int", "n", None)


def test_nested_inputs_get_pytree_paths(exported):
    _, _, ep = exported("nested")
    iface = derive_interface(ep)
    assert [i.path for i in iface.inputs] == [
        "args[0][0]",
        "args[0][1]['a']",
        "args[0][1]['b'][0]",
        "args[0][1]['b'][1]",
        "args[1]['scale']",
    ]
    args_tree = iface.input_tree["children"][0]
    assert args_tree["children"][0]["type"] == "tuple"
    assert args_tree["children"][0]["children"][1]["keys"] == ["a", "b"]


def test_outputs_dict_list_namedtuple(exported):
    _, _, ep = exported("many_outputs")
    iface = derive_interface(ep)
    assert [o.path for o in iface.outputs] == [
        "output[0]['sum']",
        "output[0]['parts'][0]",
        "output[0]['parts'][1]",
        "output[1]",
        "output[2].low",
        "output[2].high",
    ]
    pair = iface.output_tree["children"][2]
    assert pair["type"] == "namedtuple" and pair["fields"] == ["low", "high"]
    assert pair["name"] == "models.Pair"


def test_dtypes_and_memory_formats(exported):
    _, _, ep = exported("dtypes")
    iface = derive_interface(ep)
    assert [i.dtype for i in iface.inputs] == ["float16", "bfloat16", "int64", "bool"]
    assert [o.dtype for o in iface.outputs] == ["float32", "float16", "bfloat16"]
    _, _, ep = exported("channels_last")
    assert derive_interface(ep).inputs[0].memory_format == "channels_last"
    _, _, ep = exported("one_tensor")
    assert derive_interface(ep).inputs[0].memory_format == "contiguous"


def test_unbounded_dim_is_recorded_unbounded_with_rule_opt():
    class M(torch.nn.Module):
        def forward(self, x):
            return x * 2

    ep = torch.export.export(M(), (torch.randn(5, 2),), dynamic_shapes=({0: Dim("rows")},))
    sym = derive_interface(ep).symbols["x_dim0"]
    assert sym.max is None  # not invented
    assert sym.opt == 5 and sym.opt_source == "example"
    # no example and no hint: the documented rule, always inside [min, max]
    assert opt_rule(2, None) == 2 and opt_rule(1, 64) == 64


def test_loaded_program_without_dim_names_falls_back_to_input_dim_names():
    class M(torch.nn.Module):
        def forward(self, x):
            return x + 1

    ep = torch.export.export(M(), (torch.randn(3, 2),), dynamic_shapes=({0: Dim.AUTO},))
    assert shapes(derive_interface(ep)) == {"x": ("x_dim0", 2)}


def test_range_override_narrows_and_sets_opt(exported):
    """Keyed by the user's Dim name (an alias the live program knows) or the manifest name."""
    _, _, ep = exported("keywords")
    iface = derive_interface(ep, ranges={"batch": Range(2, 32, opt=16)})
    assert iface.symbols["x_dim0"] == trtpack.format.manifest.Symbol(2, 32, 16, "override")
    iface = derive_interface(ep, ranges={"x_dim0": (1, 3)})  # opt 4 no longer fits: the rule
    assert iface.symbols["x_dim0"] == trtpack.format.manifest.Symbol(1, 3, 3, "rule")
    iface = derive_interface(ep, ranges={"batch": {"max": 8}})  # opt 4 still fits: kept
    assert iface.symbols["x_dim0"] == trtpack.format.manifest.Symbol(1, 8, 4, "example")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ((1, 128), r"widens the exported range \[1, 64\]"),
        ((0, 8), r"\[0, 8\] widens"),
        (Range(4, 2), r"min 4 > max 2"),
        (Range(1, 8, opt=9), r"opt 9 .* outside \[1, 8\]"),
        ("wide", r"must be Range"),
    ],
)
def test_bad_range_overrides_are_refused(exported, override, message):
    _, _, ep = exported("keywords")
    with pytest.raises(trtpack.RangeOverrideError, match=message):
        derive_interface(ep, ranges={"batch": override})


def test_override_of_unknown_symbol_names_the_known_ones(exported):
    _, _, ep = exported("keywords")
    with pytest.raises(
        trtpack.RangeOverrideError, match=r"no symbol named 'btch' \(symbols: x_dim0\)"
    ):
        derive_interface(ep, ranges={"btch": (1, 2)})


def test_override_reaches_the_saved_manifest_and_the_contract(exported, tmp_path):
    _, _, ep = exported("keywords")
    path = tmp_path / "narrow.trtpack"
    trtpack.save(ep, path, ranges={"batch": (1, 8, 8)})
    assert trtpack.inspect(path).manifest.symbols["x_dim0"].max == 8
    pack = trtpack.load(path, device="cpu")
    with pytest.raises(
        trtpack.InputMismatchError, match=r"outside the allowed range of x_dim0: \[1, 8\]"
    ):
        pack(torch.randn(9, 6), mask=torch.randn(9, 6), bias=torch.randn(6))


def test_not_an_exported_program_is_refused(tmp_path):
    with pytest.raises(trtpack.TrtpackError, match="takes a torch.export.ExportedProgram"):
        trtpack.save(torch.nn.Linear(2, 2), tmp_path / "x.trtpack")
    with pytest.raises(TypeError, match="ep must be a torch.export.ExportedProgram, got a str"):
        derive_interface("nope")


def test_metadata_must_be_str_to_str(exported, tmp_path):
    _, _, ep = exported("one_tensor")
    with pytest.raises(trtpack.TrtpackError, match="metadata must map str to str"):
        trtpack.save(ep, tmp_path / "m.trtpack", metadata={"epochs": 3})
    assert not (tmp_path / "m.trtpack").exists()


def test_same_program_same_manifest_and_digest_by_save_and_migrate(tmp_path):
    """Issue 9.5: save(ep) named a symbol by the user's Dim ('B'), migrate of the
    torch.export.save file of the same program 'ids_dim0': the digests differed."""

    class M(torch.nn.Module):
        def forward(self, ids, mask):
            return ids * mask

    b, s = Dim("B", min=1, max=32), Dim("S", min=2, max=128)
    ep = torch.export.export(M(), (torch.randn(2, 8), torch.randn(2, 8)),
                             dynamic_shapes={"ids": {0: b, 1: s}, "mask": {0: b, 1: s}})  # fmt: skip
    saved = trtpack.save(ep, tmp_path / "s.trtpack")
    torch.export.save(ep, tmp_path / "p.pt2")
    migrated = trtpack.migrate(tmp_path / "p.pt2", tmp_path / "m.trtpack")
    assert saved.manifest == migrated.manifest and saved.digest == migrated.digest
    assert set(saved.manifest.symbols) == {"ids_dim0", "ids_dim1"}
    # the user's Dim names remain usable where the live program is at hand
    narrowed = trtpack.save(ep, tmp_path / "n.trtpack", ranges={"B": (1, 8), "ids_dim1": (2, 64)})
    assert narrowed.manifest.symbols["ids_dim0"].max == 8
    assert narrowed.manifest.symbols["ids_dim1"].max == 64


def test_a_namedtuple_program_saves_in_a_fresh_process(tmp_path):
    """The interface is derived from the serialized program: its namedtuples must be
    registered for serialization first, also in a process that never registered them."""
    import subprocess
    import sys

    code = (
        "import collections, torch, trtpack\n"
        "P = collections.namedtuple('P', ['lo', 'hi'])\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return P(x - 1, x + 1)\n"
        "ep = torch.export.export(M(), (torch.randn(2, 3),))\n"
        f"info = trtpack.save(ep, {str(tmp_path / 'nt.trtpack')!r})\n"
        "print([o.name for o in info.manifest.outputs])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-1500:]
    assert "['lo', 'hi']" in out.stdout


@pytest.mark.parametrize("arg", [{}, {"as_tensor": 3, "as_int": 1}, "x", {"as_sym_int": 7}])
def test_a_malformed_user_input_argument_is_a_migration_error(arg):
    """Found by tools/fuzz.py (seed 401): an empty union as a user input's argument escaped
    as StopIteration (RuntimeError once inside a generator)."""
    import json

    from trtpack.program.derive import derive_from_graph
    from trtpack.program.serialize import program_graph

    ep = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    doc = json.loads(program_graph(ep))
    specs = doc["graph_module"]["signature"]["input_specs"]
    user = next(s for s in specs if "user_input" in s)
    user["user_input"]["arg"] = arg
    with pytest.raises(trtpack.TrtpackError):
        derive_from_graph(json.dumps(doc).encode(), where="edited")
