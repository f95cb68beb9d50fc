"""trtpack preflight: what load would pick on described machines, by load's own decision."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

import trtpack
from tests.test_torch_free import FIXTURES
from trtpack.cli.commands import main
from trtpack.engines.select import parse_target


def _plan(path, version=(10, 13, 3, 9)):
    """A standard TensorRT plan header naming the keywords pack's bindings (all trtpack reads
    of a standard plan without a GPU)."""
    header = b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes(version) + bytes(36)
    path.write_bytes(header + b"\0".join([b"x", b"mask", b"bias", b"output0"]) + bytes(64))
    return path


@pytest.fixture(scope="module")
def fleet_pack(tmp_path_factory):
    """Three variants: TensorRT-RTX for sm 8.0, a plain TensorRT 10.13 plan, and a
    version-compatible TensorRT 10.13 plan with the lean runtime embedded (host code)."""
    tmp = tmp_path_factory.mktemp("preflight")
    pack = tmp / "fleet.trtpack"
    shutil.copy(FIXTURES / "v1.3" / "keywords_engines.trtpack", pack)
    trtpack.add_engine(pack, _plan(tmp / "plain.plan"), variant="trt_plain")
    trtpack.add_engine(pack, _plan(tmp / "vc.plan"), variant="trt_vc",
                       version_compatible="lean_embedded")  # fmt: skip
    return pack


TARGETS = {
    "sm=8.0,rtx=1.6.1": ("rtx_sm80", "torch_tensorrt", "engine"),
    "sm=8.9,trt=10.13,os=linux,arch=x86_64": ("trt_plain", "torch_tensorrt", "engine"),
    "sm=8.9,trt=10.14": (None, None, "program"),
    "sm=8.9,lean=11.4,host_code=yes": ("trt_vc", "tensorrt_lean", "engine"),
    "sm=none": (None, None, "program"),
}


def test_each_target_gets_a_variant_or_the_program_with_reasons(fleet_pack):
    reports = trtpack.preflight(fleet_pack, list(TARGETS))
    for r in reports:
        assert (r.chosen, r.runtime, r.outcome) == TARGETS[r.target], r
        others = {"rtx_sm80", "trt_plain", "trt_vc"} - {r.chosen} - set(r.fallbacks)
        assert set(r.refused) == others, r  # every variant not chosen says why
    by = {r.target: r for r in reports}
    sm89 = by["sm=8.9,trt=10.13,os=linux,arch=x86_64"]
    assert sm89.refused["rtx_sm80"] == "built for compute capability 8.0; this GPU is 8.9"
    assert "lean runtime, which is host code" in sm89.refused["trt_vc"]
    newer = by["sm=8.9,trt=10.14"].refused
    assert newer["trt_plain"] == "built with TensorRT 10.13.3.9, this runtime is 10.14"
    assert "no CUDA GPU" in by["sm=none"].refused["trt_plain"]


def test_preflight_says_what_load_decides(fleet_pack):
    """load_engines given the described machine refuses the same variants for the same
    reasons (it then fails on this GPU-less machine where preflight stops)."""
    torch = pytest.importorskip("torch")
    from trtpack.engines.loading import load_engines
    from trtpack.format.container import PackReader

    manifest = trtpack.inspect(fleet_pack).manifest
    for spec in ("sm=8.9,trt=10.14", "sm=8.9,lean=11.4", "sm=7.5,rtx=1.6.1,torch_tensorrt=no"):
        _, env, host = parse_target(spec)
        with PackReader(fleet_pack) as reader:
            loaded = load_engines(reader, manifest, torch.device("cuda"), verify=False,
                                  require_engine=False, variant=None, environment=env,
                                  host_code_allowed=host)  # fmt: skip
        (report,) = trtpack.preflight(fleet_pack, [spec])
        assert loaded.runner is None and report.outcome == "program"
        for name, why in report.refused.items():
            assert f"{name}: {why}" in loaded.reason


def test_cli_json_require_engine_and_a_fleet_file(fleet_pack, tmp_path, capsys):
    fleet = tmp_path / "fleet.txt"
    fleet.write_text("# the lab\nsm=8.0,rtx=1.6.1\n\nname=old box,sm=8.9,trt=10.14  # no\n")
    assert main(["preflight", str(fleet_pack), "--targets", str(fleet), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["chosen"] for t in data["targets"]] == ["rtx_sm80", None]
    assert data["targets"][1]["target"] == "old box"
    assert main(["preflight", str(fleet_pack), "--targets", str(fleet),
                 "--require-engine"]) == 1  # fmt: skip
    captured = capsys.readouterr()
    assert "old box: no engine: falls back to the ExportedProgram" in captured.out
    assert "no engine variant would run on 1 target(s): old box" in captured.err
    assert main(["preflight", str(fleet_pack), "--target", "sm=8.0,rtx=1.6.1",
                 "--require-engine"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("sm=8.9,gpu=h100", "'gpu=h100' is not KEY=VALUE"),
        ("sm=eight", "sm='eight' is not a compute capability"),
        ("sm=8.9,trt=ten", "trt='ten' is not a version"),
        ("sm=8.9,os=linux", "os= and arch= go together"),
        ("sm=8.9,sm=9.0", "sm= is given twice"),
        ("sm=8.9,host_code=maybe", "host_code='maybe' is not yes or no"),
        ("x" * 2000, "over 1000"),
    ],
)
def test_bad_targets_are_named(fleet_pack, spec, match, capsys):
    with pytest.raises(trtpack.TargetSpecError, match=match):
        trtpack.preflight(fleet_pack, [spec])
    assert main(["preflight", str(fleet_pack), "--target", spec]) == 1
    assert capsys.readouterr().err.startswith("trtpack: error: ")
