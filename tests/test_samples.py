"""Reference samples (format 1.2): inputs and the program's outputs stored in the pack, no
pickle; ``trtpack check`` / ``load(check=True)`` run them on the backend that runs here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import trtpack
from trtpack.format.manifest import EngineSpec, Target, Variant
from trtpack.samples import MEMBER, variant_tolerance

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["keywords", "nested", "scalars", "dynamic_int", "many_outputs"])
def test_random_samples_are_stored_and_reproduced(name, exported, tmp_path):
    _, _, ep = exported(name)
    info = trtpack.save(ep, tmp_path / "s.trtpack", samples=3)
    s = info.manifest.samples
    assert s is not None and s.count == 3 and s.member == MEMBER and MEMBER in info.manifest.members
    trtpack.verify(info.path)
    pack = trtpack.load(info.path, device="cpu", check=True)
    report = pack.check_report
    assert report.passed and report.backend == "exported_program" and report.samples == 3
    assert set(report.worst()) <= {o.name for o in info.manifest.outputs}
    assert all(v == 0.0 for v in report.worst().values())  # the same program, the same bytes


def test_given_calls_are_checked_and_stored(exported, tmp_path):
    case, model, ep = exported("keywords")
    info = trtpack.save(ep, tmp_path / "s.trtpack", samples=[(case.args, case.kwargs)],
                        tolerances={"program": (1e-6, 0.0)})  # fmt: skip
    assert info.manifest.samples.count == 1 and info.manifest.samples.tolerance.atol == 1e-6
    from safetensors.torch import load

    with trtpack.format.container.PackReader(info.path) as r:
        stored = load(bytes(r.read(MEMBER)))  # a standard safetensors file
    torch.testing.assert_close(stored["sample0/input/x"], case.args[0])
    torch.testing.assert_close(stored["sample0/output/output"], model(*case.args, **case.kwargs))
    bad = (torch.zeros(3, 6),), {"mask": torch.zeros(4, 6), "bias": torch.zeros(6)}
    with pytest.raises(trtpack.InputMismatchError, match="these dims must agree"):
        trtpack.save(ep, tmp_path / "bad.trtpack", samples=[bad])
    assert not (tmp_path / "bad.trtpack").exists()


def test_refusals(exported, tmp_path):
    _, _, ep = exported("keywords")
    with pytest.raises(trtpack.TrtpackError, match="neither 'program' nor an engine variant"):
        trtpack.save(ep, tmp_path / "x.trtpack", samples=1, tolerances={"rtx": (1, 1)})
    with pytest.raises(trtpack.TrtpackError, match="tolerances= applies to samples="):
        trtpack.save(ep, tmp_path / "x.trtpack", tolerances={"program": (1, 1)})
    with pytest.raises(TypeError, match="samples must be a count or a list"):
        trtpack.save(ep, tmp_path / "x.trtpack", samples="4")
    with pytest.raises(trtpack.TrtpackError, match="give at least one"):
        trtpack.save(ep, tmp_path / "x.trtpack", samples=0)
    plain = trtpack.save(ep, tmp_path / "plain.trtpack")
    with pytest.raises(trtpack.TrtpackError, match="holds no reference samples"):
        trtpack.load(plain.path, device="cpu", check=True)
    assert not (tmp_path / "x.trtpack").exists()


def test_a_backend_off_its_samples_is_named(exported, tmp_path):
    """Stored outputs edited (hashes fixed up): the check names the sample, the output and
    the error, as it would for an engine that computes something else on this GPU."""
    from test_container import raw_members, rewrite

    from trtpack.program.serialize import read_safetensors, safetensors_chunks

    _, _, ep = exported("keywords")
    info = trtpack.save(ep, tmp_path / "s.trtpack", samples=2)
    tensors, meta = read_safetensors(memoryview(raw_members(info.path)[MEMBER]), MEMBER)
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["sample1/output/output"][0, 0] += 0.5
    data = b"".join(bytes(memoryview(p).cast("B")) for p in safetensors_chunks(tensors, meta).parts)
    bad = rewrite(info.path, tmp_path / "off.trtpack", replace={MEMBER: data})
    trtpack.verify(bad)  # consistent hashes: only running it shows the difference
    with pytest.raises(trtpack.SampleMismatchError) as e:
        trtpack.load(bad, device="cpu", check=True)
    assert (e.value.sample, e.value.output) == (1, "output")
    assert e.value.error == pytest.approx(0.5, abs=1e-6)
    assert "reference sample 1, output 'output': max |error| 0.5 exceeds atol 1e-05" in str(e.value)


def test_add_engine_keeps_samples_and_check_runs_what_runs_here(exported, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    import rtx

    from trtpack.cli.commands import main

    _, _, ep = exported("keywords")
    info = trtpack.save(ep, tmp_path / "s.trtpack", samples=2)
    added = trtpack.add_engine(info.path, rtx.keywords_plan(("8.0",)), variant="sm80")
    assert added.manifest.samples == info.manifest.samples
    assert main(["check", str(info.path), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "exported_program" and report["passed"] is True
    assert main(["check", str(FIXTURES / "v1.2" / "keywords.trtpack"), "--device", "cpu"]) == 1
    assert "holds no reference samples" in capsys.readouterr().err


def test_variant_tolerance_follows_the_engines_precisions():
    target = Target("tensorrt", "10.13.3.9", ("9.0",), "none", False)

    def variant(*precisions):
        settings = {"compilation": {"enabled_precisions": list(precisions)}}
        return Variant("v", target, (EngineSpec("e", "e.plan", (), (), settings=settings),), None)

    assert variant_tolerance(variant("dtype.f32")).atol == 1e-3
    assert variant_tolerance(variant("dtype.f32", "dtype.f16")).atol == 1e-2
    assert variant_tolerance(variant("dtype.bf16")).rtol == 1e-2
    assert variant_tolerance(variant("dtype.int8")).atol == 1e-1


def test_the_fixture_with_samples_checks(tmp_path):
    path = shutil.copy(FIXTURES / "v1.2" / "keywords_samples.trtpack", tmp_path / "k.trtpack")
    assert trtpack.load(path, device="cpu", check=True).check_report.passed
