"""ExportedProgram -> manifest: names, paths, kinds, dtypes, symbolic shapes, ranges, opt."""

from __future__ import annotations

import json

import pytest
import torch
from torch.export import Dim

import trtpack
from trtpack.format.manifest import opt_rule
from trtpack.program.derive import Range
from trtpack.program.serialize import derive_interface

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path


def shapes(iface):
    return {i.name: i.shape for i in iface.inputs if i.is_tensor}


def test_symbol_names_paths_and_shared_symbol(exported):
    """Symbols are named by the user's Dim names where the live program knows them (else
    ``<input>_dim<i>`` at their first appearance, as migrate names them)."""
    _, _, ep = exported("keywords")
    iface = derive_interface(ep)
    assert [(i.name, i.path) for i in iface.inputs] == [
        ("x", "args[0]"),
        ("mask", "kwargs['mask']"),
        ("bias", "kwargs['bias']"),
    ]
    assert shapes(iface) == {"x": ("batch", 6), "mask": ("batch", 6), "bias": (6,)}
    # one symbol for the dim the two inputs share; opt is the example size seen at export
    assert iface.symbols == {"batch": trtpack.format.manifest.Symbol(1, 64, 4, "example")}


def test_derived_dims_are_expressions_of_their_root(exported):
    _, _, ep = exported("derived")
    iface = derive_interface(ep)
    assert shapes(iface) == {"x": ("n", 3), "y": ("2*n", 3), "z": ("n+1",)}
    assert iface.symbols["n"] == trtpack.format.manifest.Symbol(2, 32, 4, "example")
    assert iface.outputs[0].shape == ("2*n", 3)


def test_derived_dim_with_a_negative_offset(exported, tmp_path):
    """``2*dx - 1``: torch's srepr writes the offset as ``Integer(-1)`` (issue 22, item 4)."""
    _, _, ep = exported("derived_negative")
    assert shapes(derive_interface(ep)) == {"x": ("n",), "y": ("2*n-1",)}
    trtpack.save(ep, tmp_path / "neg.trtpack")
    pack = trtpack.load(tmp_path / "neg.trtpack", device="cpu")
    x, y = torch.randn(9), torch.randn(17)
    assert torch.equal(pack(x, y), ep.module()(x, y))


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
    sym = derive_interface(ep).symbols["rows"]
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
    """Keyed by the user's Dim name (the manifest's name at save) or the generated name
    (what migrate writes, and what earlier trtpack wrote at save)."""
    _, _, ep = exported("keywords")
    iface = derive_interface(ep, ranges={"batch": Range(2, 32, opt=16)})
    assert iface.symbols["batch"] == trtpack.format.manifest.Symbol(2, 32, 16, "override")
    iface = derive_interface(ep, ranges={"x_dim0": (1, 3)})  # opt 4 no longer fits: the rule
    assert iface.symbols["batch"] == trtpack.format.manifest.Symbol(1, 3, 3, "rule")
    iface = derive_interface(ep, ranges={"batch": {"max": 8}})  # opt 4 still fits: kept
    assert iface.symbols["batch"] == trtpack.format.manifest.Symbol(1, 8, 4, "example")


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
        trtpack.RangeOverrideError, match=r"no symbol named 'btch' \(symbols: batch\)"
    ):
        derive_interface(ep, ranges={"btch": (1, 2)})


def test_override_reaches_the_saved_manifest_and_the_contract(exported, tmp_path):
    _, _, ep = exported("keywords")
    path = tmp_path / "narrow.trtpack"
    trtpack.save(ep, path, ranges={"batch": (1, 8, 8)})
    assert trtpack.inspect(path).manifest.symbols["batch"].max == 8
    pack = trtpack.load(path, device="cpu")
    with pytest.raises(
        trtpack.InputMismatchError, match=r"outside the allowed range of batch: \[1, 8\]"
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


def _normalized(manifest, data=None) -> str:
    """The manifest's JSON (or ``data``, a part of it) with its symbols renamed ``_s0``,
    ``_s1``, ... in order of first appearance (input dims, then int inputs): what stays when
    names are set aside."""
    import re

    from trtpack.format.manifest import parse_dim

    order: list[str] = []
    for spec in manifest.inputs:
        for dim in [*(spec.shape or ()), *([spec.symbol] if spec.symbol else [])]:
            if isinstance(dim, str) and parse_dim(dim).symbol not in order:
                order.append(parse_dim(dim).symbol)
    text = json.dumps(manifest.to_dict() if data is None else data)
    rename = {name: f"_s{i}" for i, name in enumerate(order)}
    pattern = r"\b(" + "|".join(map(re.escape, rename)) + r")\b"
    text = re.sub(pattern, lambda m: rename[m.group(1)], text) if rename else text
    return json.dumps(json.loads(text), sort_keys=True)  # sorted by the new names


def test_save_names_symbols_by_the_users_dims_and_migrate_generates_them(tmp_path):
    """Issue 22, item 7: save (the live program) names symbols by the user's Dim names,
    migrate of the torch.export.save file (whose JSON keeps none) by ``<input>_dim<i>``; all
    else is identical by both routes (the graph and weights members too)."""

    class M(torch.nn.Module):
        def forward(self, ids, mask):
            return ids * mask

    b, s = Dim("B", min=1, max=32), Dim("S", min=2, max=128)
    ep = torch.export.export(M(), (torch.randn(2, 8), torch.randn(2, 8)),
                             dynamic_shapes={"ids": {0: b, 1: s}, "mask": {0: b, 1: s}})  # fmt: skip
    saved = trtpack.save(ep, tmp_path / "s.trtpack")
    torch.export.save(ep, tmp_path / "p.pt2")
    migrated = trtpack.migrate(tmp_path / "p.pt2", tmp_path / "m.trtpack")
    assert list(saved.manifest.symbols) == ["B", "S"]
    assert list(migrated.manifest.symbols) == ["ids_dim0", "ids_dim1"]
    assert saved.manifest.members == migrated.manifest.members
    assert _normalized(saved.manifest) == _normalized(migrated.manifest)
    assert saved.manifest != migrated.manifest  # the names differ, nothing else
    # inspect and errors read the user's names
    assert "B" in trtpack.reading.render(saved)
    pack = trtpack.load(tmp_path / "s.trtpack", device="cpu")
    with pytest.raises(trtpack.InputMismatchError, match=r"allowed range of B: \[1, 32\]"):
        pack(torch.randn(33, 8), torch.randn(33, 8))
    # ranges= takes the Dim names (now the manifest's)
    narrowed = trtpack.save(ep, tmp_path / "n.trtpack", ranges={"B": (1, 8), "S": (2, 64)})
    assert narrowed.manifest.symbols["B"].max == 8
    assert narrowed.manifest.symbols["S"].max == 64


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


@pytest.mark.parametrize("major", [7, 9])
def test_an_unknown_serde_major_is_refused_by_name(major):
    """A major bump of torch's serde schema removes or renames fields: derive refuses it,
    naming both majors, rather than describe it as 8.x (issue 22.8)."""
    import json

    from trtpack.program.derive import derive_from_graph
    from trtpack.program.serialize import program_graph

    ep = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    doc = json.loads(program_graph(ep))
    derive_from_graph(doc, where="m.json")  # 8.x: described
    doc["schema_version"]["major"] = major
    with pytest.raises(trtpack.MigrationError, match=f"schema {major}\\.\\d+ .*major 8 only"):
        derive_from_graph(doc, where="m.json")


def test_runtime_assertions_over_input_sizes_become_guards_within_bounds():
    """``SerializedProgram.input_assertions`` follows sym ops from a user input's size to an
    ``_assert_scalar``: a short chain becomes a guard's torch text, a chain past the bound is
    not followed (its text would grow with every node: quadratic memory on a hostile graph),
    and an assertion over anything else (no input size behind it) is not a guard."""
    from trtpack.program.derive import SerializedProgram

    def node(target, args, out=None):
        outputs = [{"as_sym_int" if out and not out.startswith("b") else "as_sym_bool":
                    {"as_name": out}}] if out else []  # fmt: skip
        return {"target": target, "inputs": [{"name": "", "arg": a} for a in args],
                "outputs": outputs}  # fmt: skip

    size = node("torch.ops.aten.sym_size.int", [{"as_tensor": {"name": "x"}}, {"as_int": 0}], "s")
    chain = [node("_operator.add", [{"as_sym_int": {"as_name": f"c{i - 1}" if i else "s"}},
                                    {"as_int": 1}], f"c{i}") for i in range(2000)]  # fmt: skip

    def program(nodes):
        p = object.__new__(SerializedProgram)
        p.where, p.graph = "t", {"nodes": nodes}
        p.signature = {"input_specs": [{"user_input": {"arg": {"as_tensor": {"name": "x"}}}}]}
        return p

    short = [size, node("_operator.mod", [{"as_sym_int": {"as_name": "s"}}, {"as_int": 16}], "m"),
             node("_operator.eq", [{"as_sym_int": {"as_name": "m"}}, {"as_int": 0}], "b0"),
             node("torch.ops.aten._assert_scalar.default", [{"as_sym_bool": {"as_name": "b0"}},
                  {"as_string": "Runtime assertion failed for expression Eq(Mod(u0, 16), 0) "
                                "on node 'eq'"}])]  # fmt: skip
    assert program(short).input_assertions() == [
        ("Eq(Mod(u0, 16), 0)", "((L['flat_args'][0].size()[0] % 16) == 0)")
    ]
    long = [size, *chain,
            node("_operator.eq", [{"as_sym_int": {"as_name": "c1999"}}, {"as_int": 0}], "b1"),
            node("torch.ops.aten._assert_scalar.default", [{"as_sym_bool": {"as_name": "b1"}},
                                                           {"as_string": "x"}])]  # fmt: skip
    assert program(long).input_assertions() == []
    data = [node("_operator.eq", [{"as_sym_int": {"as_name": "item"}}, {"as_int": 0}], "b2"),
            node("torch.ops.aten._assert_scalar.default", [{"as_sym_bool": {"as_name": "b2"}},
                                                           {"as_string": "x"}])]  # fmt: skip
    assert program(data).input_assertions() == []
