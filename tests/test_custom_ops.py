"""Custom operators (issue 22, item 2): a program that calls a ``torch.library`` operator
saves, records the operator in the manifest (``program.custom_ops``, format 1.4, shown by
``inspect``), and loads only where the user allows it and the operator is registered in the
process; otherwise the refusal names the exact operators and how to allow them. Nothing named
by the file is imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import CUSTOM_OP, assert_same
from test_container import raw_members, rewrite

import trtpack
from trtpack.cli import main as cli

FIXTURE = Path(__file__).parent / "fixtures" / "v1.4" / "custom_op.trtpack"


@pytest.fixture(scope="module")
def custom_pack(tmp_path_factory):
    model, ep = CUSTOM_OP.export()
    path = tmp_path_factory.mktemp("custom") / "custom.trtpack"
    trtpack.save(ep, path)
    return path, model


def test_the_pack_records_the_operators_it_needs(custom_pack, capsys):
    path, _ = custom_pack
    assert trtpack.inspect(path).manifest.program.custom_ops == ("trtpack_tests::twice",)
    assert cli(["inspect", str(path)]) == 0
    assert "calls custom operators trtpack_tests::twice" in capsys.readouterr().out
    # a program without custom operators records nothing (its manifest is as in 1.3)
    assert trtpack.inspect(FIXTURE.parent / "keywords.trtpack").manifest.program.custom_ops is None


def test_load_refuses_them_by_default_naming_each_and_how_to_allow(custom_pack):
    path, _ = custom_pack
    with pytest.raises(trtpack.UnsafePackError) as e:
        trtpack.load(path, device="cpu")
    message = str(e.value)
    assert "trtpack_tests::twice" in message
    assert "allow_ops=['trtpack_tests::twice']" in message and "--allow-op" in message
    assert e.value.value == "torch.ops.trtpack_tests.twice.default"
    with pytest.raises(trtpack.UnsafePackError, match="trtpack_tests::twice"):
        trtpack.load(path, device="cpu", allow_ops=["otherlib::*"])


@pytest.mark.parametrize("allow", [["trtpack_tests::twice"], ["trtpack_tests::*"], "*"])
def test_allowed_and_registered_they_run(custom_pack, allow):
    path, model = custom_pack
    pack = trtpack.load(path, device="cpu", allow_ops=allow)
    for args, kwargs in [(CUSTOM_OP.args, {}), *CUSTOM_OP.calls]:
        with torch.no_grad():
            assert_same(pack(*args, **kwargs), model(*args, **kwargs))
    assert isinstance(pack.exported_program, torch.export.ExportedProgram)


def test_the_format_1_4_fixture_loads_with_the_operator_allowed():
    pack = trtpack.load(FIXTURE, device="cpu", allow_ops=["trtpack_tests::*"])
    model, _ = CUSTOM_OP.export()  # seeded: the fixture's weights
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert_same(pack(x), model(x))


def test_an_allowed_operator_that_is_not_registered_is_refused(custom_pack, tmp_path):
    """A fresh process that never imported the library: the op is looked up by name in
    torch's dispatcher and found missing; nothing is imported to find it."""
    path, _ = custom_pack
    script = (
        "import sys, trtpack\n"
        "try:\n"
        "    trtpack.load(sys.argv[1], device='cpu', allow_ops=['trtpack_tests::*'])\n"
        "except trtpack.ProgramError as e:\n"
        "    print('refused:', e)\n"
        "print('models' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "not registered in this process" in r.stdout
    assert "trtpack_tests::twice" in r.stdout and r.stdout.strip().endswith("False")


def test_the_manifest_must_record_what_the_graph_calls(custom_pack, tmp_path):
    """A 1.4 manifest that lists other operators than its graph calls is refused."""
    path, _ = custom_pack
    graph = json.loads(raw_members(path)["program/graph.json"])
    for node in graph["graph_module"]["graph"]["nodes"]:
        if node["target"] == "torch.ops.trtpack_tests.twice.default":
            node["target"] = "torch.ops.trtpack_tests.other.default"
    bad = rewrite(path, tmp_path / "bad.trtpack",
                  replace={"program/graph.json": json.dumps(graph).encode()})  # fmt: skip
    with pytest.raises(trtpack.IntegrityError, match="the manifest records") as e:
        trtpack.load(bad, device="cpu", allow_ops=["trtpack_tests::*"])
    assert e.value.field == "program.custom_ops"


def test_the_cli_allows_them_with_allow_op(custom_pack, capsys):
    path, _ = custom_pack
    assert cli(["run", str(path)]) != 0
    assert "trtpack_tests::twice" in capsys.readouterr().err
    assert cli(["run", str(path), "--allow-op", "trtpack_tests::*"]) == 0
    assert "output" in capsys.readouterr().out


def test_migrate_of_a_torch_export_file_records_them(tmp_path):
    _, ep = CUSTOM_OP.export()
    torch.export.save(ep, tmp_path / "m.pt2")
    info = trtpack.migrate(tmp_path / "m.pt2", tmp_path / "m.trtpack")
    assert info.manifest.program.custom_ops == ("trtpack_tests::twice",)
    with pytest.raises(trtpack.UnsafePackError, match="trtpack_tests::twice"):
        trtpack.load(tmp_path / "m.trtpack", device="cpu")
    trtpack.load(tmp_path / "m.trtpack", device="cpu", allow_ops=["trtpack_tests::twice"])
