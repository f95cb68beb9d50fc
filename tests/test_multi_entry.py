"""Multi-entry-point, stateful packs (format 1.4, issue 24): a real transformers Llama with a
static cache as prefill + decode in one pack, weights once, state shared, reset, a fresh
process; a T5 as stateless encoder + decoder entry points; older packs as one entry point;
declarations checked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import trtpack
from trtpack.errors import ManifestError, SampleMismatchError, TrtpackError
from trtpack.format.weights import parse_safetensors

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
import llm
import seq2seq
from models import AccumulatingStep

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PROMPT, STEPS = [5, 17, 42, 7, 99], 6


@pytest.fixture(scope="module")
def llama_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], list]:
    make = llm.llama()
    programs = llm.export_entry_points(make())
    path = tmp_path_factory.mktemp("llm") / "llm.trtpack"
    trtpack.save(programs, path)
    eager = make()  # a fresh cache over the same weights
    tokens, logits = llm.generate(eager, eager, PROMPT, STEPS)
    return path, tokens, logits


def test_llama_generation_in_a_fresh_process_equals_eager(llama_pack, tmp_path):
    path, tokens, logits = llama_pack
    out = tmp_path / "out.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import llm, trtpack
        pack = trtpack.load({str(path)!r})
        assert pack.entry_points == ("decode", "prefill"), pack.entry_points
        runs = [llm.generate(pack["prefill"], pack["decode"], {PROMPT!r}, {STEPS})]
        pack.reset_state()
        runs.append(llm.generate(pack["prefill"], pack["decode"], {PROMPT!r}, {STEPS}))
        torch.save(runs, {str(out)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for got_tokens, got_logits in torch.load(out):
        assert got_tokens == tokens
        for g, w in zip(got_logits, logits, strict=True):
            assert torch.allclose(g, w, atol=1e-4, rtol=0), (g - w).abs().max()


def test_without_reset_decode_sees_the_previous_state(llama_pack):
    path, tokens, _ = llama_pack
    pack = trtpack.load(path)
    assert pack["prefill"] is pack  # the default entry point: pack(...) calls it, as 1.3 readers
    assert llm.generate(pack["prefill"], pack["decode"], PROMPT, STEPS)[0] == tokens
    # decode alone at position len(PROMPT) now reads prefill's cache, not zeros: a pack whose
    # entry points did not share state would give the same logits after reset as before
    with torch.no_grad():
        pos, tok = torch.tensor([len(PROMPT)]), torch.tensor([[tokens[0]]])
        seen = pack["decode"](input_ids=tok, cache_position=pos)
        pack.reset_state()
        fresh = pack["decode"](input_ids=tok, cache_position=pos)
    assert not torch.allclose(seen, fresh)
    state = pack.manifest.state
    assert state is not None and set(state.entry_points) == {"prefill", "decode"}
    assert state.entry_points["decode"].mutates == state.entry_points["prefill"].mutates
    mutated = state.entry_points["decode"].mutates
    assert len(mutated) == 4 and pack["decode"].mutates == set(mutated)
    for name in mutated:
        prefill_t = pack["prefill"]._program.tensors[name]
        assert prefill_t is pack["decode"]._program.tensors[name]


def test_weights_are_stored_once(llama_pack):
    path, _, _ = llama_pack
    with zipfile.ZipFile(path) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
        stored, metadata = parse_safetensors(z.read("entry_points/decode/weights.safetensors"), "w")
    layout = json.loads(metadata["trtpack.tensors"])
    assert stored == {} and len(layout) > 20  # every tensor referenced, none stored again
    assert sizes["entry_points/decode/weights.safetensors"] < 8192
    assert sizes["program/weights.safetensors"] > 100_000
    assert all(e.get("from") == "program/weights.safetensors" for e in layout.values())


def test_a_false_state_declaration_is_refused(llama_pack, tmp_path):
    path, _, _ = llama_pack
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
    manifest["state"]["entry_points"]["decode"]["mutates"].pop()
    from trtpack.format.manifest import Manifest

    m = Manifest.from_dict(manifest)  # consistent on its own; the program says otherwise
    bad = tmp_path / "bad.trtpack"
    from trtpack.format.container import write_pack

    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}
    write_pack(bad, members, lambda d: m.to_json())  # same members, same digests
    with pytest.raises(ManifestError, match="declares that it writes"):
        trtpack.load(bad)


def test_entry_point_rules():
    make = llm.llama()
    programs = llm.export_entry_points(make())
    other = llm.export_entry_points(make())  # another module: another cache of the same names
    with pytest.raises(TrtpackError, match="each have their own tensor"):
        trtpack.save({"prefill": programs["prefill"], "decode": other["decode"]}, "/dev/null")
    with pytest.raises(TrtpackError, match="identifier"):
        trtpack.save({"pre fill": programs["prefill"]}, "/dev/null")
    with pytest.raises(TrtpackError, match="output_names"):
        trtpack.save(programs, "/dev/null", output_names=["logits"])


@pytest.mark.parametrize("version", ["v1.0", "v1.3", "v1.4"])
def test_single_program_packs_are_entry_point_forward(version):
    with pytest.warns() if version != "v1.4" else _nothing():
        pack = trtpack.load(FIXTURES / version / "keywords.trtpack")
    assert pack.entry_points == ("forward",) and pack["forward"] is pack
    with pytest.raises(ManifestError, match="no entry point 'decode'"):
        pack["decode"]
    pack.reset_state()  # nothing to reset: no error


def test_fixture_of_format_1_4_multi_entry():
    pack = trtpack.load(FIXTURES / "v1.4" / "llama_prefill_decode.trtpack")
    assert pack.entry_points == ("decode", "prefill")
    assert pack.manifest.format_version == (1, 4)
    make = llm.llama()
    eager = make()
    tokens, logits = llm.generate(eager, eager, PROMPT, 3)
    got_tokens, got_logits = llm.generate(pack["prefill"], pack["decode"], PROMPT, 3)
    assert got_tokens == tokens
    assert all(torch.allclose(g, w, atol=1e-4, rtol=0) for g, w in zip(got_logits, logits))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_inspect_shows_entry_points_and_state():
    r = subprocess.run(
        [sys.executable, "-m", "trtpack", "inspect",
         str(FIXTURES / "v1.4" / "llama_prefill_decode.trtpack")],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "== entry point decode\n" in r.stdout
    assert "== entry point prefill (default: the top level)" in r.stdout
    assert "lifted_tensor_0  float32[1, 2, 32, 8]  read by decode,prefill  written by " \
        "decode,prefill" in r.stdout  # fmt: skip


def test_a_pt2_archive_of_two_programs_migrates_to_one_multi_entry_pack(tmp_path):
    from torch.export.pt2_archive._package import package_pt2

    make = llm.llama()
    pt2 = tmp_path / "llm.pt2"
    package_pt2(str(pt2), exported_programs=llm.export_entry_points(make()))
    eager = make()
    tokens, logits = llm.generate(eager, eager, PROMPT, 4)
    out = tmp_path / "llm.trtpack"
    r = subprocess.run([sys.executable, "-m", "trtpack", "migrate", str(pt2), str(out)],
                       capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    with pytest.warns(UserWarning, match="migrated in memory"):
        in_memory = trtpack.load(pt2)
    for pack in (trtpack.load(out), in_memory):
        assert pack.entry_points == ("decode", "prefill")
        for _ in range(2):  # again after reset_state
            got_tokens, got_logits = llm.generate(pack["prefill"], pack["decode"], PROMPT, 4)
            assert got_tokens == tokens
            assert all(torch.allclose(g, w, atol=1e-4, rtol=0) for g, w in zip(got_logits, logits))
            pack.reset_state()
    with zipfile.ZipFile(out) as z:
        stored, _ = parse_safetensors(z.read("entry_points/prefill/weights.safetensors"), "w")
    assert stored == {}  # every tensor of prefill is decode's (the default: first by name)


def test_mlflow_predict_takes_the_entry_point_as_a_param(llama_pack, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    import trtpack.mlflow

    path, tokens, _ = llama_pack
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.create_experiment("me", artifact_location=(tmp_path / "a").as_uri())
        mlflow.set_experiment("me")
        info = trtpack.mlflow.log_model(path, name="llm")
        assert info.metadata["trtpack"]["entry_points"] == ["decode", "prefill"]
        model = mlflow.pyfunc.load_model(info.model_uri)
        n = len(PROMPT)
        prefill = {"input_ids": np.array([PROMPT]), "cache_position": np.arange(n)}
        logits = model.predict(prefill, params={"entry_point": "prefill"})
        assert int(logits[0, -1].argmax()) == tokens[0]
        decode = {"input_ids": np.array([[tokens[0]]]), "cache_position": np.array([n])}
        logits = model.predict(decode, params={"entry_point": "decode"})  # sees prefill's cache
        assert int(logits[0, -1].argmax()) == tokens[1]
        with pytest.raises(mlflow.exceptions.MlflowException, match="no entry point 'nope'"):
            model.predict(decode, params={"entry_point": "nope"})
    finally:
        mlflow.set_tracking_uri(None)


def test_triton_one_model_per_stateless_entry_point_and_shared_state_refused(
    llama_pack, exported, tmp_path
):
    pytest.importorskip("tritonclient")
    from trtpack.errors import RegistryError
    from trtpack.integrations.triton import export_triton

    path, _, _ = llama_pack
    with pytest.raises(RegistryError, match="shares state that is written in place with decode"):
        export_triton(path, tmp_path / "repo", entry_point="prefill")
    with pytest.raises(RegistryError, match="no entry point 'nope'"):
        export_triton(path, tmp_path / "repo", entry_point="nope")
    r = subprocess.run(
        [sys.executable, "-m", "trtpack", "export-triton", str(path), str(tmp_path / "r2"),
         "--entry-point", "decode"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode != 0 and "shares state that is written in place" in r.stderr
    (_, _, ep_a), (case_b, model_b, ep_b) = exported("keywords"), exported("guarded")
    two = tmp_path / "two.trtpack"
    trtpack.save({"keywords": ep_a, "guarded": ep_b}, two)
    for entry, ep in (("keywords", ep_a), ("guarded", ep_b)):
        m = export_triton(two, tmp_path / "repo", entry_point=entry)
        config = (tmp_path / "repo" / f"two_{entry}" / "config.pbtxt").read_text()
        assert f'string_value: "{entry}"' in config
        inputs = [n for n in ep.graph_signature.user_inputs if isinstance(n, str)]
        assert all(f'name: "{i}"' in config for i in inputs), (entry, m)
    pack = trtpack.load(two)
    assert pack.entry_points == ("guarded", "keywords") and pack.manifest.state is None
    torch.testing.assert_close(pack["guarded"](*case_b.args, **case_b.kwargs),
                               model_b(*case_b.args, **case_b.kwargs))  # fmt: skip


def _fixture_manifest() -> dict:
    with zipfile.ZipFile(FIXTURES / "v1.4" / "llama_prefill_decode.trtpack") as z:
        return json.loads(z.read("manifest.json"))


def test_manifest_rules_of_entry_points_and_state():
    from trtpack.errors import UnsafePackError
    from trtpack.format.limits import parse_manifest_json
    from trtpack.format.manifest import Manifest

    m = Manifest.from_dict(_fixture_manifest())
    assert m.entry_point_names == ("decode", "prefill") and m.default_entry_point == "prefill"
    assert m.entry("decode").program.graph == "entry_points/decode/graph.json"
    for edit, match in (
        (lambda d: d["state"]["entry_points"].__setitem__("nope", d["state"]["entry_points"]
                                                           ["decode"]), "does not have"),
        (lambda d: d["state"]["entry_points"]["decode"]["mutates"].append("x"), "not in state"),
        (lambda d: d["state"]["entry_points"]["decode"]["mutated_inputs"].append("y"),
         "not one of its tensor inputs"),
        (lambda d: d["entry_points"].__setitem__("prefill", d["entry_points"]["decode"]),
         "is the default"),
        (lambda d: d["entry_points"]["decode"]["program"].__setitem__("weights", "gone"),
         "not listed in members"),
        (lambda d: d["state"]["tensors"].__setitem__("z", {"dtype": "float32", "shape": [1]}),
         "which no entry point writes"),
    ):  # fmt: skip
        data = _fixture_manifest()
        edit(data)
        with pytest.raises(ManifestError, match=match):
            Manifest.from_dict(data)
    data = _fixture_manifest()
    data["entry_points"] = {f"e{i}": data["entry_points"]["decode"] for i in range(257)}
    with pytest.raises(UnsafePackError, match="number of entry_points"):
        parse_manifest_json(json.dumps(data), "m")


def test_a_reference_to_a_member_that_is_not_the_default_weights_is_refused(tmp_path):
    from trtpack.errors import IntegrityError
    from trtpack.format.container import write_pack
    from trtpack.format.manifest import Manifest

    src = FIXTURES / "v1.4" / "llama_prefill_decode.trtpack"
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist() if n != "manifest.json"}
    # decode's weights name themselves as where its tensors are: no loaded member holds them
    raw = members["entry_points/decode/weights.safetensors"]
    members["entry_points/decode/weights.safetensors"] = raw.replace(
        b"program/weights.safetensors", b"program/weights.safetensorz"
    )
    assert members["entry_points/decode/weights.safetensors"] != raw
    data = _fixture_manifest()
    m = Manifest.from_dict(data)
    bad = tmp_path / "bad.trtpack"

    def manifest(digests):
        from trtpack.writing.assemble import _member

        return m.replace(members={n: _member(d) for n, d in sorted(digests.items())}).to_json()

    write_pack(bad, members, manifest)
    with pytest.raises(IntegrityError, match="is not a loaded program's weights member"):
        trtpack.load(bad)


class _Plain(torch.nn.Module):
    """The custom-operator model's layer without the operator: a second entry point over the
    same weights (the same Linear object, so the same names and tensors)."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x) * 3


def test_custom_ops_and_allow_ops_are_per_entry_point(tmp_path, capsys):
    """Format 1.4 has both: an entry point's program records its own custom operators, and
    load(allow_ops=) / mmap= reach every entry point's program load, not only the default's."""
    from models import CUSTOM_OP

    from trtpack.cli import main as cli

    model = CUSTOM_OP.make()
    x = CUSTOM_OP.args[0]
    plain = torch.export.export(_Plain(model.lin), (x,))
    custom = torch.export.export(model, (x,))
    path = tmp_path / "two.trtpack"
    trtpack.save({"plain": plain, "custom": custom}, path)
    m = trtpack.inspect(path).manifest
    assert m.program.custom_ops is None
    assert m.entry_points["custom"].program.custom_ops == ("trtpack_tests::twice",)
    assert cli(["inspect", str(path)]) == 0
    assert "calls custom operators trtpack_tests::twice" in capsys.readouterr().out
    # the default entry point calls none; the refusal comes from the other one's program
    with pytest.raises(trtpack.UnsafePackError, match="trtpack_tests::twice"):
        trtpack.load(path, device="cpu")
    for mmap in (False, True):
        pack = trtpack.load(path, device="cpu", allow_ops=["trtpack_tests::*"], mmap=mmap)
        assert pack["custom"].allow_ops == ("trtpack_tests::*",)
        with torch.no_grad():
            assert torch.equal(pack["custom"](x), model(x))
            assert torch.equal(pack(x), model.lin(x) * 3)


def test_save_checks_every_entry_points_program_as_load_would(tmp_path):
    """writing/assemble.check_loadable (save = load) covers the entry points' members too: an
    entry point whose graph a reader would refuse is not written."""
    from models import CUSTOM_OP

    from trtpack.writing.assemble import write
    from trtpack.writing.entry_points import check_programs, parts_of_programs

    model = CUSTOM_OP.make()
    x = CUSTOM_OP.args[0]
    programs = {
        "plain": torch.export.export(_Plain(model.lin), (x,)),
        "again": torch.export.export(_Plain(model.lin), (x,)),
    }
    parts, _ = parts_of_programs(check_programs(programs))
    graph = "entry_points/again/graph.json"
    raw = parts.members[graph]
    assert isinstance(raw, bytes) and b"torch.ops.aten.mul.Tensor" in raw
    parts.members[graph] = raw.replace(b"torch.ops.aten.mul.Tensor", b"os.system")
    with pytest.raises(trtpack.UnsafePackError, match="os.system"):
        write(parts, tmp_path / "bad.trtpack")
    assert not (tmp_path / "bad.trtpack").exists()


def test_a_pt2_archive_of_programs_with_a_custom_operator_records_it_per_entry_point(tmp_path):
    """Migrating passes custom operators (it runs nothing) and records them on the entry point
    whose program calls them; loading the migrated pack gates them as save's pack."""
    from models import CUSTOM_OP
    from torch.export.pt2_archive._package import package_pt2

    model = CUSTOM_OP.make()
    x = CUSTOM_OP.args[0]
    pt2 = tmp_path / "two.pt2"
    package_pt2(str(pt2), exported_programs={
        "model": torch.export.export(_Plain(model.lin), (x,)),
        "custom": torch.export.export(model, (x,)),
    })  # fmt: skip
    out = tmp_path / "two.trtpack"
    trtpack.migrate(pt2, out)
    m = trtpack.inspect(out).manifest
    assert m.default_entry_point == "model" and m.program.custom_ops is None
    assert m.entry_points["custom"].program.custom_ops == ("trtpack_tests::twice",)
    with pytest.raises(trtpack.UnsafePackError, match="trtpack_tests::twice"):
        trtpack.load(out, device="cpu")
    pack = trtpack.load(out, device="cpu", allow_ops=["trtpack_tests::twice"])
    with torch.no_grad():
        assert torch.equal(pack["custom"](x), model(x))


SOURCE, T5_STEPS = [5, 17, 42, 7, 99], 8


@pytest.fixture(scope="module")
def t5_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], list]:
    model = seq2seq.t5()
    path = tmp_path_factory.mktemp("t5") / "t5.trtpack"
    trtpack.save(seq2seq.export_entry_points(model), path)
    tokens, logits = seq2seq.eager_generate(model, SOURCE, T5_STEPS)
    return path, tokens, logits


def test_t5_encoder_decoder_generation_in_a_fresh_process_equals_eager(t5_pack, tmp_path):
    # stateless entry points: the decoder takes the encoder's output and the whole target prefix
    # (no cache); the reference is transformers' own generate, which does use its cache
    path, tokens, logits = t5_pack
    assert len(set(tokens)) > 2  # a varied sequence, not one token repeated
    out = tmp_path / "out.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import seq2seq, trtpack
        pack = trtpack.load({str(path)!r})
        assert pack.entry_points == ("decoder", "encoder"), pack.entry_points
        assert pack.manifest.state is None  # nothing mutated: no state to declare
        torch.save(seq2seq.generate(pack["encoder"], pack["decoder"], {SOURCE!r}, {T5_STEPS}),
                   {str(out)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got_tokens, got_logits = torch.load(out)
    assert got_tokens == tokens
    assert len(got_logits) == len(logits) == T5_STEPS
    for g, w in zip(got_logits, logits, strict=True):
        assert torch.allclose(g, w, atol=1e-4, rtol=0), (g - w).abs().max()


def test_t5_weights_are_stored_once_and_shared(t5_pack):
    path, _, _ = t5_pack
    with zipfile.ZipFile(path) as z:
        members = {i.filename: i.file_size for i in z.infolist()}
    second = [n for n in members if n.startswith("entry_points/") and n.endswith(".safetensors")]
    assert len(second) == 1 and members[second[0]] < 16384  # references, not a second copy
    assert members["program/weights.safetensors"] > 150_000
    pack = trtpack.load(path)
    shared = set(pack["encoder"]._program.tensors) & set(pack["decoder"]._program.tensors)
    assert "model.shared.weight" in shared
    for name in shared:
        assert pack["encoder"]._program.tensors[name] is pack["decoder"]._program.tensors[name]


# --- per-entry-point reference samples (issue 24): a small two-entry model, fast ----------


class _Peek(torch.nn.Module):
    """The same Linear and buffer (the same tensors): reads the state, writes nothing."""

    def __init__(self, step: AccumulatingStep) -> None:
        super().__init__()
        self.lin = step.lin
        self.register_buffer("acc", step.acc)

    def forward(self, x):
        return self.lin(x) * 2 + self.acc


def _two_entries() -> tuple[AccumulatingStep, dict]:
    torch.manual_seed(0)
    step = AccumulatingStep()
    x = torch.randn(2, 4)
    return step, {
        "step": torch.export.export(step, (x,)),
        "peek": torch.export.export(_Peek(step), (x,)),
    }


def test_every_entry_point_has_its_samples_checked_from_the_saved_state(tmp_path, capsys):
    from trtpack.cli import main as cli
    from trtpack.samples import check_entry_points

    step, programs = _two_entries()
    path = tmp_path / "two.trtpack"
    trtpack.save(programs, path, samples=3)
    assert torch.equal(step.acc, torch.zeros(4))  # the caller's state is as it was given
    m = trtpack.inspect(path).manifest
    assert m.samples.member == "samples/samples.safetensors" and m.samples.count == 3
    peek = m.entry_points["peek"].samples
    assert peek.member == "entry_points/peek/samples.safetensors" and peek.count == 3
    with zipfile.ZipFile(path) as z:  # stored where the entry point's other members are
        assert {"samples/samples.safetensors", peek.member} <= set(z.namelist())
        stored = safetensors.torch.load(z.read("samples/samples.safetensors"))
    # every sample of the stateful entry point ran from the saved (zero) state
    with torch.no_grad():
        for i in range(3):
            x = stored[f"sample{i}/input/x"]
            want = step.lin(x) + x.sum(0)
            assert torch.allclose(stored[f"sample{i}/output/output"], want, atol=1e-6), i
    pack = trtpack.load(path, device="cpu", check=True)
    assert pack.check_report.samples == 3 and pack["peek"].check_report.samples == 3
    # calls change the state; a check resets it before each sample and leaves it as saved
    x = torch.randn(2, 4)
    with torch.no_grad():
        pack["step"](x)
        pack["step"](x)
    reports = check_entry_points(pack)
    assert sorted(reports) == ["peek", "step"] and all(r.passed for r in reports.values())
    with torch.no_grad():
        assert torch.allclose(pack["peek"](x), step.lin(x) * 2)  # acc back to zero
    # a broken weight (shared by both) fails the check, naming the entry point
    pack["peek"]._program.tensors["lin.weight"].data.add_(1.0)
    with pytest.raises(SampleMismatchError, match="entry point 'peek'") as e:
        check_entry_points(pack, ["peek"])
    assert e.value.entry_point == "peek"
    # the command: every entry point, or the one named
    assert cli(["check", str(path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "entry point peek:" in out and "entry point step:" in out
    assert cli(["check", str(path), "--device", "cpu", "--json"]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["entry_points"]) == ["peek", "step"]
    assert cli(["check", str(path), "--device", "cpu", "--entry-point", "step", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3
    assert cli(["check", str(path), "--device", "cpu", "--entry-point", "nope"]) == 1
    assert "no entry point 'nope'" in capsys.readouterr().err


def test_samples_per_entry_point_as_a_dict(tmp_path, capsys):
    from trtpack.cli import main as cli

    _, programs = _two_entries()
    path = tmp_path / "peek.trtpack"
    calls = [((torch.ones(2, 4),), {})]
    trtpack.save(programs, path, samples={"peek": calls}, tolerances={"program": (1e-4, 1e-4)})
    m = trtpack.inspect(path).manifest
    assert m.samples is None and m.entry_points["peek"].samples.count == 1
    assert m.entry_points["peek"].samples.tolerance.atol == 1e-4
    pack = trtpack.load(path, device="cpu", check=True)
    assert pack.check_report is None and pack["peek"].check_report.passed
    assert cli(["check", str(path), "--device", "cpu", "--entry-point", "step"]) == 1
    assert "no reference samples for entry point 'step'" in capsys.readouterr().err
    with pytest.raises(TrtpackError, match="not entry points"):
        trtpack.save(programs, tmp_path / "x.trtpack", samples={"pek": 1})
    with pytest.raises(TypeError, match="samples"):
        trtpack.save(programs, tmp_path / "x.trtpack", samples=calls)  # whose interface?
    with pytest.raises(TrtpackError, match="give samples too"):
        trtpack.save(programs, tmp_path / "x.trtpack", tolerances={"program": (1, 1)})
    assert not (tmp_path / "x.trtpack").exists()


def test_output_names_per_entry_point(tmp_path):
    """output_names= of a dict save: {entry point: what output_names takes for one program},
    applied before the samples (which store outputs by name); unknown entry points refused."""
    _, programs = _two_entries()
    path = tmp_path / "named.trtpack"
    trtpack.save(
        programs, path, samples=1, output_names={"step": ["total"], "peek": {"output": "seen"}}
    )
    m = trtpack.inspect(path).manifest
    assert [o.name for o in m.outputs] == ["total"]
    assert [o.name for o in m.entry_points["peek"].interface.outputs] == ["seen"]
    with zipfile.ZipFile(path) as z:
        stored = safetensors.torch.load(z.read("entry_points/peek/samples.safetensors"))
    assert "sample0/output/seen" in stored
    pack = trtpack.load(path, device="cpu", check=True)
    assert pack["peek"].check_report.passed and pack.check_report.passed
    only = tmp_path / "only.trtpack"
    trtpack.save(programs, only, output_names={"peek": ["seen"]})  # the others keep theirs
    m = trtpack.inspect(only).manifest
    assert [o.name for o in m.outputs] == ["output"]
    assert [o.name for o in m.entry_points["peek"].interface.outputs] == ["seen"]
    with pytest.raises(TrtpackError, match=r"output_names= names \['pek'\], which are not entry"):
        trtpack.save(programs, tmp_path / "x.trtpack", output_names={"pek": ["seen"]})
    with pytest.raises(TypeError, match="output_names"):
        trtpack.save(programs, tmp_path / "x.trtpack", output_names=["seen"])  # whose outputs?
    with pytest.raises(ManifestError, match="not outputs"):
        trtpack.save(programs, tmp_path / "x.trtpack", output_names={"step": {"nope": "x"}})
    assert not (tmp_path / "x.trtpack").exists()


OTHER_SOURCE = [12, 77, 3, 50, 21, 6, 90]  # longer: run first, its last 2 positions stay stale


@pytest.fixture(scope="module")
def t5_cached_pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    model = seq2seq.t5()
    path = tmp_path_factory.mktemp("t5c") / "t5_cached.trtpack"
    trtpack.save(seq2seq.export_cached_entry_points(model), path)
    eager = {tuple(src): seq2seq.eager_generate(model, src, T5_STEPS)
             for src in (SOURCE, OTHER_SOURCE)}  # fmt: skip
    return path, eager


def test_t5_with_encoder_and_decoder_caches_generates_as_eager_in_a_fresh_process(
    t5_cached_pack, tmp_path
):
    """The encoder writes the cross-attention cache, the one-token decoder reads it and writes
    its static self-attention cache: greedy generation from a fresh process equals
    transformers' own generate, token for token with logits within 1e-4, for a source, for a
    shorter one without reset (the encoder rewrites what the decoder reads; the positions it
    leaves stale are masked), and again after reset_state()."""
    path, eager = t5_cached_pack
    assert all(len(set(tokens)) > 1 for tokens, _ in eager.values())
    assert eager[tuple(SOURCE)][0] != eager[tuple(OTHER_SOURCE)][0]
    m = trtpack.inspect(path).manifest
    assert m.default_entry_point == "encoder" and m.state is not None
    cross = m.state.entry_points["encoder"].mutates
    assert cross == ("t5.cross_k0", "t5.cross_k1", "t5.cross_v0", "t5.cross_v1")
    assert all(m.state.tensors[t].shape == (1, 4, seq2seq.MAX_SOURCE, 8) for t in cross)
    own = m.state.entry_points["decoder"].mutates  # keys and values of 2 layers
    assert len(own) == 4 and not set(own) & set(cross)
    assert all(m.state.tensors[t].shape == (1, 4, seq2seq.MAX_TARGET, 8) for t in own)
    assert set(m.state.entry_points["decoder"].reads) == set(cross) | set(own)
    out = tmp_path / "out.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import seq2seq, trtpack
        pack = trtpack.load({str(path)!r})
        assert pack.entry_points == ("decoder", "encoder"), pack.entry_points
        runs = []
        for source in ({OTHER_SOURCE!r}, {SOURCE!r}, "reset", {SOURCE!r}):
            if source == "reset":
                pack.reset_state()
                continue
            runs.append((source, seq2seq.generate_cached(pack["encoder"], pack["decoder"],
                                                         source, {T5_STEPS})))
        torch.save(runs, {str(out)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    runs = torch.load(out)
    assert len(runs) == 3
    for source, (got_tokens, got_logits) in runs:
        tokens, logits = eager[tuple(source)]
        assert got_tokens == tokens, source
        assert len(got_logits) == len(logits) == T5_STEPS
        for g, w in zip(got_logits, logits, strict=True):
            assert torch.allclose(g, w, atol=1e-4, rtol=0), (source, (g - w).abs().max())


def test_t5_caches_are_shared_and_reset(t5_cached_pack):
    """The decoder reads the very tensors the encoder writes (one object after load); without
    reset a decoder step reads what the last calls left; reset_state() empties both caches."""
    path, eager = t5_cached_pack
    tokens = eager[tuple(SOURCE)][0]
    pack = trtpack.load(path)
    for name in pack.manifest.state.entry_points["encoder"].mutates:
        assert pack["encoder"]._program.tensors[name] is pack["decoder"]._program.tensors[name]
    assert seq2seq.generate_cached(pack["encoder"], pack["decoder"], SOURCE, 3)[0] == tokens[:3]
    call = {"decoder_input_ids": torch.tensor([[tokens[0]]]),
            "encoder_attention_mask": seq2seq.source_mask(len(SOURCE)),
            "cache_position": torch.tensor([1])}  # fmt: skip
    with torch.no_grad():
        seen = pack["decoder"](**call)
        pack.reset_state()
        fresh = pack["decoder"](**call)  # empty caches: no source, no position 0
    assert not torch.allclose(seen, fresh)
    assert any(t.any() for t, _ in pack._state.values())  # the call above wrote position 1
    pack.reset_state()
    assert len(pack._state) == 8 and all(not t.any() for t, _ in pack._state.values())


def test_ranges_for_all_entry_points_or_per_entry_point(tmp_path):
    """ranges= of a dict save: {symbol: range} narrows every entry point; {entry point:
    {symbol: range}} only those named."""
    torch.manual_seed(0)
    step = AccumulatingStep()
    b = torch.export.Dim("b", min=1, max=8)
    programs = {n: torch.export.export(m, (torch.randn(2, 4),), dynamic_shapes=({0: b},))
                for n, m in (("step", step), ("peek", _Peek(step)))}  # fmt: skip
    per = trtpack.save(programs, tmp_path / "per.trtpack", ranges={"peek": {"b": (1, 4)}})
    m = per.manifest
    assert m.symbols["b"].max == 8 and m.entry_points["peek"].interface.symbols["b"].max == 4
    every = trtpack.save(programs, tmp_path / "all.trtpack", ranges={"b": (1, 6)})
    m = every.manifest
    assert m.symbols["b"].max == 6 and m.entry_points["peek"].interface.symbols["b"].max == 6
    with pytest.raises(trtpack.RangeOverrideError, match="no symbol named 'pek'"):
        trtpack.save(programs, tmp_path / "x.trtpack", ranges={"pek": {"b": (1, 4)}})


class _Aliased(torch.nn.Module):
    """Holds Step's buffer, but reads the same tensor through a Python object (as a
    transformers cache object holds its tensors): torch.export lifts that as a constant of
    another name, one storage with the buffer."""

    def __init__(self, step: AccumulatingStep) -> None:
        import types

        super().__init__()
        self.lin = step.lin
        self.register_buffer("acc", step.acc)
        self.box = types.SimpleNamespace(acc=step.acc)

    def forward(self, x):
        return self.lin(x) - self.box.acc


def test_state_reached_under_another_name_is_refused(tmp_path):
    """An entry point whose program holds a state tensor under a second name the default
    does not have would get its own copy (the weights member references a storage only as a
    whole), and read stale state while the declaration says it shares it: refused at save."""
    step = AccumulatingStep()
    x = torch.randn(2, 4)
    aliased = torch.export.export(_Aliased(step), (x,))
    assert set(aliased.constants) == {"lifted_tensor_0"}  # the second name
    programs = {"step": torch.export.export(step, (x,)), "aliased": aliased}
    with pytest.raises(
        trtpack.ProgramError, match=r"'acc' is one storage with \['lifted_tensor_0'\]"
    ):
        trtpack.save(programs, tmp_path / "x.trtpack")
    assert not (tmp_path / "x.trtpack").exists()
