"""Format versions and migrations: artifacts saved without trtpack metadata still load, and
migrate to packs that validate, verify and load to the same outputs."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from models import CASES, Pair, assert_same

import trtpack
from trtpack.format import upgrade as steps
from trtpack.migrations.engine_file import parse_description
from trtpack.migrations.legacy import ENGINE, PRE_PT2, PT2, TORCHSCRIPT, TRTPACK, convert, detect
from trtpack.program.derive import SerializedProgram, parse_expr

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
V0 = FIXTURES / "v0"
EXPORTS = ["keywords", "derived", "with_buffers", "many_outputs"]

torch.utils._pytree._register_namedtuple(Pair, serialized_type_name="models.Pair")


def load_quiet(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pack = trtpack.load(path, **kw)
    return pack, [str(w.message) for w in caught if str(w.message).startswith("trtpack:")]


def edited_zip(src: Path, dst: Path, suffix: str, edit) -> Path:
    """A copy of the zip ``src`` whose member ending in ``suffix`` is ``edit(bytes)``."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            out.writestr(info.filename, edit(data) if info.filename.endswith(suffix) else data)
    return dst


def hostile_pickle(marker: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """A pickle that creates ``marker`` when it is unpickled."""

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Evil(), protocol=protocol)


def run_case(pack, name):
    case = CASES[name]
    model, _ = case.export()
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        with torch.no_grad():
            assert_same(pack(*args, **kwargs), model(*args, **kwargs))


# --- what a file is -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("torch_export/keywords.pt2", PT2),
        ("torch_export/keywords_pre27.pt2", PRE_PT2),
        ("torch_tensorrt/net_whole.ep", PT2),
        ("engine/keywords.plan", ENGINE),
        ("torchscript/one_tensor.ts", TORCHSCRIPT),
        ("../v1.0/keywords.trtpack", TRTPACK),
    ],
)
def test_detect(path, kind):
    assert detect(V0 / path) == kind


def test_unknown_files_name_what_they_found(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00\x01GGUF" + bytes(100))
    with pytest.raises(
        trtpack.NotAPackError, match=r"none of the known kinds .* starts with b'\\x00\\x01GGUF"
    ):
        trtpack.load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(
        trtpack.NotAPackError, match=r"a zip, but none of the known kinds.*readme.txt"
    ):
        trtpack.load(other)


# --- torch.export files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPORTS)
def test_torch_export_file_loads_with_a_notice(name):
    pack, notes = load_quiet(V0 / "torch_export" / f"{name}.pt2", device="cpu")
    assert len(notes) == 1 and "without trtpack metadata; migrated in memory" in notes[0]
    run_case(pack, name)


@pytest.mark.parametrize("name", EXPORTS)
def test_torch_export_file_migrates(name, tmp_path):
    out = tmp_path / f"{name}.trtpack"
    info = trtpack.migrate(V0 / "torch_export" / f"{name}.pt2", out)
    assert info.manifest.format_version == trtpack.FORMAT_VERSION
    assert trtpack.verify(out).digest == info.digest
    pack, notes = load_quiet(out, device="cpu")
    assert notes == []
    run_case(pack, name)
    again = tmp_path / "again.trtpack"
    trtpack.migrate(V0 / "torch_export" / f"{name}.pt2", again)
    assert again.read_bytes() == out.read_bytes()  # deterministic


@pytest.mark.parametrize("name", EXPORTS)
def test_json_reading_matches_torch(name):
    """The torch-free reading of a PT2 archive gives the manifest that trtpack.program.derive gives
    for the same program loaded by torch."""
    from trtpack.program.serialize import derive_interface

    path = V0 / "torch_export" / f"{name}.pt2"
    with zipfile.ZipFile(path) as z:
        model = json.loads(z.read(f"{name}/models/model.json"))
    iface, _ = SerializedProgram(model, where=name).interface()
    assert iface == derive_interface(torch.export.load(path))


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_and_migrate_of_the_same_program_give_the_same_interface_bytes(
    name, exported, tmp_path
):
    """One derivation: ``save(ep)`` and ``migrate`` of ``torch.export.save(ep)`` describe the
    program with byte-identical manifest fields (everything but producer, members, program)."""
    _, _, ep = exported(name)
    saved = trtpack.save(ep, tmp_path / "saved.trtpack").manifest
    torch.export.save(ep, tmp_path / "m.pt2")  # every test model saves: any failure fails
    migrated = trtpack.migrate(tmp_path / "m.pt2", tmp_path / "migrated.trtpack").manifest

    def described(m):
        data = m.to_dict()
        return {k: v for k, v in data.items() if k not in ("producer", "members", "program")}

    assert json.dumps(described(saved), sort_keys=True) == json.dumps(
        described(migrated), sort_keys=True
    )


def test_migration_reads_no_torch_and_no_pickle(tmp_path):
    out = tmp_path / "k.trtpack"
    code = (
        "import sys, pickle, trtpack;"
        "pickle.loads = pickle.load = None;"
        "trtpack.migrate(sys.argv[1], sys.argv[2]);"
        "trtpack.migrate(sys.argv[3], sys.argv[2] + '.trt');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    r = subprocess.run([sys.executable, "-c", code, str(V0 / "torch_export" / "with_buffers.pt2"),
                        str(out), str(V0 / "torch_tensorrt" / "net_partitioned.ep")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert trtpack.verify(out).manifest.program is not None


def test_pre_27_layout_loads_and_migrates(tmp_path):
    pack, notes = load_quiet(V0 / "torch_export" / "keywords_pre27.pt2", device="cpu")
    assert "pre-2.7 layout" in notes[0]
    run_case(pack, "keywords")
    out = tmp_path / "pre27.trtpack"
    trtpack.migrate(V0 / "torch_export" / "keywords_pre27.pt2", out)
    run_case(trtpack.load(out, device="cpu"), "keywords")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pre_27_layout_with_a_hostile_pickle(tmp_path):
    """Its weights are pickles: read with torch's weights_only loader, never less."""

    evil = hostile_pickle(tmp_path / "PWNED")
    bad = edited_zip(V0 / "torch_export" / "keywords_pre27.pt2", tmp_path / "evil.pt2",
                     "serialized_state_dict.pt", lambda _: evil)  # fmt: skip
    with pytest.raises(trtpack.MigrationError, match="weights_only loader refuses"):
        trtpack.load(bad)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_legacy_file(tmp_path):
    data = (V0 / "torch_export" / "keywords.pt2").read_bytes()
    cut = tmp_path / "cut.pt2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(trtpack.IntegrityError, match="truncated"):
        trtpack.load(cut)
    with pytest.raises(trtpack.IntegrityError, match="truncated"):
        trtpack.migrate(cut, tmp_path / "x.trtpack")


# --- torch_tensorrt .ep files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "engines", "whole"), [("net_whole", 1, True), ("net_partitioned", 2, False)]
)
def test_torch_tensorrt_file_migrates(name, engines, whole, tmp_path):
    src = V0 / "torch_tensorrt" / f"{name}.ep"
    out = tmp_path / f"{name}.trtpack"
    info = trtpack.migrate(src, out)
    m = info.manifest
    assert m.program is None and [i.name for i in m.inputs] == ["x", "bias"]
    (v,) = m.engines
    assert len(v.engines) == engines and v.whole_graph is whole
    assert v.target.flavor == "tensorrt_rtx" and v.engines[0].abi_version == "10"
    assert v.engines[0].settings["compilation"]["min_block_size"] == 1
    # the plan bytes are the ones torch_tensorrt stored (base64 inside its pickle): raw now
    with zipfile.ZipFile(out) as z:
        for e in v.engines:
            assert z.read(e.member)[:4] == b"vtrt"
    trtpack.verify(out)
    with pytest.raises(
        trtpack.NoUsableEngineError, match="holds engines only, and none can run here"
    ):
        trtpack.load(out)


def test_engine_constant_pickle_is_restricted(tmp_path):
    """An engine constant that asks for anything but torch_tensorrt's engine list is refused,
    and nothing is executed."""

    evil = hostile_pickle(tmp_path / "PWNED", protocol=2)
    bad = edited_zip(V0 / "torch_tensorrt" / "net_whole.ep", tmp_path / "evil.ep",
                     "opaque_obj_0", lambda _: evil)  # fmt: skip
    with pytest.raises(
        trtpack.EngineError, match=r"engine constant was refused: .* is not allowed"
    ):
        trtpack.migrate(bad, tmp_path / "x.trtpack")
    assert not (tmp_path / "PWNED").exists()


def test_unknown_torch_tensorrt_abi(tmp_path):
    bad = edited_zip(V0 / "torch_tensorrt" / "net_whole.ep", tmp_path / "abi.ep", "opaque_obj_0",
                     lambda d: d.replace(b"X\x02\x00\x00\x0010", b"X\x02\x00\x00\x0042"))  # fmt: skip
    with pytest.raises(
        trtpack.EngineError, match=r"ABI '42' is not one trtpack reads \(known: 6, 7, 8, 9, 10\)"
    ):
        trtpack.migrate(bad, tmp_path / "x.trtpack")


# --- bare engines ----------------------------------------------------------------------------


def test_input_description_compact_and_json():
    with pytest.raises(trtpack.MigrationError, match="describe the engine's outputs too"):
        parse_description(["x:float32[3]"])  # no invented output
    iface = parse_description(["x:float32[batch=1..64@8,3,224,224]", "mask:float32[batch,10]",
                               "k:int64[1..16]"], ["y:float32[batch,?]"])  # fmt: skip
    assert [(o.name, o.shape) for o in iface.outputs] == [("y", ("batch", "?"))]
    assert [i.shape for i in iface.inputs] == [("batch", 3, 224, 224), ("batch", 10), ("k_dim0",)]
    assert iface.symbols["batch"] == trtpack.format.manifest.Symbol(1, 64, 8, "override")
    assert iface.symbols["k_dim0"] == trtpack.format.manifest.Symbol(1, 16, 16, "rule")
    same = parse_description([{"name": "x", "dtype": "float32", "shape": [{"name": "batch", "min": 1, "opt": 8, "max": 64}, 3, 224, 224]},
                              {"name": "mask", "dtype": "float32", "shape": ["batch", 10]},
                              {"name": "k", "dtype": "int64", "shape": [{"min": 1, "max": 16}]}],
                             [{"name": "y", "dtype": "float32", "shape": ["batch", "?"]}])  # fmt: skip
    assert same == iface


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x:float32", "expected NAME:DTYPE\\[DIMS\\]"),
        ("x:float99[3]", "unknown dtype 'float99'"),
        ("x:float32[5..2]", "needs min <= opt <= max, got 5..2@2"),
        ("x:float32[1..8@9]", "needs min <= opt <= max"),
        ("x:float32[batch,3]", "'batch' names no dim defined before"),
        ("x:float32[1.5]", "cannot read dim '1.5'"),
    ],
)
def test_bad_input_descriptions(spec, message):
    with pytest.raises(trtpack.MigrationError, match=message):
        parse_description([spec])
    with pytest.raises(trtpack.MigrationError, match="input names must be unique"):
        parse_description(["x:float32[3]", "x:float32[4]"])


def test_bare_engine_packs_with_its_description(tmp_path):
    out = tmp_path / "engine.trtpack"
    description = json.loads((V0 / "engine" / "keywords.inputs.json").read_text())
    info = trtpack.migrate(V0 / "engine" / "keywords.plan", out, inputs=description["inputs"],
                           outputs=description["outputs"])  # fmt: skip
    (v,) = info.manifest.engines
    assert v.whole_graph and v.target.compute_capabilities == ("8.6",)
    assert [b.name for b in v.engines[0].inputs] == ["x", "mask", "bias"]
    assert v.engines[0].inputs[0].profile == ((1, 4, 64), (6, 6, 6))
    with zipfile.ZipFile(out) as z:
        assert z.read(v.engines[0].member) == (V0 / "engine" / "keywords.plan").read_bytes()
    with pytest.raises(trtpack.MigrationError, match="cannot tell its inputs without a GPU"):
        trtpack.load(V0 / "engine" / "keywords.plan")


def test_engine_whose_size_does_not_match_its_header(tmp_path):
    plan = (V0 / "engine" / "keywords.plan").read_bytes()
    bad = tmp_path / "short.plan"
    bad.write_bytes(plan[:-100])
    with pytest.raises(
        trtpack.EngineError, match=rf"header says {len(plan)} bytes, it has {len(plan) - 100}"
    ):
        trtpack.migrate(bad, tmp_path / "x.trtpack", inputs=["x:float32[1..64,6]"])


def test_cli_pack_and_migrate(tmp_path):
    run = [sys.executable, "-m", "trtpack"]
    out = tmp_path / "p.trtpack"
    r = subprocess.run([*run, "pack", str(V0 / "engine" / "keywords.plan"), "--input-spec",
                        "x:float32[batch=1..64@4,6]", "--input-spec", "mask:float32[batch,6]",
                        "--input-spec", "bias:float32[6]", "--output-spec", "output0:float32[batch,6]",
                        "-o", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert trtpack.inspect(out).manifest.engines[0].name == "rtx_sm86"
    r = subprocess.run([*run, "inspect", str(V0 / "torch_export" / "keywords.pt2")],
                       capture_output=True, text=True)  # fmt: skip
    assert (
        r.returncode == 0
        and "a torch.export program (PT2 archive), without trtpack metadata" in r.stdout
    )
    assert "would be migrated" in r.stdout and "x     args[0]" in r.stdout
    r = subprocess.run([*run, "inspect", str(V0 / "torch_tensorrt" / "net_partitioned.ep")],
                       capture_output=True, text=True)  # fmt: skip
    assert "torch_tensorrt ExportedProgram with 2 engine(s), ABI 10" in r.stdout
    migrated = tmp_path / "m.trtpack"
    r = subprocess.run([*run, "migrate", str(V0 / "torch_export" / "keywords.pt2"), str(migrated)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "trtpack format 1.4" in r.stdout
    r = subprocess.run([*run, "migrate", str(V0 / "torch_export" / "keywords.pt2"), str(migrated)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "exists; pass --force to replace it" in r.stderr
    r = subprocess.run(
        [*run, "migrate", str(migrated), str(migrated)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "is the input file; pass --in-place to replace it" in r.stderr
    r = subprocess.run([*run, "migrate", str(migrated), str(migrated), "--in-place"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_torchscript_is_refused_with_what_to_do():
    with pytest.raises(
        trtpack.MigrationError, match=r"TorchScript .* export the model with torch.export"
    ):
        trtpack.load(V0 / "torchscript" / "one_tensor.ts")


# --- format versions ----------------------------------------------------------------------------


def test_format_1_0_fixtures_load():
    """Format 1.0 recorded no guards: they are read from the pack's program, so the upgraded
    pack checks calls as a 1.1 pack of the same model does."""
    pack, notes = load_quiet(FIXTURES / "v1.0" / "keywords.trtpack", device="cpu")
    version = ".".join(map(str, trtpack.FORMAT_VERSION))
    assert len(notes) == 1 and f"is format 1.0, upgraded in memory to {version}" in notes[0]
    run_case(pack, "keywords")
    current = trtpack.inspect(FIXTURES / "v1.1" / "keywords.trtpack").manifest
    assert pack.manifest.guards == current.guards
    assert [g.expr for g in current.guards] == ["x.shape[0] == mask.shape[0]"]
    engines, _ = load_quiet(FIXTURES / "v1.0" / "keywords_engines.trtpack", device="cpu")
    assert engines.backend == "exported_program" and engines.fallback_reason


def test_format_1_1_fixtures_load_and_migrate(tmp_path):
    """1.1 packs (no samples) load as they are and migrate to the current format."""
    for name in ("keywords", "keywords_engines", "guarded"):
        path = FIXTURES / "v1.1" / f"{name}.trtpack"
        out = trtpack.migrate(path, tmp_path / f"{name}.trtpack")
        assert out.manifest.format_version == trtpack.FORMAT_VERSION
        assert out.manifest.samples is None
        assert out.manifest.interface == trtpack.inspect(path).manifest.interface
    pack, notes = load_quiet(FIXTURES / "v1.1" / "keywords.trtpack", device="cpu")
    assert "is format 1.1, upgraded in memory" in notes[0]
    run_case(pack, "keywords")


def test_every_older_version_has_a_step_and_a_fixture():
    """The rule: each format version ever released (schema/schema.lock.json) keeps a fixture
    directory of packs that load, and every version older than the current one has a
    migration chain to it. Changing the format without both fails here."""
    lock = json.loads((ROOT / "schema" / "schema.lock.json").read_text())
    current = trtpack.FORMAT_VERSION
    for version in lock:
        major, minor = (int(p) for p in version.split("."))
        folder = FIXTURES / f"v{version}"
        packs = sorted(folder.glob("*.trtpack"))
        assert packs, f"no fixture of format {version} in {folder}"
        for path in packs:
            assert trtpack.inspect(path).manifest.format_version == current
        if (major, minor) < current:
            assert steps.chain((major, minor)), f"no migration step from format {version}"
    assert f"{current[0]}.{current[1]}" in lock


def test_the_step_chain_composes(monkeypatch, small_pack, tmp_path):
    """Steps compose from a pack's version to the current one, member renames included, and
    the reader applies them in memory. (1.0 is the first version: the chain is exercised
    here with two steps of a pretend 1.2, from a 1.0 fixture.)"""
    small_pack = tmp_path / "v1_0.trtpack"
    small_pack.write_bytes((FIXTURES / "v1.0" / "keywords.trtpack").read_bytes())

    def add_field(m):
        return {**m, "metadata": {**m["metadata"], "added_in": "1.1"}}

    def rename_graph(m):
        m = json.loads(json.dumps(m))
        m["members"]["program/model.json"] = m["members"].pop("program/graph.json")
        m["program"]["graph"] = "program/model.json"
        return m

    chain = {
        (1, 0): steps.Step((1, 0), (1, 1), add_field, summary="metadata field"),
        (1, 1): steps.Step((1, 1), (1, 2), rename_graph, {"program/model.json": "program/graph.json"},
                           summary="graph member renamed"),
    }  # fmt: skip
    import trtpack.format.manifest
    import trtpack.reading
    import trtpack.writing.assemble

    for module in (trtpack.format.manifest, trtpack.reading, trtpack.writing.assemble, steps):
        monkeypatch.setattr(module, "FORMAT_VERSION", (1, 2))
    monkeypatch.setattr(steps, "STEPS", chain)
    data = json.loads(zipfile.ZipFile(small_pack).read("manifest.json"))
    upgraded, renames, notes = steps.upgrade(data)
    assert upgraded["format_version"] == [1, 2] and upgraded["metadata"]["added_in"] == "1.1"
    assert renames == {"program/model.json": "program/graph.json"}
    assert notes == ["1.0 -> 1.1: metadata field", "1.1 -> 1.2: graph member renamed"]
    assert data["format_version"] == [1, 0]  # pure: the input is untouched
    info = trtpack.inspect(small_pack)
    assert info.upgraded_from == (1, 0) and info.manifest.program.graph == "program/model.json"
    _, notes = load_quiet(small_pack, device="cpu")
    assert notes and "is format 1.0, upgraded in memory to 1.2" in notes[0]
    out = tmp_path / "upgraded.trtpack"
    trtpack.migrate(small_pack, out)
    assert "program/model.json" in zipfile.ZipFile(out).namelist()
    monkeypatch.setattr(steps, "STEPS", {})
    with pytest.raises(
        trtpack.MigrationError, match="no migration step from format 1.0 towards 1.2"
    ):
        trtpack.inspect(small_pack)


def test_expressions_as_torch_writes_them():
    e = parse_expr("Add(Mul(Integer(2), Symbol('s7', positive=True, integer=True)), Integer(1))")
    assert (e.terms, e.const) == ({"s7": 2}, 1)
    assert parse_expr("2*s7 - 3").terms == {"s7": 2} and parse_expr("2*s7 - 3").const == -3
    assert parse_expr("Mul(Symbol('a'), Symbol('b'))").terms is None
    assert parse_expr("__import__('os')").terms is None  # parsed, never evaluated


def test_convert_refuses_a_description_for_a_program():
    with pytest.raises(trtpack.MigrationError, match="describes its own inputs"):
        convert(V0 / "torch_export" / "keywords.pt2", inputs=["x:float32[3]"])
