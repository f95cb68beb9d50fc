"""A pack or legacy file whose graph would run code when torch rebuilds it is refused before
torch sees it (trtpack/program/graph_check.py). Each attack is real: the payload would create a
marker file, and the tests check that it never appears."""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import CASES
from test_container import raw_members, rewrite
from test_migrate import edited_zip

import trtpack
from trtpack.cli.commands import main as cli
from trtpack.program import graph_check as check_module
from trtpack.program.graph_check import check_graph, safe_expr, safe_target

FIXTURES = Path(__file__).parent / "fixtures" / "v0" / "torch_export"


def _payload(marker: Path) -> str:
    return f'exec("import pathlib; pathlib.Path({str(marker)!r}).touch()")'


def _without_the_check(monkeypatch, pack: Path) -> None:
    """Load ``pack`` with graph_check.check_graph (and checked_graph) reduced to parsing the JSON, call it and
    rebuild its ExportedProgram with torch (where the attack targets either): what the
    check stands between. Errors after the payload are expected; the marker is the result."""
    import torch

    monkeypatch.setattr(check_module, "check_graph", lambda data, member, *_: json.loads(data))
    monkeypatch.setattr(check_module, "checked_graph",
                        lambda data, member, *_: (json.loads(data), []))  # fmt: skip
    try:
        loaded = trtpack.load(pack, device="cpu")
        loaded.exported_program  # noqa: B018  (torch's deserializer, sympy included)
        loaded(torch.ones(4, 6), mask=torch.ones(4, 6), bias=torch.ones(6))
    except Exception:
        pass
    monkeypatch.undo()


def _first_placeholder(graph: dict) -> str:
    spec = graph["graph_module"]["signature"]["input_specs"]
    user = [s for s in spec if "user_input" in s]
    return user[0]["user_input"]["arg"]["as_tensor"]["name"]


def _rename(raw: bytes, old: str, new: str) -> bytes:
    """Rename a value everywhere in the graph JSON (placeholder, uses, signature)."""
    return raw.replace(json.dumps(old).encode(), json.dumps(new).encode())


def _hostile_pack(small_pack: Path, tmp_path: Path, edit) -> Path:
    members = raw_members(small_pack)
    graph = members["program/graph.json"]
    return rewrite(
        small_pack, tmp_path / "hostile.trtpack", replace={"program/graph.json": edit(graph)}
    )


def _refused(fn, marker: Path, field_part: str) -> trtpack.UnsafePackError:
    with pytest.raises(trtpack.UnsafePackError) as info:
        fn()
    assert not marker.exists(), "the payload ran"
    assert field_part in info.value.field
    assert info.value.member is not None
    return info.value


def test_placeholder_name_with_code_refused_on_load(small_pack, tmp_path):
    marker = tmp_path / "ran"

    def edit(raw: bytes) -> bytes:
        old = _first_placeholder(json.loads(raw))
        return _rename(raw, old, f"bias={_payload(marker)}")

    pack = _hostile_pack(small_pack, tmp_path, edit)
    trtpack.verify(pack)  # hashes are consistent: only the graph check can catch it
    err = _refused(lambda: trtpack.load(pack), marker, "name")
    assert err.member == "program/graph.json"
    assert "bias=" in str(err.value)


@pytest.mark.parametrize(
    "target",
    ["builtins.exec", "os.system", "torch.load", "torch.ops.evil.run.default", "#evil"],
)
def test_call_target_outside_allowlist_refused(small_pack, tmp_path, target):
    marker = tmp_path / "ran"

    def edit(raw: bytes) -> bytes:
        graph = json.loads(raw)
        graph["graph_module"]["graph"]["nodes"][0]["target"] = target
        return json.dumps(graph).encode()

    pack = _hostile_pack(small_pack, tmp_path, edit)
    err = _refused(lambda: trtpack.load(pack), marker, ".target")
    assert "nodes[0]" in err.field and err.value == target


def test_output_and_signature_names_refused(small_pack, tmp_path):
    marker = tmp_path / "ran"

    def edit(raw: bytes) -> bytes:
        graph = json.loads(raw)
        outputs = graph["graph_module"]["signature"]["output_specs"]
        arg = outputs[0]["user_output"]["arg"]["as_tensor"]
        return _rename(raw, arg["name"], f"y; {_payload(marker)}")

    pack = _hostile_pack(small_pack, tmp_path, edit)
    _refused(lambda: trtpack.load(pack), marker, "name")


def test_symbolic_expression_with_code_refused(small_pack, tmp_path, monkeypatch):
    """torch hands expression strings to sympy.sympify, which evals them."""
    marker = tmp_path / "ran"

    def edit(raw: bytes) -> bytes:
        payload = f"__import__('os').system('touch {marker}')"
        text, n = re.subn(
            r'"expr_str": "[^"]*"', json.dumps({"expr_str": payload})[1:-1], raw.decode(), count=1
        )
        assert n == 1, "the keywords model has a dynamic batch, so symbolic sizes"
        return text.encode()

    pack = _hostile_pack(small_pack, tmp_path, edit)
    _refused(lambda: trtpack.load(pack), marker, "expr_str")
    _without_the_check(monkeypatch, pack)
    assert marker.exists(), "the payload must be one that runs when the check is removed"


def _call_signature(graph: dict) -> dict:
    return graph["graph_module"]["module_call_graph"][0]["signature"]


def test_keyword_name_with_code_in_the_in_spec_refused(small_pack, tmp_path, monkeypatch):
    """ep.module()'s forward() quotes each keyword of the call into its source
    (``{'mask':mask, 'bias':bias}``): a key that closes the quote ran its payload on the first
    call, before this check (found while building the direct loader)."""
    marker = tmp_path / "ran"
    payload = f'exec("import pathlib; pathlib.Path({str(marker)!r}).touch()")'

    def edit(raw: bytes) -> bytes:
        graph = json.loads(raw)
        sig = _call_signature(graph)
        protocol, root = json.loads(sig["in_spec"])
        kwargs = root["children_spec"][1]
        assert json.loads(kwargs["context"]) == ["mask", "bias"]
        kwargs["context"] = json.dumps(["mask", f"bias':({payload}),'z"])
        sig["in_spec"] = json.dumps([protocol, root])
        return json.dumps(graph).encode()

    pack = _hostile_pack(small_pack, tmp_path, edit)
    err = _refused(lambda: trtpack.load(pack), marker, "in_spec")
    assert "kwargs key [1]" in err.field
    _without_the_check(monkeypatch, pack)
    assert marker.exists(), "the payload must be one that runs when the check is removed"


def test_forward_arg_name_with_code_refused(small_pack, tmp_path):
    """forward_arg_names are the parameters of ep.module()'s generated forward()."""
    marker = tmp_path / "ran"

    def edit(raw: bytes) -> bytes:
        graph = json.loads(raw)
        _call_signature(graph)["forward_arg_names"][2] = f"bias={_payload(marker)}"
        return json.dumps(graph).encode()

    pack = _hostile_pack(small_pack, tmp_path, edit)
    err = _refused(lambda: trtpack.load(pack), marker, "forward_arg_names")
    assert err.field.endswith("forward_arg_names[2]")


def test_a_forward_arg_name_given_twice_is_refused(small_pack, tmp_path):
    """Found by tools/fuzz.py (seed 500): forward_arg_names ``['x', 'mask', 'x']`` made the
    generated forward() a SyntaxError that escaped from load."""

    def edit(raw: bytes) -> bytes:
        graph = json.loads(raw)
        names = _call_signature(graph)["forward_arg_names"]
        names[2] = names[0]
        return json.dumps(graph).encode()

    pack = _hostile_pack(small_pack, tmp_path, edit)
    with pytest.raises(trtpack.UnsafePackError, match="a parameter name given twice") as e:
        trtpack.load(pack, device="cpu")
    assert e.value.field.endswith("forward_arg_names[2]")


def _hostile_pt2(tmp_path: Path, marker: Path) -> Path:
    def edit(raw: bytes) -> bytes:
        old = _first_placeholder(json.loads(raw))
        return _rename(raw, old, f"bias={_payload(marker)}")

    src = FIXTURES / "keywords.pt2"
    with zipfile.ZipFile(src) as z:
        model = next(n for n in z.namelist() if "/models/" in n and n.endswith(".json"))
    return edited_zip(src, tmp_path / "hostile.pt2", model.rsplit("/", 1)[-1], edit)


def test_legacy_pt2_with_code_refused_by_load_migrate_and_inspect(tmp_path, capsys):
    marker = tmp_path / "ran"
    pt2 = _hostile_pt2(tmp_path, marker)
    _refused(lambda: trtpack.load(pt2), marker, "name")
    out = tmp_path / "out.trtpack"
    _refused(lambda: trtpack.migrate(pt2, out), marker, "name")
    assert not out.exists()
    assert cli(["inspect", str(pt2)]) != 0
    err = capsys.readouterr().err
    assert "bias=" in err and "not a plain Python identifier; torch would turn it into code" in err
    assert not marker.exists()


def test_legit_targets_and_expressions_pass():
    for t in ["torch.ops.aten.add.Tensor", "torch.ops.aten.relu.default", "_operator.getitem",
              "torch.ops.higher_order.cond", "torch.ops.tensorrt.execute_engine.default",
              "torch.sym_max", "math.ceil"]:  # fmt: skip
        assert safe_target(t), t
    for e in [
        "s0",
        "2*s0 + 1",
        "Mod(s0, 32)",
        "Ne(s0, 3)",
        "FloorDiv(s1, 2)",
        "s0*s1 - 4",
        "StrictGreaterThan(Symbol('s77', positive=True, integer=True), Integer(2))",
        "LessThan(Symbol('u1', integer=True), Integer(3))",
        "IntInfinity()",
    ]:
        assert safe_expr(e), e
    for e in ["__import__('os')", "s0.__class__", "(lambda: 1)()", "s0[0]", "'a'", "open(1)"]:
        assert not safe_expr(e), e


def test_every_test_model_passes(tmp_path):
    """No real program is refused (the time it costs is printed, not asserted: it is well under
    a millisecond per graph here, against tens of milliseconds for torch to deserialize it)."""
    worst = 0.0
    for name, case in CASES.items():
        _, ep = case.export()
        path = trtpack.save(ep, tmp_path / f"{name}.trtpack").path
        graph = json.loads(raw_members(path)["program/graph.json"])
        start = time.perf_counter()
        check_graph(graph, "program/graph.json")
        worst = max(worst, time.perf_counter() - start)
        trtpack.load(path, device="cpu")
    print(f"graph check: worst {worst * 1e3:.3f} ms per graph")


def test_refusal_names_the_exact_json_path():
    """The check keeps paths as chains and spells one out only on a refusal: the spelling is
    the JSON path as written (keys joined by '.', list indexes in brackets)."""
    from trtpack.program.graph_check import check_graph

    graph = {"graph_module": {"graph": {"nodes": [
        {"target": "torch.ops.aten.add.Tensor", "inputs": [{"name": "", "arg": {}}]},
        {"target": "torch.ops.aten.mul.Tensor", "inputs": [{"name": "x", "arg": {}}],
         "outputs": [{"as_tensor": {"name": "a b"}}]},
    ]}}}  # fmt: skip
    with pytest.raises(trtpack.UnsafePackError) as e:
        check_graph(graph, "m")
    assert e.value.field == "graph_module.graph.nodes[1].outputs[0].as_tensor.name"
    graph["graph_module"]["graph"]["nodes"][1]["outputs"] = []
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "os.system"
    with pytest.raises(trtpack.UnsafePackError) as e:
        check_graph(graph, "m")
    assert e.value.field == "graph_module.graph.nodes[0].target"
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.add.Tensor"
    graph["graph_module"]["graph"]["nodes"][0]["inputs"][0]["name"] = ""  # positional: allowed
    assert check_graph(graph, "m") is graph
    graph["graph_module"]["graph"]["nodes"][0]["outputs"] = [{"name": ""}]  # not an input
    with pytest.raises(trtpack.UnsafePackError) as e:
        check_graph(graph, "m")
    assert e.value.field == "graph_module.graph.nodes[0].outputs[0].name"


@given(
    st.lists(
        st.one_of(
            st.integers(0, 12).map(lambda i: (i, True)),
            st.sampled_from(["inputs", "nodes", "a.inputs", ".inputs", "", "x", "b."]).map(
                lambda k: (k, False)
            ),
        ),
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None)
def test_path_tests_without_spelling_agree_with_the_spelled_path(steps):
    """The check asks "a node argument?" and "a node's target?" of a path kept as a chain;
    the answers are those of the spelled-out path, which the check spells only on a refusal."""
    from trtpack.program.graph_check import _last_segment, _path, _positional_input

    chain = None
    for key, is_index in steps:
        chain = (chain, key, is_index)
    spelled = _path(chain)
    assert _positional_input(chain) == bool(re.search(r"\.inputs\[\d+\]\Z", spelled))
    assert _last_segment(chain) == spelled.split(".")[-1]


@pytest.mark.parametrize("name", ["called_twice", "colon_parameter"])
def test_names_torch_makes_round_trip(name, exported, tmp_path):
    """Issue 22, item 3: ``n@1`` (a submodule called twice under
    preserve_module_call_signature) and a parameter ``foo:bar`` are names torch emits; they
    reach generated code only quoted (``getattr(self, "foo:bar")``), so they load."""
    case, model, ep = exported(name)
    graph = raw_members(trtpack.save(ep, tmp_path / "m.trtpack").path)["program/graph.json"]
    assert (b'"n@1"' if name == "called_twice" else b'"foo:bar"') in graph
    pack = trtpack.load(tmp_path / "m.trtpack", device="cpu")
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        assert torch.equal(pack(*args, **kwargs), model(*args, **kwargs))
    # torch's own use of the names: unflatten follows the call graph, module() the parameter
    program = pack.exported_program
    if name == "called_twice":
        assert [e.fqn for e in program.module_call_graph] == ["", "n", "n@1"]
        assert torch.equal(torch.export.unflatten(program)(*case.args), model(*case.args))
    else:
        assert torch.equal(program.module()(*case.args), model(*case.args))


@pytest.mark.parametrize("field", ["parameter_name", "fqn"])
def test_a_quoted_name_that_closes_its_quote_is_refused(exported, tmp_path, field):
    """What reaches code quoted (``getattr(self, "<part>")``) must not end that literal: a
    parameter name or call-graph entry with a quote or backslash in it is refused."""
    marker = tmp_path / "ran"
    name, old = ("colon_parameter", "foo:bar") if field == "parameter_name" else (
        "called_twice", "n@1")  # fmt: skip
    _, _, ep = exported(name)
    path = trtpack.save(ep, tmp_path / "m.trtpack").path
    hostile = f'x").__init__.__globals__["__builtins__"]["exec"]("{_payload(marker)}'
    pack = _hostile_pack(path, tmp_path, lambda raw: _rename(raw, old, hostile))
    err = _refused(lambda: trtpack.load(pack, device="cpu"), marker, field)
    assert err.value == hostile
