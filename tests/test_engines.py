"""Engines without torch_tensorrt: plan headers of real TensorRT-RTX engines, variant choice,
add-engine, inspect, and the fallback to the ExportedProgram."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import warnings
import zipfile

import pytest
import rtx
import torch

import trtpack
from trtpack.engines.loading import load_engines
from trtpack.engines.plan import parse_plan
from trtpack.engines.select import Environment, choose, why_not
from trtpack.format.container import PackReader
from trtpack.format.manifest import Target
from trtpack.reading import render

pytest.importorskip("tensorrt_rtx")


@pytest.fixture(scope="module")
def plans():
    """Real engines, built once: targets, a dynamic profile, several MB of weights."""
    return {
        "sm80": rtx.keywords_plan(("8.0",)),
        "sm86_sm89": rtx.keywords_plan(("8.6", "8.9")),
        "default": rtx.keywords_plan(None),
        "narrow": rtx.keywords_plan(("8.0",), batch=(1, 4, 16)),
        "big": rtx.build([("x", "float32", ((1, 2, 8), 16))], targets=("8.9",), weights_mb=6),
    }


@pytest.fixture
def program_pack(exported, tmp_path):
    _, _, ep = exported("keywords")
    path = tmp_path / "keywords.trtpack"
    trtpack.save(ep, path, metadata={"model": "keywords"})
    return path


def raw(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


# --- plan headers ---------------------------------------------------------------------------


def test_plan_header_of_real_engines(plans):
    import tensorrt_rtx

    info = parse_plan(plans["sm80"])
    assert (info.flavor, info.trt_version) == ("tensorrt_rtx", tensorrt_rtx.__version__)
    assert info.compute_capabilities == ("8.0",) and not info.future_gpus
    assert parse_plan(plans["sm86_sm89"]).compute_capabilities == ("8.6", "8.9")
    default = parse_plan(plans["default"])
    assert default.compute_capabilities == ("8.0", "8.6", "8.9", "12.0", "12.1")
    assert default.future_gpus
    big = parse_plan(plans["big"])
    assert len(plans["big"]) > 6 * 2**20 and big.weights_device_bytes >= 6 * 2**20
    assert info.cuda_runtime is not None and info.cuda_runtime.count(".") == 1


def test_damaged_plans_are_refused(plans):
    good = plans["sm80"]
    for bad, message in [
        (good[:-1], "damaged: its header says"),
        (good[: len(good) // 2], "truncated"),
        (good[:40], "truncated: 40 bytes"),
        (good + b"\0", "damaged: its header says"),
        (b"\x7fELF" + good[4:], "not a TensorRT plan: it starts with b'\\\\x7fELF'"),
        (b"", "not a TensorRT plan"),
    ]:
        with pytest.raises(trtpack.EngineError, match=message):
            parse_plan(bad)


def test_standard_tensorrt_header_version():
    """Standard TensorRT plans cannot be built here; the documented part of their header
    (magic, u32 0, version bytes at 24..27; trtexec --getPlanVersionOnly) is all we read."""
    header = b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes([10, 13, 3, 9]) + bytes(36)
    info = parse_plan(header)
    assert (info.flavor, info.trt_version, info.compute_capabilities) == (
        "tensorrt",
        "10.13.3.9",
        (),
    )
    old = b"ftrt" + struct.pack("<I", 232) + bytes(60)
    with pytest.raises(
        trtpack.EngineError, match="serialization version 232, from TensorRT before 10"
    ):
        parse_plan(old)


# --- which variant runs ----------------------------------------------------------------------


RTX = Target("tensorrt_rtx", "1.6.1.120", ("8.0", "8.6"), "none", False, platform="linux_x86_64")
TRT = Target("tensorrt", "10.13.3.9", ("9.0",), "none", False, platform="linux_x86_64")
ENV_RTX_SM86 = Environment(gpu=(8, 6), runtimes={"tensorrt_rtx": "1.6.1.120"}, torch_tensorrt="2.14.0",
                           torch_tensorrt_flavor="tensorrt_rtx", platform="linux_x86_64")  # fmt: skip
ENV_TRT_SM90 = Environment(gpu=(9, 0), runtimes={"tensorrt": "10.13.3.9"}, torch_tensorrt="2.9.0",
                           torch_tensorrt_flavor="tensorrt", platform="linux_x86_64")  # fmt: skip


@pytest.mark.parametrize(
    ("target", "env", "reason"),
    [
        (RTX, ENV_RTX_SM86, None),
        (RTX, Environment(platform="linux_x86_64"), "no CUDA GPU"),
        (RTX, Environment(gpu=(8, 0), torch_tensorrt_problem="torch_tensorrt is not installed"),
         "torch_tensorrt is not installed"),
        (RTX, Environment(gpu=(9, 0)), "built for compute capability 8.0, 8.6; this GPU is 9.0"),
        (Target("tensorrt_rtx", "1.6.1.120", ("8.0", "12.1"), "none", False, future_gpus=True),
         Environment(**{**ENV_RTX_SM86.__dict__, "gpu": (12, 2)}), None),
        (Target("tensorrt_rtx", "1.6.1.120", ("8.0", "12.1"), "none", False, future_gpus=True),
         Environment(**{**ENV_RTX_SM86.__dict__, "gpu": (9, 0)}), "this GPU is 9.0"),
        (RTX, Environment(**{**ENV_TRT_SM90.__dict__, "gpu": (8, 6)}),
         "built with tensorrt_rtx, but the installed torch_tensorrt 2.9.0 runs tensorrt"),
        (RTX, Environment(**{**ENV_RTX_SM86.__dict__, "gpu": (9, 0)}),
         "built for compute capability 8.0, 8.6; this GPU is 9.0"),
        (RTX, Environment(**{**ENV_RTX_SM86.__dict__, "runtimes": {"tensorrt_rtx": "1.7.1.116"}}),
         "built with TensorRT-RTX 1.6.1.120, this runtime is 1.7.1.116"),
        (RTX, Environment(**{**ENV_RTX_SM86.__dict__, "runtimes": {"tensorrt_rtx": "1.6.1.99"}}), None),
        (RTX, Environment(**{**ENV_RTX_SM86.__dict__, "runtimes": {}}), "tensorrt_rtx 1.6.1.120, which is not installed"),
        (RTX, Environment(**{**ENV_RTX_SM86.__dict__, "platform": "win_x86_64"}), "built for linux_x86_64"),
        (TRT, ENV_TRT_SM90, None),
        (TRT, Environment(**{**ENV_TRT_SM90.__dict__, "runtimes": {"tensorrt": "10.14.1.2"}}),
         "built with TensorRT 10.13.3.9, this runtime is 10.14.1.2"),
        (Target("tensorrt", "10.13.3.9", ("9.0",), "none", True),
         Environment(**{**ENV_TRT_SM90.__dict__, "runtimes": {"tensorrt": "10.14.1.2"}}), None),
        (Target("tensorrt", "10.13.3.9", ("9.0",), "none", True),
         Environment(**{**ENV_TRT_SM90.__dict__, "runtimes": {"tensorrt": "10.12.0.1"}}),
         "needs TensorRT 10.x at least that new"),
        (Target("tensorrt", "10.13.3.9", ("8.0",), "ampere_plus", False), ENV_TRT_SM90, None),
        (Target("tensorrt", "10.13.3.9", ("8.0",), "ampere_plus", False),
         Environment(**{**ENV_TRT_SM90.__dict__, "gpu": (7, 5)}), "hardware-compatible for Ampere and newer"),
        (Target("tensorrt_rtx", "1.6.1.120", ("8.0",), "none", False, cuda_runtime="13.4"),
         Environment(**{**ENV_RTX_SM86.__dict__, "gpu": (8, 0), "cuda_runtime": "12.9"}),
         "needs CUDA runtime 13.4, this one is 12.9"),
    ],
)  # fmt: skip
def test_why_a_variant_cannot_run(target, env, reason):
    got = why_not(target, env)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize(
    ("built", "runtime", "runs"),
    [
        # within a major: a runtime at least as new as the builder
        ("10.13.3.9", "10.13.3.9", True), ("10.13.3.9", "10.16.1.0", True),
        ("10.13.3.9", "10.12.0.1", False), ("11.0.0.1", "11.4.1.2", True),
        ("8.6.1.6", "8.6.1.6", True), ("8.6.1.6", "8.6.2.3", True),
        # across majors: exactly the two combinations the support matrix names
        ("10.13.3.9", "11.4.1.2", True), ("10.0.1.6", "11.0.0.1", True),
        ("8.6.1.6", "10.16.1.0", True),
        ("8.6.1.6", "11.4.1.2", False),   # "a TensorRT 8 engine cannot run with TensorRT 11"
        ("8.6.1.6", "9.3.0.1", False), ("9.3.0.1", "10.16.1.0", False),
        ("11.4.1.2", "10.16.1.0", False), ("10.13.3.9", "8.6.1.6", False),
        # version compatibility starts at 8.6
        ("8.5.3.1", "8.6.1.6", False), ("8.5.3.1", "10.16.1.0", False),
    ],
)  # fmt: skip
def test_version_compatible_rules_follow_the_support_matrix(built, runtime, runs):
    from trtpack.engines.select import version_compatible_runtime_problem

    problem = version_compatible_runtime_problem(built, runtime)
    assert (problem is None) is runs, problem
    env = Environment(**{**ENV_TRT_SM90.__dict__, "runtimes": {"tensorrt": runtime}})
    target = Target("tensorrt", built, ("9.0",), "none", True)
    assert (why_not(target, env) is None) is runs
    if not runs:
        assert runtime in problem


def test_choice_prefers_exact_gpu_then_exact_version():
    from trtpack.format.manifest import EngineSpec, Variant

    def variant(name, target):
        e = EngineSpec("e", f"engines/{name}/e.plan", (), ())
        return Variant(name, target, (e,), None)

    hw = variant("hw", Target("tensorrt", "10.13.3.9", ("8.0",), "ampere_plus", False))
    exact = variant("exact", TRT)
    vc = variant("vc", Target("tensorrt", "10.12.0.1", ("9.0",), "none", True))
    other = variant("sm80", Target("tensorrt", "10.13.3.9", ("8.0",), "none", False))
    choice = choose((hw, vc, other, exact), ENV_TRT_SM90)
    assert [v.name for v in choice.fitting] == ["exact", "vc", "hw"]
    assert choice.refused == {"sm80": "built for compute capability 8.0; this GPU is 9.0"}
    assert [v.name for v in choose((hw, exact), ENV_TRT_SM90, only="hw").fitting] == ["hw"]


# --- add-engine --------------------------------------------------------------------------------


def test_add_engine_keeps_other_members_byte_for_byte(program_pack, plans, tmp_path):
    before = raw(program_pack)
    plan = tmp_path / "sm80.plan"
    plan.write_bytes(plans["sm80"])
    info = trtpack.add_engine(program_pack, plan)
    after = raw(program_pack)
    for name, data in before.items():
        if name != "manifest.json":
            assert after[name] == data, name
    old = trtpack.inspect(tmp_path / "keywords.trtpack").manifest
    assert old.program == info.manifest.program
    (v,) = info.manifest.engines
    assert v.name == "rtx_sm80" and v.whole_graph and v.program is None
    assert v.target.flavor == "tensorrt_rtx" and v.target.compute_capabilities == ("8.0",)
    assert after[v.engines[0].member] == plans["sm80"]  # raw plan bytes: no base64, no pickle
    assert [b.name for b in v.engines[0].inputs] == ["x", "mask", "bias"]
    assert v.engines[0].inputs[0].profile == ((1, 4, 64), (6, 6, 6))
    trtpack.verify(program_pack)
    # a second variant, another name; then the name clash is refused
    info = trtpack.add_engine(program_pack, plans["sm86_sm89"], variant="ada")
    assert [v.name for v in info.manifest.engines] == ["rtx_sm80", "ada"]
    with pytest.raises(trtpack.EngineError, match="already has an engine variant named 'ada'"):
        trtpack.add_engine(program_pack, plans["sm86_sm89"], variant="ada")
    assert trtpack.verify(program_pack).digest == info.digest  # nothing was changed


def test_add_engine_from_another_pack(program_pack, plans, tmp_path):
    other = tmp_path / "other.trtpack"
    other.write_bytes(program_pack.read_bytes())
    trtpack.add_engine(other, plans["sm86_sm89"], variant="ada")
    out = tmp_path / "merged.trtpack"
    info = trtpack.add_engine(program_pack, other, out=out)
    assert [v.name for v in info.manifest.engines] == ["ada"]
    assert raw(out)["engines/ada/engine.plan"] == plans["sm86_sm89"]
    assert trtpack.inspect(program_pack).manifest.engines == ()  # -o left the input alone
    info = trtpack.add_engine(program_pack, other, variant="ada2")
    assert "engines/ada2/engine.plan" in info.manifest.members


def test_add_engine_refuses_bad_input(program_pack, plans, tmp_path, exported):
    digest = trtpack.inspect(program_pack).digest
    junk = tmp_path / "junk.plan"
    junk.write_bytes(b"not an engine at all")
    with pytest.raises(trtpack.EngineError, match="not a TensorRT plan"):
        trtpack.add_engine(program_pack, junk)
    with pytest.raises(trtpack.EngineError, match="truncated"):
        trtpack.add_engine(program_pack, plans["sm80"][:1000])
    # a pack of another model
    _, _, ep = exported("one_tensor")
    foreign = tmp_path / "foreign.trtpack"
    trtpack.save(ep, foreign)
    trtpack.add_engine(foreign, rtx.build([("x", "float32", ((1, 2, 64), 8))]))
    with pytest.raises(trtpack.EngineError, match="describes another model"):
        trtpack.add_engine(program_pack, foreign)
    same = tmp_path / "same_model_no_engines.trtpack"
    same.write_bytes(program_pack.read_bytes())
    with pytest.raises(trtpack.EngineError, match="holds no engine variant"):
        trtpack.add_engine(program_pack, same)
    with pytest.raises(TypeError, match="source must be a .trtpack or .plan path.*got a int"):
        trtpack.add_engine(program_pack, 3)
    assert trtpack.inspect(program_pack).digest == digest  # nothing was overwritten


def test_add_engine_cli_and_inspect(program_pack, plans, tmp_path):
    import subprocess
    import sys

    plan = tmp_path / "e.plan"
    plan.write_bytes(plans["default"])
    out = tmp_path / "with_engine.trtpack"
    run = [sys.executable, "-m", "trtpack"]
    r = subprocess.run([*run, "add-engine", str(program_pack), str(plan), "-o", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "engine variants rtx_sm80_plus" in r.stdout
    r = subprocess.run([*run, "add-engine", str(program_pack), str(plan), "-o", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "exists; pass --force to replace it" in r.stderr
    r = subprocess.run([*run, "inspect", str(out)], capture_output=True, text=True)
    assert (
        "rtx_sm80_plus  TensorRT-RTX 1.6.1.120  GPUs 8.0, 8.6, 8.9, 12.0, 12.1 and newer"
        in r.stdout
    )
    assert "one whole-graph engine" in r.stdout and "CUDA >= " in r.stdout
    # the engine member's line: its size and the start of its SHA-256, of the bytes added
    size, digest = len(plans["default"]), hashlib.sha256(plans["default"]).hexdigest()
    assert 1024 <= size < 1024**2  # shown in KiB
    line = rf"\n\s+engines/\S+\s+{size / 1024:.1f} KiB\s+sha256:{digest[:16]}"
    assert re.search(line, r.stdout), r.stdout
    data = json.loads(subprocess.run([*run, "inspect", "--json", str(out)], capture_output=True,
                                     text=True).stdout)  # fmt: skip
    assert data["engines"][0]["target"]["future_gpus"] is True


# --- load: engines where they can run, else the program ---------------------------------------


def test_load_falls_back_with_a_reason(program_pack, plans, exported):
    case, model, _ = exported("keywords")
    trtpack.add_engine(program_pack, plans["sm80"])
    with pytest.warns(UserWarning, match="running the ExportedProgram"):
        pack = trtpack.load(program_pack, device="cpu")
    assert pack.backend == "exported_program"
    if torch.cuda.is_available():
        assert "loaded for cpu, and TensorRT engines run on CUDA devices" in pack.fallback_reason
    else:
        assert (
            pack.fallback_reason
            == "no engine variant can run here (rtx_sm80: no CUDA GPU on this machine)"
        )
    torch.testing.assert_close(pack(*case.args, **case.kwargs), model(*case.args, **case.kwargs))
    with pytest.raises(trtpack.NoUsableEngineError, match="rtx_sm80: "):
        trtpack.load(program_pack, require_engine=True)
    with pytest.raises(
        trtpack.NoUsableEngineError, match="no engine variant 'sm90' \\(variants: rtx_sm80\\)"
    ):
        trtpack.load(program_pack, variant="sm90")


def test_pack_without_engines_has_no_fallback_reason(small_pack):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pack = trtpack.load(small_pack, device="cpu")
    assert pack.backend == "exported_program" and pack.fallback_reason is None
    with pytest.raises(trtpack.NoUsableEngineError, match="holds no TensorRT engine"):
        trtpack.load(small_pack, require_engine=True)


def _fitting_env():
    """This machine as it would look with an sm_80 GPU and TensorRT-RTX (a device query
    answered differently; what follows is the real load path)."""
    import tensorrt_rtx

    return Environment(gpu=(8, 0), runtimes={"tensorrt_rtx": tensorrt_rtx.__version__},
                       torch_tensorrt="2.14.0", torch_tensorrt_flavor="tensorrt_rtx")  # fmt: skip


def test_corrupt_engine_member_is_a_clean_fallback(program_pack, plans, tmp_path):
    info = trtpack.add_engine(program_pack, plans["sm80"])
    member = info.manifest.engines[0].engines[0].member
    data = bytearray(program_pack.read_bytes())
    with PackReader(program_pack) as r:
        offset = r.info(member).offset
    data[offset + 500] ^= 0xFF
    bad = tmp_path / "corrupt.trtpack"
    bad.write_bytes(bytes(data))
    with PackReader(bad) as reader:
        manifest = trtpack.inspect(bad).manifest
        got = load_engines(reader, manifest, torch.device("cuda", 0), verify=True,
                           require_engine=False, variant=None, environment=_fitting_env())  # fmt: skip
    assert got.runner is None
    assert "rtx_sm80: " in got.reason and "is corrupt: SHA-256" in got.reason


def test_engine_that_disagrees_with_the_manifest_is_a_clean_fallback(program_pack, plans, tmp_path):
    """A member swapped for another valid plan (hashes fixed up): its header contradicts the
    manifest, and that is caught before TensorRT reads it."""
    from test_container import rewrite

    info = trtpack.add_engine(program_pack, plans["sm80"])
    member = info.manifest.engines[0].engines[0].member
    other = plans["sm80"][:0x18] + bytes([1, 7, 1, 116]) + plans["sm80"][0x1C:]  # "newer TensorRT"
    bad = rewrite(program_pack, tmp_path / "swapped.trtpack", replace={member: other})
    with PackReader(bad) as reader:
        got = load_engines(reader, trtpack.inspect(bad).manifest, torch.device("cuda", 0),
                           verify=True, require_engine=False, variant=None,
                           environment=_fitting_env())  # fmt: skip
    assert (
        "the plan's header says trt_version '1.7.1.116', the variant's target says '1.6.1.120'"
        in got.reason
    )


def test_fitting_variant_goes_as_far_as_the_runtime_allows(program_pack, plans):
    """With a fitting environment the real build path runs until it needs torch_tensorrt's
    runtime (not installed in this environment, or no GPU): a clean, named reason."""
    trtpack.add_engine(program_pack, plans["sm80"])
    with PackReader(program_pack) as reader:
        got = load_engines(reader, trtpack.inspect(program_pack).manifest, torch.device("cuda", 0),
                           verify=True, require_engine=False, variant=None,
                           environment=_fitting_env())  # fmt: skip
    assert got.runner is None and got.reason.startswith(
        "no engine variant can run here (rtx_sm80: "
    )


def test_engines_only_pack_without_usable_engine(plans, tmp_path):
    """A pack of engines and no program: nothing to fall back to, so a clear error."""
    from trtpack.format.container import write_pack

    src = tmp_path / "src.trtpack"
    trtpack.save(torch.export.export(torch.nn.ReLU(), (torch.randn(2),)), src)
    trtpack.add_engine(src, rtx.build([("input", "float32", (2,))]))
    members = {n: d for n, d in raw(src).items() if not n.startswith("program/")}
    manifest = json.loads(members.pop("manifest.json"))
    manifest["members"] = {n: m for n, m in manifest["members"].items() if n in members}
    manifest["program"] = None
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    bare = tmp_path / "bare.trtpack"
    write_pack(bare, members, lambda _: text)
    assert trtpack.inspect(bare).manifest.program is None
    with pytest.raises(
        trtpack.NoUsableEngineError, match="holds engines only, and none can run here"
    ):
        trtpack.load(bare)


# --- one input contract, three ways ------------------------------------------------------------


def test_engine_profile_narrower_than_the_program(exported):
    """At save, each engine's profile is compared with the manifest's ranges; where it covers
    less, the variant records it, and a call inside the exported range but outside the
    profile gets a message naming both (or runs on the program, if asked)."""
    from trtpack.contract import Contract, OutsideEngineProfile
    from trtpack.format.manifest import Binding, EngineSpec, narrowed_ranges
    from trtpack.program.serialize import derive_interface

    _, _, ep = exported("derived")
    iface = derive_interface(ep)  # x_dim0 in [2, 32]; x [x_dim0, 3], y [2*x_dim0, 3], z [...+1]
    engine = EngineSpec("e", "engines/v/e.plan", inputs=(
        Binding("x", "float32", ("x_dim0", 3), ((2, 4, 16), (3, 3, 3))),
        Binding("y", "float32", ("2*x_dim0", 3), ((4, 8, 30), (3, 3, 3))),
    ), outputs=())  # fmt: skip
    assert narrowed_ranges([engine], iface.inputs, iface.symbols) == {"x_dim0": (2, 15)}
    manifest = trtpack.format.manifest.Manifest(
        format_version=(1, 0), producer=trtpack.format.manifest.Producer("t", "3"),
        interface=iface, members={}, program=None,
    )  # fmt: skip
    contract = Contract(manifest, engine_ranges={"x_dim0": (2, 15)}, variant="rtx_sm80")
    t = torch.zeros
    contract((t(15, 3), t(30, 3), t(16)), {})
    with pytest.raises(OutsideEngineProfile) as e:
        contract((t(20, 3), t(40, 3), t(21)), {})
    assert str(e.value) == (
        "input x (args[0]) dim 0 makes x_dim0 = 20: inside the exported range [2, 32], but outside "
        "the optimization profile of engine variant 'rtx_sm80', [2, 15]. Load with "
        "outside_profile='fallback' to run such calls on the ExportedProgram"
    )
    with pytest.raises(
        trtpack.InputMismatchError, match=r"outside the allowed range of x_dim0: \[2, 32\]"
    ):
        contract((t(33, 3), t(66, 3), t(34)), {})


def test_calls_outside_the_profile_route_to_the_program_when_asked(exported, tmp_path):
    """The routing of LoadedPack: which callable runs for which call (the engine side is a
    recording callable here: running real engines needs a GPU)."""
    from trtpack.contract import Contract
    from trtpack.runtime import LoadedPack

    _, model, ep = exported("keywords")
    path = tmp_path / "k.trtpack"
    info = trtpack.save(ep, path)
    ran = []
    pack = LoadedPack(
        info, device=torch.device("cpu"), module=lambda *a, **k: ran.append("engine"),
        contract=Contract(info.manifest, engine_ranges={"x_dim0": (1, 8)}, variant="v"),
        backend="tensorrt", variant="v", outside_profile="fallback",
    )  # fmt: skip
    pack(torch.zeros(8, 6), mask=torch.zeros(8, 6), bias=torch.zeros(6))
    assert ran == ["engine"]
    x, mask, bias = torch.randn(9, 6), torch.randn(9, 6), torch.randn(6)
    torch.testing.assert_close(pack(x, mask=mask, bias=bias), model(x, mask=mask, bias=bias))
    assert ran == ["engine"] and pack.exported_program is not None
    strict = LoadedPack(
        info, device=torch.device("cpu"), module=lambda *a, **k: ran.append("engine"),
        contract=Contract(info.manifest, engine_ranges={"x_dim0": (1, 8)}, variant="v"),
        backend="tensorrt", variant="v",
    )  # fmt: skip
    with pytest.raises(trtpack.InputMismatchError, match="outside the optimization profile"):
        strict(x, mask=mask, bias=bias)


# --- version-compatible plans: the lean runtime and host code (format 1.3) -------------------

VC = Target("tensorrt", "10.13.3.9", ("9.0",), "none", True, platform="linux_x86_64",
            embeds_lean_runtime=False)  # fmt: skip
VC_HOST = Target("tensorrt", "10.13.3.9", ("9.0",), "none", True, platform="linux_x86_64",
                 embeds_lean_runtime=True)  # fmt: skip
ENV_LEAN = Environment(gpu=(9, 0), lean_runtime="11.4.0.106", platform="linux_x86_64",
                       torch_tensorrt_problem="torch_tensorrt is not installed")  # fmt: skip
ENV_LEAN_TRUSTED = Environment(**{**ENV_LEAN.__dict__, "host_code_allowed": True})
ENV_BOTH = Environment(**{**ENV_TRT_SM90.__dict__, "lean_runtime": "11.4.0.106"})


@pytest.mark.parametrize(
    ("target", "env", "whole_graph", "reason", "runtime"),
    [
        # the lean runtime runs a version-compatible whole-graph engine, by the support matrix
        (VC, ENV_LEAN, True, None, "tensorrt_lean"),
        (VC, ENV_LEAN, False, "the lean runtime runs whole-graph engines only", None),
        (Target("tensorrt", "8.6.1.6", ("9.0",), "none", True), ENV_LEAN, True,
         "not on this runtime 11.4.0.106", None),
        (TRT, ENV_LEAN, True, "torch_tensorrt is not installed", None),  # not version-compatible
        (RTX, Environment(**{**ENV_LEAN.__dict__, "gpu": (8, 6)}), True,
         "torch_tensorrt is not installed", None),
        # torch_tensorrt first where it runs the engine
        (VC, ENV_BOTH, True, None, "torch_tensorrt"),
        # an embedded lean runtime is host code: only when allowed, and only on the lean runtime
        (VC_HOST, ENV_LEAN, True, "lean runtime, which is host code", None),
        (VC_HOST, ENV_BOTH, True, "lean runtime, which is host code", None),
        (VC_HOST, ENV_LEAN_TRUSTED, True, None, "tensorrt_lean"),
        (VC_HOST, Environment(**{**ENV_TRT_SM90.__dict__, "host_code_allowed": True}), True,
         "torch_tensorrt cannot run plans with host code", None),
        (VC_HOST, Environment(**{**ENV_LEAN_TRUSTED.__dict__, "gpu": (8, 0)}), True,
         "this GPU is 8.0", None),  # facts about the GPU still come first
    ],
)  # fmt: skip
def test_lean_runtime_and_host_code_rules(target, env, whole_graph, reason, runtime):
    from trtpack.engines.select import runtime_for

    got = why_not(target, env, whole_graph=whole_graph)
    if reason is None:
        assert got is None and runtime_for(target, env, whole_graph=whole_graph) == runtime
    else:
        assert got is not None and reason in got, got


def _standard_plan(tmp_path, names=(b"x", b"out")):
    """A standard TensorRT 10.13 plan header (the only part trtpack reads without a GPU)."""
    path = tmp_path / "vc.plan"
    header = b"ftrt" + struct.pack("<I", 0) + bytes(16) + bytes([10, 13, 3, 9]) + bytes(36)
    path.write_bytes(header + b"\0".join(names) + bytes(64))
    return path


def test_a_version_compatible_bare_plan_is_recorded_as_built(tmp_path):
    from trtpack.cli.commands import main

    plan, out = _standard_plan(tmp_path), tmp_path / "vc.trtpack"
    assert main(["pack", str(plan), "--input-spec", "x:float32[batch=1..8@4,16]",
                 "--output-spec", "out:float32[batch,4]", "--version-compatible", "lean-embedded",
                 "-o", str(out)]) == 0  # fmt: skip
    (v,) = trtpack.inspect(out).manifest.engines
    assert v.target.version_compatible and v.target.embeds_lean_runtime and v.described
    assert "lean runtime embedded (host code" in render(trtpack.inspect(out))
    excluded = trtpack.migrate(
        plan,
        tmp_path / "x.trtpack",
        inputs=["x:float32[1..8@4,16]"],
        outputs=["out:float32[1]"],
        version_compatible="lean_excluded",
    )
    assert excluded.manifest.engines[0].target.embeds_lean_runtime is False
    with pytest.raises(trtpack.MigrationError, match="not a bare plan"):
        trtpack.migrate(out, tmp_path / "y.trtpack", version_compatible="lean_embedded")


def test_version_compatible_is_refused_for_rtx_plans(program_pack, plans):
    with pytest.raises(trtpack.EngineError, match="only standard TensorRT builds") as e:
        trtpack.add_engine(program_pack, plans["sm80"], version_compatible="lean_embedded")
    assert (e.value.field, e.value.got) == ("version_compatible", "tensorrt_rtx")
    with pytest.raises(trtpack.EngineError, match="must be one of"):
        trtpack.add_engine(program_pack, plans["sm80"], version_compatible="yes")


def test_host_code_is_gated_before_any_runtime_sees_the_plan(tmp_path):
    """The real load path with a GPU machine's facts: an embedded lean runtime is refused
    unless trusted; trusted, the plan goes to the lean runner (tensorrt_lean is not installed
    in this environment: its import is what stops it, as a named reason)."""
    plan = _standard_plan(tmp_path)
    pack = trtpack.migrate(
        plan,
        tmp_path / "vc.trtpack",
        inputs=["x:float32[1..8@4,16]"],
        outputs=["out:float32[1]"],
        version_compatible="lean_embedded",
    ).path
    manifest = trtpack.inspect(pack).manifest
    with PackReader(pack) as reader:
        refused = load_engines(
            reader,
            manifest,
            torch.device("cuda", 0),
            verify=True,
            require_engine=False,
            variant=None,
            environment=ENV_LEAN,
        )
        trusted = load_engines(reader, manifest, torch.device("cuda", 0), verify=True,
                               require_engine=False, variant=None, environment=ENV_LEAN,
                               host_code_allowed=True)  # fmt: skip
    assert refused.runner is None and "require_signature" in refused.reason
    assert trusted.runner is None and "tensorrt_lean" in trusted.reason, trusted.reason


def test_a_plan_allowed_host_code_is_hashed_even_without_verify(tmp_path):
    """Issue 20, item 1: host-code trust (a verified signature, or trust_engine_host_code)
    never rests on unhashed bytes. One byte of the plan flipped in place (manifest
    untouched): with verify=False the trusted plan is still hashed, and refused as corrupt
    before the lean runner is reached."""
    plan = _standard_plan(tmp_path)
    pack = trtpack.migrate(
        plan,
        tmp_path / "vc.trtpack",
        inputs=["x:float32[1..8@4,16]"],
        outputs=["out:float32[1]"],
        version_compatible="lean_embedded",
    ).path
    manifest = trtpack.inspect(pack).manifest
    member = manifest.engines[0].engines[0].member
    with PackReader(pack) as reader:
        end = reader.info(member).offset + reader.info(member).size
    with open(pack, "r+b") as f:
        f.seek(end - 1)
        f.write(b"\x01")  # the padding after the header: only a hash notices
    with PackReader(pack) as reader:
        trusted = load_engines(reader, manifest, torch.device("cuda", 0), verify=False,
                               require_engine=False, variant=None, environment=ENV_LEAN,
                               host_code_allowed=True)  # fmt: skip
    assert trusted.runner is None and "corrupt" in trusted.reason, trusted.reason
    assert "tensorrt_lean" not in trusted.reason


@pytest.mark.engine
def test_lean_runtime_runs_a_version_compatible_engine(tmp_path):
    """Live: the full TensorRT builder makes a version-compatible plan (lean runtime embedded)
    of y = x @ W; trtpack packs it, loads it on the lean runtime from a trusted pack, and the
    result matches torch. Needs a CUDA GPU, tensorrt (the builder) and tensorrt_lean."""
    live = "TRTPACK_LIVE_TENSORRT=1 tools/live_tests.sh on a GPU machine"
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA GPU on this machine (live engine test: runs with {live})")
    trt = pytest.importorskip("tensorrt", reason=f"no TensorRT builder here: runs with {live}")
    pytest.importorskip("tensorrt_lean", reason=f"no TensorRT lean runtime: runs with {live}")
    import numpy as np

    w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (-1, 16))
    weights = network.add_constant((16, 4), trt.Weights(w))
    mm = network.add_matrix_multiply(x, trt.MatrixOperation.NONE, weights.get_output(0),
                                     trt.MatrixOperation.NONE)  # fmt: skip
    mm.get_output(0).name = "out"
    network.mark_output(mm.get_output(0))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 16), (4, 16), (8, 16))
    config.add_optimization_profile(profile)
    plan = tmp_path / "vc.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))
    pack = trtpack.migrate(
        plan,
        tmp_path / "vc.trtpack",
        inputs=["x:float32[batch=1..8@4,16]"],
        outputs=["out:float32[batch,4]"],
        version_compatible="lean_embedded",
    ).path
    with pytest.raises(trtpack.NoUsableEngineError, match="host code"):
        trtpack.load(pack, require_engine=True)
    m = trtpack.load(pack, require_engine=True, trust_engine_host_code=True)
    xs = torch.randn(3, 16, device="cuda")
    torch.testing.assert_close(m(xs), xs @ torch.from_numpy(w).cuda())
