"""Issue 13 (GPU cold start): the program backend runs a module built straight from the
pack's torch.export JSON (trtpack/program/graph_module.py), not torch's deserializer + ep.module().
It must be that same module: the same graph, node for node, the same attributes, and
torch.equal outputs at every size; and what it does not reproduce falls back to torch's path
with the reason kept, never differently and never by running code from the pack."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import pytree_models as pm
import torch
import torch.utils._pytree as pytree
from fuzzing import _mutate_json
from models import CASES
from test_container import raw_members, rewrite

import trtpack
from trtpack.program.graph_check import check_graph
from trtpack.program.graph_module import Unsupported, build_module
from trtpack.program.serde import SCHEMA_MAJOR, TESTED_SCHEMA_MINORS
from trtpack.program.serialize import _rebuild_state, load_program, runnable
from trtpack.reading import open_pack

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path

GRAPH = "program/graph.json"


def reference(path: Path, device: str = "cpu") -> torch.fx.GraphModule:
    """What the program backend ran before: torch's deserializer, then ep.module()."""
    with open_pack(path) as (reader, info):
        return runnable(load_program(reader, info.manifest, device=torch.device(device)))


def canonical(gm: torch.fx.GraphModule) -> list:
    """A graph as (op, target, args, kwargs) per node, values as node positions: names (which
    FX may choose) aside, equal forms are the same program."""
    index: dict[torch.fx.Node, int] = {}
    out = []
    for i, n in enumerate(gm.graph.nodes):
        index[n] = i
        args, kwargs = torch.fx.node.map_arg((n.args, dict(n.kwargs)), lambda a: ("%", index[a]))
        out.append((n.op, None if n.op == "placeholder" else n.target, args, kwargs))
    return out


def assert_same_module(fast: torch.fx.GraphModule, ref: torch.fx.GraphModule) -> None:
    assert canonical(fast) == canonical(ref)
    fast_state, ref_state = fast.state_dict(keep_vars=True), ref.state_dict(keep_vars=True)
    assert list(fast_state) == list(ref_state)
    for name in ref_state:
        assert type(fast_state[name]) is type(ref_state[name]), name
        assert torch.equal(fast_state[name], ref_state[name]), name
    assert [n for n, _ in fast.named_buffers()] == [n for n, _ in ref.named_buffers()]
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in ref.named_parameters()]


def assert_equal(got, want) -> None:
    g, g_spec = pytree.tree_flatten(got)
    w, w_spec = pytree.tree_flatten(want)
    assert g_spec == w_spec
    for a, b in zip(g, w):
        assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b


def _clone(x):
    return pytree.tree_map_only(torch.Tensor, torch.clone, x)


def check_against_reference(path: Path, calls) -> trtpack.LoadedPack:
    pack = trtpack.load(path, device="cpu")
    assert pack.fast_path_reason is None, pack.fast_path_reason
    ref = reference(path)
    assert_same_module(pack.module, ref)
    for args, kwargs in calls:
        with torch.inference_mode():
            assert_equal(
                pack(*_clone(args), **_clone(kwargs)), ref(*_clone(args), **_clone(kwargs))
            )
    return pack


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_test_model_takes_the_fast_path_and_matches(name, exported, tmp_path):
    case, _, ep = exported(name)
    path = trtpack.save(ep, tmp_path / f"{name}.trtpack").path
    check_against_reference(path, [(case.args, case.kwargs), *case.calls])


def test_registered_pytree_classes(tmp_path):
    """A transformers-style cache as a keyword input and a dataclass output (and a program
    whose unexpressed guard then needs the ExportedProgram, built lazily from the same
    tensors)."""
    args, kwargs = pm.example()
    past = torch.export.Dim("past", min=1, max=64)
    dyn = {"x": {1: torch.export.Dim("seq", min=1, max=32)},
           "cache": [[{1: past}, {1: past}], [{1: past}, {1: past}]]}  # fmt: skip
    ep = torch.export.export(pm.Decoder(), args, kwargs, dynamic_shapes=dyn)
    path = trtpack.save(ep, tmp_path / "decoder.trtpack").path
    pack = check_against_reference(path, [pm.example(s, p) for s, p in [(3, 5), (1, 9), (7, 2)]])
    assert type(pack(*args, **kwargs)) is pm.Output
    leaves = pytree.tree_leaves((args, kwargs))
    rebuilt = pack.call_of(leaves)  # by the module's own spec: the class comes back
    assert isinstance(rebuilt[1]["cache"], pm.Cache)
    assert pack._exported_program is None  # call_of needed no ExportedProgram


class _Mutations(torch.nn.Module):
    """A buffer updated in place, a user input updated in place, split and max (multiple
    results unpacked by getitem), a symbolic size and a tensor built on a device."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x, y):
        self.steps.add_(1)
        y.mul_(2)
        a, b = torch.split(x, [2, 3], dim=1)
        values, index = x.max(dim=1)
        ramp = torch.arange(x.shape[0], device=x.device, dtype=x.dtype)
        return a * self.steps + y[:, :2], b.sum(), values + ramp, index


def _mutations_pack(tmp_path: Path, functional: bool = True) -> Path:
    """``functional``: decomposed to ATen, the in-place updates are outputs of the graph
    (BUFFER_MUTATION, USER_INPUT_MUTATION); else they stay in-place ops in it."""
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(
        _Mutations(), (torch.randn(4, 5), torch.randn(4, 5)), dynamic_shapes=({0: batch},) * 2
    )
    if functional:
        ep = ep.run_decompositions()
        kinds = {s.kind.name for s in ep.graph_signature.output_specs}
        assert {"BUFFER_MUTATION", "USER_INPUT_MUTATION"} <= kinds
    return trtpack.save(ep, tmp_path / "mutations.trtpack").path


@pytest.mark.parametrize("functional", [True, False])
def test_buffer_and_input_mutations_are_copied_back_as_ep_module_does(tmp_path, functional):
    path = _mutations_pack(tmp_path, functional)
    pack, ref = trtpack.load(path, device="cpu"), reference(path)
    assert pack.fast_path_reason is None
    assert_same_module(pack.module, ref)
    for n in (4, 1, 9):
        x, y = torch.randn(n, 5), torch.randn(n, 5)
        y_fast, y_ref = y.clone(), y.clone()
        assert_equal(pack.module(x, y_fast), ref(x, y_ref))
        assert torch.equal(y_fast, y_ref) and torch.equal(y_fast, y * 2)
        assert torch.equal(pack.module.steps, ref.steps)
    assert pack.module.steps.item() == 3


def test_device_arguments_move_as_move_to_device_pass_moves_them(tmp_path):
    """Loading onto another device rewrites every device= argument as torch's pass does
    (checked on the meta device: there is no GPU here; the rewrite is the same)."""
    path = _mutations_pack(tmp_path)
    with open_pack(path) as (reader, info):
        meta = torch.device("meta")
        state, constants = _rebuild_state(reader.view(info.manifest.program.weights), "w", meta)
        fast = build_module(json.loads(reader.read(GRAPH)), state, constants, meta)
    ref = reference(path, "meta")
    assert canonical(fast) == canonical(ref)
    devices = [n.kwargs["device"] for n in fast.graph.nodes if "device" in n.kwargs]
    assert devices and set(devices) == {"meta"}


def test_a_program_without_forward_arg_names(small_pack, tmp_path):
    """Then forward() is named arg_0, ..., and the keywords of the in_spec, as torch does."""
    graph = _graph(small_pack)
    del graph["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"]
    path = rewrite(small_pack, tmp_path / "n.trtpack", replace={GRAPH: json.dumps(graph).encode()})
    pack = check_against_reference(
        path, [((torch.randn(3, 6),), {"mask": torch.randn(3, 6), "bias": torch.randn(6)})]
    )
    assert "def forward(self, arg_0, mask, bias)" in pack.module.code


def test_a_call_spec_torch_cannot_read_is_a_program_error(small_pack, tmp_path):
    """Found by tools/fuzz.py (seed 600): an in_spec naming ``builtins*tuple`` escaped the
    direct build as torch's NotImplementedError. It takes torch's path, which refuses it."""
    graph = _graph(small_pack)
    sig = graph["graph_module"]["module_call_graph"][0]["signature"]
    sig["in_spec"] = sig["in_spec"].replace("builtins.tuple", "builtins*tuple", 1)
    path = rewrite(small_pack, tmp_path / "s.trtpack", replace={GRAPH: json.dumps(graph).encode()})
    with pytest.raises(trtpack.ProgramError, match="builtins\\*tuple in pytree is not registered"):
        trtpack.load(path, device="cpu")


class _ToDevice(torch.nn.Module):
    def forward(self, x):
        return x.to("cpu", torch.float64) + 1  # aten.to.device, its device positional


def test_aten_to_device_moves_as_torchs_pass_moves_it(tmp_path, monkeypatch):
    """torch 2.11+'s move_to_device_pass also moves the positional device of aten.to.device;
    with an older torch, which may not, such a graph takes the running torch's path."""
    ep = torch.export.export(_ToDevice(), (torch.randn(2),))
    path = trtpack.save(ep, tmp_path / "to.trtpack").path
    check_against_reference(path, [((torch.randn(2),), {})])  # on the CPU: nothing moves
    graph = json.loads(raw_members(path)[GRAPH])
    meta = torch.device("meta")
    assert canonical(build_module(graph, {}, {}, meta)) == canonical(reference(path, "meta"))
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.10.0"))
    with pytest.raises(Unsupported, match="aten.to.device"):
        build_module(graph, {}, {}, meta)


def test_the_exported_program_is_built_on_first_access_from_the_same_tensors(small_pack):
    pack = trtpack.load(small_pack, device="cpu")
    assert pack._exported_program is None
    ep = pack.exported_program
    assert isinstance(ep, torch.export.ExportedProgram)
    assert ep.state_dict["lin.weight"].data_ptr() == pack.module.lin.weight.data_ptr()
    assert pack.exported_program is ep


def test_a_fresh_process_loads_and_runs_without_dynamo_or_the_deserializer(small_pack):
    code = (
        "import sys, torch, trtpack\n"
        f"pack = trtpack.load({str(small_pack)!r}, device='cpu')\n"
        "y = pack(torch.randn(3, 6), mask=torch.randn(3, 6), bias=torch.randn(6))\n"
        "assert y.shape == (3, 6) and pack.fast_path_reason is None\n"
        "print(sorted(m for m in ('torch._dynamo', 'torch._export.serde.serialize', 'sympy')\n"
        "             if m in sys.modules))\n"
        "pack.exported_program\n"  # the ExportedProgram is still there when asked for
        "print('torch._export.serde.serialize' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


# --- what the fast path does not take ----------------------------------------------------


class _Cond(torch.nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: t - 1, (x,))


class _NoGrad(torch.nn.Module):
    """What a model exported under torch.no_grad() (a transformers LLM) carries: its body in
    wrap_with_set_grad_enabled; one inside too, and a cond with a weight inside a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x).relu()
        with torch.enable_grad():
            y = y * 2 + 1
        return torch.cond(y.sum() > 0, lambda t: self.lin(t), lambda t: t - 1, (y,)), y


class _Autocast(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = self.lin(x)
        return y.float() + 1


def _subgraphs(gm: torch.fx.GraphModule) -> list:
    """Each subgraph a get_attr node reads, canonical, in node order (nested ones too)."""
    out = []
    for n in gm.graph.nodes:
        sub = getattr(gm, n.target, None) if n.op == "get_attr" else None
        if isinstance(sub, torch.fx.GraphModule):
            out.append((n.target, canonical(sub), _subgraphs(sub)))
    return out


@pytest.mark.parametrize("name", ["cond", "no_grad", "autocast"])
def test_subgraph_higher_order_ops_take_the_fast_path_and_match(name, tmp_path):
    model = {"cond": _Cond, "no_grad": _NoGrad, "autocast": _Autocast}[name]().eval()
    x = torch.randn(3, 4)
    if name == "no_grad":
        with torch.no_grad():
            ep = torch.export.export(model, (x,))
    else:
        ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert targets & {"cond", "wrap_with_set_grad_enabled", "wrap_with_autocast"}, targets
    path = trtpack.save(ep, tmp_path / f"{name}.trtpack").path
    pack = check_against_reference(path, [((x,), {}), ((-x,), {}), ((x * 0,), {})])
    assert _subgraphs(pack.module) == _subgraphs(reference(path))
    assert "torch._dynamo" not in sys.modules or pack.exported_program is not None


def test_other_higher_order_ops_fall_back_to_torch_with_the_reason(small_pack):
    graph = _graph(small_pack)
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.higher_order.map_impl"
    with pytest.raises(Unsupported, match="call target torch.ops.higher_order.map_impl"):
        _build(graph, small_pack)


def _graph(small_pack: Path) -> dict:
    return json.loads(raw_members(small_pack)[GRAPH])


def _build(graph: dict, small_pack: Path):
    with open_pack(small_pack) as (reader, info):
        state, constants = _rebuild_state(reader.view(info.manifest.program.weights), "w", None)
    return build_module(check_graph(graph, GRAPH), state, constants)


def _first_arg(graph: dict) -> dict:
    return graph["graph_module"]["graph"]["nodes"][0]["inputs"][1]


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda g: g["schema_version"].update(major=9), "export schema major 9"),
        (lambda g: g["schema_version"].update(minor=999), "export schema 8.999 is not one"),
        (lambda g: g["schema_version"].update(minor="20"), "export schema 8.20 is not one"),
        (lambda g: _first_arg(g).update(arg={"as_future": 1}), "argument of kind as_future"),
        (lambda g: _first_arg(g).update(arg={"as_graph": {}}), "argument of kind as_graph"),
        (lambda g: g["graph_module"]["graph"]["nodes"][0].update(
            target="torch.ops.aten.no_such_op.default"), "not registered"),
        (lambda g: g["graph_module"]["graph"]["nodes"][0].update(
            target="torch.ops.higher_order.scan"), "call target torch.ops.higher_order.scan"),
        # a plain callable's named input recorded as positional: torch 2.11 and 2.13 read it apart
        (lambda g: g["graph_module"]["graph"]["nodes"][0].update(target="_operator.getitem"),
         "positional input named"),
        (lambda g: g["graph_module"]["graph"]["custom_obj_values"].update(
            obj={"name": "obj", "class_fqn": "x"}), "custom objects"),
        (lambda g: g["graph_module"]["signature"]["input_specs"].__setitem__(
            0, {"token": {"arg": {"name": "t"}}}), "input of kind token"),
        (lambda g: g["graph_module"]["signature"]["output_specs"].__setitem__(
            0, {"loss_output": {"arg": {"name": "add"}}}), "output of kind loss_output"),
        (lambda g: g["graph_module"]["graph"]["outputs"].__setitem__(0, {"as_none": True}),
         "graph output of kind as_none"),
        (lambda g: g["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"].update(
            as_tensor={"name": "nowhere"}), "which no earlier node defines"),
    ],
)  # fmt: skip
def test_unsupported_constructs_are_refused_with_their_reason(small_pack, edit, reason):
    graph = _graph(small_pack)
    edit(graph)
    with pytest.raises(Unsupported, match=reason):
        _build(graph, small_pack)


def test_this_torch_writes_a_schema_minor_the_direct_build_was_tested_on(small_pack):
    """Run on every torch tools/test.sh installs (.venv 2.13, .venv-trt 2.14.1): a torch that
    writes a minor not in TESTED_SCHEMA_MINORS fails here until the node-for-node tests have
    run on it and the minor is added (issue 22.8)."""
    from torch._export.serde.schema import SCHEMA_VERSION

    assert SCHEMA_VERSION[0] == SCHEMA_MAJOR
    assert SCHEMA_VERSION[1] in TESTED_SCHEMA_MINORS, (torch.__version__, SCHEMA_VERSION)
    assert _graph(small_pack)["schema_version"] == {"major": 8, "minor": SCHEMA_VERSION[1]}


def test_the_declared_torch_range_holds_this_torch():
    """pyproject.toml declares the torches that are tested (issue 22.8): each environment
    tools/test.sh runs (.venv 2.13, .venv-trt 2.14.1) must lie inside it, so a torch
    outside the range cannot pass CI unnoticed."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())[
        "project"
    ]["optional-dependencies"]
    specs = {str(Requirement(r).specifier) for e in ("torch", "tensorrt") for r in extras[e]
             if Requirement(r).name == "torch"}  # fmt: skip
    assert len(specs) == 1, specs  # the extras agree
    installed = Version(torch.__version__.split("+")[0])
    assert Requirement(f"torch{specs.pop()}").specifier.contains(installed), installed


def test_an_untested_schema_minor_takes_torchs_path_with_the_reason(small_pack, tmp_path):
    """A newer minor of the same major: torch's deserializer reads it (it checks the major
    only); the direct build does not guess what the minor added."""
    graph = _graph(small_pack)
    graph["schema_version"]["minor"] = 999
    path = rewrite(small_pack, tmp_path / "m.trtpack", replace={GRAPH: json.dumps(graph).encode()})
    pack = trtpack.load(path, device="cpu")
    assert pack.fast_path_reason is not None
    assert "export schema 8.999 is not one the direct build was tested on" in (
        pack.fast_path_reason
    )
    args = (torch.randn(3, 6),)
    kwargs = {"mask": torch.randn(3, 6), "bias": torch.randn(6)}
    assert_equal(pack(*args, **kwargs), trtpack.load(small_pack, device="cpu")(*args, **kwargs))


def test_an_unknown_argument_kind_in_a_pack_is_a_trtpack_error_and_runs_nothing(
    small_pack, tmp_path
):
    """The fast path refuses the kind; torch's deserializer, which gets the graph instead,
    refuses it too: a ProgramError, and the string in it is never evaluated."""
    marker = tmp_path / "ran"
    graph = _graph(small_pack)
    _first_arg(graph)["arg"] = {"as_evil": f"__import__('pathlib').Path({str(marker)!r}).touch()"}
    bad = rewrite(small_pack, tmp_path / "bad.trtpack", replace={GRAPH: json.dumps(graph).encode()})
    with pytest.raises(trtpack.ProgramError, match="cannot read the program"):
        trtpack.load(bad, device="cpu")
    assert not marker.exists()


def test_a_call_target_outside_the_allowlist_is_refused_before_any_build(small_pack, tmp_path):
    graph = _graph(small_pack)
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "builtins.exec"
    bad = rewrite(small_pack, tmp_path / "bad.trtpack", replace={GRAPH: json.dumps(graph).encode()})
    with pytest.raises(trtpack.UnsafePackError, match="outside the operator allowlist"):
        trtpack.load(bad, device="cpu")


def test_mutated_graphs_build_or_are_refused_never_anything_else(exported, tmp_path):
    """Random edits of real graphs: each is refused by the graph check (UnsafePackError), or
    by the builder (Unsupported), or builds; no other exception escapes."""
    rng = random.Random(13)
    _, _, ep = exported("with_buffers")
    path = trtpack.save(ep, tmp_path / "w.trtpack").path
    original = _graph(path)
    outcomes = {"built": 0, "unsupported": 0, "unsafe": 0}
    for _ in range(300):
        graph = _mutate_json(rng, original)
        try:
            _build(graph, path)
            outcomes["built"] += 1
        except Unsupported:
            outcomes["unsupported"] += 1
        except trtpack.UnsafePackError:
            outcomes["unsafe"] += 1
    assert outcomes["unsupported"] > 0 and outcomes["built"] > 0, outcomes
