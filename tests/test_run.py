"""``trtpack run`` (sample inputs from the manifest, run, compare) and the CLI's manners: one
line per warning, errors that name flags, ``--json`` reports."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rtx
import torch

import trtpack
from trtpack.cli.commands import cli_text, main
from trtpack.cli.run import run_pack

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
KEYWORDS = FIXTURES / "v1.1" / "keywords.trtpack"
ENGINES = FIXTURES / "v1.1" / "keywords_engines.trtpack"


@pytest.mark.parametrize("size", ["opt", "min", "max", "random"])
def test_run_samples_inside_the_ranges(size):
    report = run_pack(KEYWORDS, size=size, seed=5, device="cpu")
    sym = trtpack.inspect(KEYWORDS).manifest.symbols["x_dim0"]
    n = report.symbols["x_dim0"]
    assert sym.min <= n <= sym.max
    assert n == {"opt": sym.opt, "min": sym.min, "max": sym.max}.get(size, n)
    assert report.inputs == {"x": (n, 6), "mask": (n, 6), "bias": (6,)}  # shared symbol
    assert report.backend == "exported_program" and not report.compared
    assert [(o.name, o.shape, o.dtype) for o in report.outputs] == [("output", (n, 6), "float32")]


def test_given_inputs_are_used_and_checked(tmp_path):
    x = np.ones((3, 6), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(KEYWORDS), "--input", f"x={tmp_path / 'x.npy'}",
                 "--input", f"mask={tmp_path / 'x.npy'}", "--device", "cpu", "--json"]) == 0  # fmt: skip
    with pytest.raises(trtpack.InputMismatchError, match="x_dim0"):
        run_pack(KEYWORDS, inputs={"x": torch.ones(3, 6), "mask": torch.ones(5, 6)}, device="cpu")
    with pytest.raises(trtpack.TrtpackError, match=r"names \['nope'\], which are not inputs"):
        run_pack(KEYWORDS, inputs={"nope": 1}, device="cpu")


def test_one_given_input_sets_the_symbols_the_others_are_sampled_at(tmp_path, capsys):
    """x of batch 3 given, mask sampled: mask shares x's batch (not the opt, 4), and the
    report says 3."""
    report = run_pack(KEYWORDS, inputs={"x": torch.ones(3, 6)}, device="cpu", size="max")
    assert report.symbols == {"x_dim0": 3}
    assert report.inputs == {"x": (3, 6), "mask": (3, 6), "bias": (6,)}
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    assert (
        main(["run", str(KEYWORDS), "--input", f"x={tmp_path / 'x.npy'}", "--device", "cpu"]) == 0
    )
    assert "symbols: x_dim0=2\n" in capsys.readouterr().out


def _with_engine(tmp_path, source=KEYWORDS):
    pack = tmp_path / "e.trtpack"
    pack.write_bytes(source.read_bytes())
    trtpack.add_engine(pack, FIXTURES / "v0/engine/keywords.plan", variant="sm86")
    return pack


@pytest.mark.skipif(torch.cuda.is_available(), reason="the engine could run on a GPU machine")
def test_a_named_variant_that_cannot_run_here_fails_run_and_check(tmp_path, capsys):
    pack = _with_engine(tmp_path, FIXTURES / "v1.3" / "keywords_samples.trtpack")
    for command in (
        ["run", str(pack), "--variant", "sm86", "--device", "cpu"],
        ["check", str(pack), "--variant", "sm86", "--device", "cpu", "--json"],
    ):
        assert main(command) == 1, command
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("trtpack: error: ") and "sm86" in err, (out, err)
    # without --variant, the program's run and check pass and say which backend ran
    assert main(["check", str(pack), "--device", "cpu"]) == 0
    assert "on exported_program" in capsys.readouterr().out


def test_atol_that_compared_nothing_fails(tmp_path, capsys):
    pack = _with_engine(tmp_path)
    assert main(["run", str(pack), "--atol", "1e-3", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("trtpack: error: --atol 0.001: nothing was compared"), err
    assert main(["run", str(KEYWORDS), "--atol", "1e-3", "--device", "cpu"]) == 1
    assert "(the pack holds no engine variant)" in capsys.readouterr().err
    assert main(["run", str(KEYWORDS), "--device", "cpu"]) == 0  # no --atol: a report only


def test_run_and_check_help_give_the_exit_statuses(capsys):
    for command in ("run", "check"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "exit status: 0" in " ".join(capsys.readouterr().out.split())


def test_run_json_and_engine_fallback_reported(capsys):
    assert main(["run", str(ENGINES), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "exported_program" and report["compared"] is False
    # the reason is the machine's: no GPU here; on a GPU machine, a pack loaded for the CPU
    assert report["fallback_reason"].startswith(
        ("no engine variant can run here (rtx_sm80: ", "the pack was loaded for cpu")
    )
    assert report["outputs"][0]["name"] == "output" and report["max_abs_diff"] is None


def test_cli_errors_name_flags_not_python_arguments(tmp_path, capsys):
    out = tmp_path / "k.trtpack"
    out.write_bytes(KEYWORDS.read_bytes())
    assert main(["migrate", str(FIXTURES / "v1.0" / "keywords.trtpack"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"trtpack: error: {out} exists; pass --force to replace it\n"
    assert cli_text("pick another name with variant=... (--variant)") == (
        "pick another name with --variant"
    )
    assert main(["pack", str(FIXTURES / "v0/engine/keywords.plan"), "--inputs-json",
                 str(FIXTURES / "v0/engine/keywords.inputs.json"),
                 "-o", str(tmp_path / "missing" / "p.trtpack")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"trtpack: error: cannot write {tmp_path / 'missing' / 'p.trtpack'}: ")
    assert ".tmp" not in err  # never the temporary file's name


def test_cli_warnings_are_one_line(monkeypatch, capsys):
    import trtpack.cli.commands as cli

    def warns(args):
        warnings.warn("trtpack: something the user should know (variant=... (--variant))",
                      UserWarning, stacklevel=1)  # fmt: skip
        return 0

    summary, arguments, _ = cli._COMMANDS["verify"]
    monkeypatch.setitem(cli._COMMANDS, "verify", (summary, arguments, warns))
    assert cli.main(["verify", str(KEYWORDS)]) == 0
    err = capsys.readouterr().err
    assert err == "trtpack: warning: something the user should know (--variant)\n"


def test_json_on_every_reporting_command(tmp_path, capsys):
    pack = tmp_path / "m.trtpack"
    assert main(["migrate", str(FIXTURES / "v0/torch_export/keywords.pt2"), str(pack),
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["path"] == str(pack)
    assert main(["add-engine", str(pack), str(FIXTURES / "v0/engine/keywords.plan"),
                 "--variant", "sm86", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["variants"] == ["sm86"]
    assert main(["verify", str(pack), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 3
    assert main(["pack", str(FIXTURES / "v0/engine/keywords.plan"), "--inputs-json",
                 str(FIXTURES / "v0/engine/keywords.inputs.json"), "-o",
                 str(tmp_path / "p.trtpack"), "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["format_version"] == list(trtpack.FORMAT_VERSION)


LIVE_PROBLEM = rtx.gpu_problem(torch_tensorrt=True)  # why live engines cannot run here


@pytest.mark.engine
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=LIVE_PROBLEM or "")
def test_run_compares_engines_with_the_program_on_a_gpu(tmp_path):
    """Live: a compiled pack's engines and its program on the same sample inputs."""
    ep = torch.export.export(torch.nn.Linear(8, 4).cuda().eval(), (torch.randn(2, 8).cuda(),))
    trtpack.save(trtpack.compile(ep, min_block_size=1), tmp_path / "live.trtpack")
    report = run_pack(tmp_path / "live.trtpack")
    assert report.backend == "tensorrt" and report.compared
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-2
