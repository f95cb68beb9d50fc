"""trtpack audit: real files (torch.export.save, torch.save with a hostile global, the
torch_tensorrt .ep fixture, plans, ONNX, packs) audited without loading them."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import pytest

import trtpack
from tests.test_torch_free import FIXTURES
from trtpack.checks.audit import AMPLIFICATION_UNUSED, audit
from trtpack.cli.commands import main
from trtpack.engines.packed_info import pickle_globals

torch = pytest.importorskip("torch")


class _Hostile:
    """Pickles as a call of os.system: what a malicious file does."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/trtpack-audit-was-executed",))


def _rewrite(src, dst, replace=None, add=None):
    """A copy of zip ``src`` with members replaced (bytes, or a function of the old bytes)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)
        for name, data in add.items():
            zout.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.l(x).relu()

    path = tmp_path_factory.mktemp("audit") / "m.pt2"
    torch.export.save(torch.export.export(M(), (torch.randn(2, 4),)), path)
    return path


def test_pickle_globals_lists_imports_without_running_anything(tmp_path):
    for proto in range(6):
        data = pickle.dumps([_Hostile(), {"a": 1}], protocol=proto)
        assert pickle_globals(data) == [f"{os.system.__module__}.system"]
    assert not os.path.exists("/tmp/trtpack-audit-was-executed")
    with pytest.raises(trtpack.EngineError, match="not a readable pickle"):
        pickle_globals(b"\x80\x04\x95garbage")


def test_a_plain_pt2_has_only_its_sample_inputs_pickle(pt2):
    report = audit(pt2)
    assert report.kind.startswith("PT2 archive")
    rules = {f.rule: f for f in report.findings}
    assert set(rules) == {"pickle"}, report.findings
    assert rules["pickle"].member.endswith("sample_inputs/model.pt:archive/data.pkl")
    assert "torch._utils._rebuild_tensor_v2" in rules["pickle"].details["globals"]
    assert report.worst == "low"


def test_a_hostile_pickle_in_a_pt2_is_named_with_its_global(pt2, tmp_path, capsys):
    buf = tmp_path / "evil_inputs.pt"
    torch.save(((torch.ones(2, 4), _Hostile()), {}), buf)
    evil = _rewrite(pt2, tmp_path / "evil.pt2", {"sample_inputs/model.pt": buf.read_bytes()})
    report = audit(evil)
    (f,) = [f for f in report.findings if f.rule == "pickle-code"]
    assert f.severity == "high" and "posix.system" in f.message
    assert main(["audit", str(evil)]) == 2  # worst >= high (the default --fail-on)
    assert main(["audit", str(evil), "--fail-on", "never"]) == 0
    assert main(["audit", str(pt2), "--fail-on", "low"]) == 2
    assert main(["audit", str(pt2), "--fail-on", "medium"]) == 0
    capsys.readouterr()
    assert main(["audit", str(evil), str(pt2), "--json", "--fail-on", "never"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [f["worst"] for f in data["files"]] == ["high", "low"]
    assert not os.path.exists("/tmp/trtpack-audit-was-executed")


def test_graph_code_and_shared_objects(pt2, tmp_path):
    def retarget(raw: bytes) -> bytes:
        data = json.loads(raw)
        data["graph_module"]["graph"]["nodes"][0]["target"] = "os.system"
        return json.dumps(data).encode()

    bad = _rewrite(pt2, tmp_path / "code.pt2", {"models/model.json": retarget},
                   add={"m/data/aotinductor/model/model.so": b"\x7fELF" + bytes(60)})  # fmt: skip
    rules = {f.rule: f for f in audit(bad).findings}
    assert rules["graph-code"].severity == "high" and "os.system" in rules["graph-code"].message
    assert rules["shared-object"].severity == "high"
    assert rules["shared-object"].member == "m/data/aotinductor/model/model.so"


def _amplified(pt2, path, extra: int):
    """The proof of concept's shape: tensor_values entries no node uses."""

    def inflate(raw: bytes) -> bytes:
        data = json.loads(raw)
        values = data["graph_module"]["graph"]["tensor_values"]
        meta = next(iter(values.values()))
        for i in range(extra):
            values[f"unused_{i}"] = meta
        return json.dumps(data).encode()

    return _rewrite(pt2, path, {"models/model.json": inflate})


def test_unused_tensor_values_are_reported_quickly(pt2, tmp_path):
    few = audit(_amplified(pt2, tmp_path / "few.pt2", 3))
    (f,) = [f for f in few.findings if f.rule == "unused-tensor-values"]
    assert (f.severity, f.details["unused"]) == ("low", 3)
    path = _amplified(pt2, tmp_path / "amp.pt2", 76_000)  # ~17 MB of graph JSON
    assert os.path.getsize(path) > 15_000_000
    start = time.perf_counter()
    report = audit(path)
    seconds = time.perf_counter() - start
    (f,) = [f for f in report.findings if f.rule == "unused-tensor-values"]
    assert f.severity == "high" and f.details["unused"] == 76_000 >= AMPLIFICATION_UNUSED
    assert seconds < 10, seconds  # measured ~0.5 s here; torch.export.load takes far longer


def test_members_over_the_read_cap_are_reported_not_read(pt2, monkeypatch):
    import trtpack.checks.audit as audit_module

    monkeypatch.setattr(audit_module, "MAX_READ", 1_000)  # model.json is ~3.7 KB
    (f,) = [f for f in audit(pt2).findings if f.rule == "oversized-member"]
    assert f.severity == "high" and f.member.endswith("models/model.json")


def test_a_pre_27_archive_gets_the_graph_check_too(tmp_path):
    src = FIXTURES / "v0" / "torch_export" / "keywords_pre27.pt2"
    report = audit(src)
    assert report.kind == "torch.export archive (before torch 2.7)"
    assert {f.rule for f in report.findings} == {"pickle"}  # three torch.save zips

    def retarget(raw: bytes) -> bytes:
        data = json.loads(raw)
        data["graph_module"]["graph"]["nodes"][0]["target"] = "builtins.eval"
        return json.dumps(data).encode()

    bad = _rewrite(src, tmp_path / "bad.pt2", {"serialized_exported_program.json": retarget})
    (f,) = [f for f in audit(bad).findings if f.rule == "graph-code"]
    assert "builtins.eval" in f.message


def test_torch_tensorrt_ep_engine_is_read_by_the_restricted_unpickler():
    report = audit(FIXTURES / "v0" / "torch_tensorrt" / "net_whole.ep")
    rules = {f.rule: f for f in report.findings}
    assert rules["pickle-trt-engine"].severity == "medium"
    assert rules["pickle-trt-engine"].details["globals"] == [
        "torch_tensorrt.dynamo.runtime._TRTEngine._reconstruct_trt_engine"
    ]
    assert rules["plan"].message.startswith("tensorrt_rtx 1.6.1.120 plan")
    assert report.worst == "medium"


def test_plans(tmp_path):
    rtx = audit(FIXTURES / "v0" / "engine" / "keywords.plan")
    assert [f.rule for f in rtx.findings] == ["plan"] and rtx.worst == "info"
    standard = tmp_path / "s.plan"
    standard.write_bytes(
        b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes([10, 13, 3, 9]) + bytes(36)
    )
    rules = {f.rule: f for f in audit(standard).findings}
    assert rules["plan-host-code"].severity == "medium"
    truncated = tmp_path / "t.plan"
    truncated.write_bytes((FIXTURES / "v0" / "engine" / "keywords.plan").read_bytes()[:100])
    assert audit(truncated).findings[0].rule == "refused"


def test_packs_signature_members_and_host_code(tmp_path):
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pack = tmp_path / "k.trtpack"
    shutil.copy(FIXTURES / "v1.3" / "keywords_engines.trtpack", pack)
    rules = {f.rule: f for f in audit(pack).findings}
    assert rules["unsigned"].severity == "medium" and "no-pickle" in rules
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    trtpack.sign(pack, priv)
    assert "signature-unchecked" in {f.rule for f in audit(pack).findings}
    checked = audit(pack, key=pub)
    assert "signature" in {f.rule for f in checked.findings} and checked.worst == "info"
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    wrong = tmp_path / "o.pub"
    wrong.write_bytes(other.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    assert audit(pack, key=wrong).worst == "high"
    # a flipped byte in the engine member
    raw = bytearray(pack.read_bytes())
    at = raw.find(b"vtrt") + 200
    raw[at] ^= 1
    tampered = tmp_path / "t.trtpack"
    tampered.write_bytes(raw)
    assert "digest-mismatch" in {f.rule for f in audit(tampered).findings}
    # host code: a version-compatible plan with the lean runtime embedded
    plan = tmp_path / "vc.plan"
    plan.write_bytes(b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes([10, 13, 3, 9]) + bytes(36)
                     + b"\0".join([b"x", b"mask", b"bias", b"output0"]) + bytes(64))  # fmt: skip
    vc = tmp_path / "vc.trtpack"
    shutil.copy(FIXTURES / "v1.3" / "keywords.trtpack", vc)
    trtpack.add_engine(vc, plan, variant="vc", version_compatible="lean_embedded")
    (f,) = [f for f in audit(vc).findings if f.rule == "plan-host-code"]
    assert "variant vc" in f.message and f.severity == "medium"


def test_onnx_external_data_escape_and_epcontext(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../../etc/passwd")
    ep = helper.make_node("EPContext", ["x"], ["y"], name="trt_ctx", domain="com.microsoft",
                          embed_mode=1, ep_cache_context=b"ftrt...")  # fmt: skip
    graph = helper.make_graph([ep], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])  # fmt: skip
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    rules = {f.rule: f for f in audit(path).findings}
    assert rules["external-data-escape"].severity == "high"
    assert rules["epcontext"].severity == "medium" and "embedded" in rules["epcontext"].message
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    assert audit(junk).findings[0].rule == "refused"


def test_sarif_output(pt2, tmp_path, capsys):
    """The SARIF 2.1.0 spec's required fields (the OASIS JSON schema is not vendored here;
    with TRTPACK_SARIF_SCHEMA pointing at sarif-schema-2.1.0.json it is validated too)."""
    assert main(["audit", str(pt2), str(FIXTURES / "v0" / "torch_tensorrt" / "net_whole.ep"),
                 "--sarif", "--fail-on", "never"]) == 0  # fmt: skip
    log = json.loads(capsys.readouterr().out)
    assert log["version"] == "2.1.0" and len(log["runs"]) == 1
    run = log["runs"][0]
    assert run["tool"]["driver"]["name"]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    for result in run["results"]:
        assert result["message"]["text"] and result["level"] in ("note", "warning", "error")
        assert rules[result["ruleIndex"]] == result["ruleId"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert {r["ruleId"] for r in run["results"]} >= {"pickle", "pickle-trt-engine"}
    schema_path = os.environ.get("TRTPACK_SARIF_SCHEMA")
    if schema_path:
        jsonschema = pytest.importorskip("jsonschema")
        schema = json.loads(open(schema_path).read())
        jsonschema.Draft4Validator(schema).validate(log)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(schema).validate({**log, "version": "2.0"})


def test_audit_runs_torch_free_and_errors_are_one_line(pt2, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from trtpack.cli.commands import main\n"
            "sys.exit(main(['audit', '--fail-on', 'never', *sys.argv[1:]]))")  # fmt: skip
    files = [str(pt2), str(FIXTURES / "v0" / "torch_tensorrt" / "net_whole.ep"),
             str(FIXTURES / "v0" / "engine" / "keywords.plan"),
             str(FIXTURES / "v1.3" / "keywords.trtpack")]  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "pickle-trt-engine" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "trtpack", "audit", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 1 and missing.stderr.startswith("trtpack: error: ")


def test_damaged_files_give_findings_never_crashes(pt2, tmp_path):
    """Truncations and flipped bytes anywhere: a report (often one 'refused' finding), never an
    exception other than a trtpack error, and quickly."""
    import random

    raw = pt2.read_bytes()
    rng = random.Random(0)
    cuts = [rng.randrange(len(raw)) for _ in range(15)]
    for i, cut in enumerate(cuts):
        for data in (raw[:cut], raw[:cut] + bytes([raw[cut] ^ 0xFF]) + raw[cut + 1 :]):
            path = tmp_path / f"d{i}.pt2"
            path.write_bytes(data)
            start = time.perf_counter()
            report = audit(path)
            assert time.perf_counter() - start < 5
            assert all(f.severity in ("info", "low", "medium", "high") for f in report.findings)
