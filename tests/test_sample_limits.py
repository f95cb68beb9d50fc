"""Sample inputs made from a manifest's sizes are bounded (issue 20, item 5).

A valid pack may declare a dim with opt 2**28 and max 2**31-2 (``trtpack.save`` writes one).
``trtpack run`` and ``save(samples=)`` estimate the bytes first and refuse above a limit
(default ``run.MAX_SAMPLE_BYTES``), naming the symbols and the size; nothing is allocated.
The tests use small limits, so that a broken check allocates megabytes, not gigabytes.
"""

from __future__ import annotations

import resource

import pytest
import torch

import trtpack
from trtpack.cli import main
from trtpack.cli.commands import _byte_size
from trtpack.cli.run import run_pack
from trtpack.errors import SampleTooLargeError
from trtpack.samples import MAX_SAMPLE_BYTES, check_sample_size


class Double(torch.nn.Module):
    def forward(self, x, y):
        return x * 2, y + 1


def _export(max_n: int) -> torch.export.ExportedProgram:
    n = torch.export.Dim("n", min=2, max=max_n)
    example = (torch.randn(8), torch.zeros(8, dtype=torch.float16))
    return torch.export.export(Double(), example, dynamic_shapes=({0: n}, {0: n}))


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """The issue's pack: a symbol of max 2**31-2 and opt 2**28, saved by trtpack.save."""
    path = tmp_path_factory.mktemp("limits") / "huge.trtpack"
    return trtpack.save(_export(2**31 - 2), path, ranges={"n": (2, 2**31 - 2, 2**28)}).path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The same program with max 2**20 and opt 2**18: 1.5 MiB of inputs at opt, 6 at max."""
    path = tmp_path_factory.mktemp("limits") / "small.trtpack"
    return trtpack.save(_export(2**20), path, ranges={"n": (2, 2**20, 2**18)}).path


def test_the_issue_pack_is_refused_at_the_default_limit(huge, capsys):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["run", str(huge), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    # x: 2**28 float32 (1 GiB) + y: 2**28 float16 (512 MiB) + y drawn in float32 (1 GiB)
    assert "2.5 GiB" in err and "x_dim0=268435456" in err and "x [268435456]" in err
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200  # refused before anything was made (a run would take > 2 GiB)


@pytest.mark.parametrize("size", ["max", "random"])
def test_every_size_is_checked(huge, size):
    with pytest.raises(SampleTooLargeError) as e:
        run_pack(huge, size=size, device="cpu")
    err = e.value
    assert err.limit == MAX_SAMPLE_BYTES and err.needed > MAX_SAMPLE_BYTES
    assert set(err.symbols) == {"x_dim0"} and err.symbols["x_dim0"] > 2**28
    assert set(err.inputs) == {"x", "y"} and err.inputs["x"] == 4 * err.symbols["x_dim0"]


def test_the_cli_flag_sets_the_limit(small, capsys):
    assert main(["run", str(small), "--device", "cpu", "--size", "max",
                 "--max-sample-size", "1MiB"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "x_dim0=1048576" in err and "over the limit of 1.0 MiB" in err
    # raised: the same run goes through
    assert main(["run", str(small), "--device", "cpu", "--max-sample-size", "8MiB"]) == 0


def test_run_pack_keyword(small):
    with pytest.raises(SampleTooLargeError):
        run_pack(small, device="cpu", max_sample_bytes=1 << 20)  # opt: 1.5 MiB + temp 1 MiB
    report = run_pack(small, device="cpu", max_sample_bytes=3 << 20)
    assert report.inputs["x"] == (2**18,)


def test_save_samples_share_one_budget(small, tmp_path):
    """Drawn samples are all kept until written: the limit is for all of them together."""
    ep = _export(2**20)
    # each sample keeps 384 KiB (x 256, y 128) and draws y in a 256 KiB temporary: at 1 MiB
    # the third no longer fits beside the two kept
    ranges = {"n": (2**16, 2**16, 2**16)}
    with pytest.raises(SampleTooLargeError) as e:
        trtpack.save(ep, tmp_path / "s.trtpack", ranges=ranges, samples=3,
                     max_sample_bytes=1 << 20)  # fmt: skip
    assert "sample 2's inputs (after" in str(e.value)
    assert not (tmp_path / "s.trtpack").exists()
    info = trtpack.save(ep, tmp_path / "s.trtpack", ranges=ranges, samples=3,
                        max_sample_bytes=2 << 20)  # fmt: skip
    assert info.manifest.samples is not None and info.manifest.samples.count == 3


def test_save_samples_default_limit_refuses_the_issue_case(tmp_path):
    with pytest.raises(SampleTooLargeError, match="x_dim0="):
        trtpack.save(_export(2**31 - 2), tmp_path / "s.trtpack", samples=2)


def test_the_estimate_counts_the_draw_temporary(small):
    manifest = trtpack.inspect(small).manifest
    n = 1000
    # x float32: 4n, drawn as is; y float16: 2n, drawn in float32 first (4n)
    assert check_sample_size(manifest, {"x_dim0": n}, 10 * n) == 4 * n + 2 * n  # kept
    with pytest.raises(SampleTooLargeError) as e:
        check_sample_size(manifest, {"x_dim0": n}, 10 * n - 1)
    assert e.value.needed == 10 * n


def test_byte_sizes():
    assert _byte_size("4GiB") == 4 << 30
    assert _byte_size("500MB") == 500 * 10**6
    assert _byte_size("1048576") == 1 << 20
    assert _byte_size("1.5 gib") == 3 << 29
    with pytest.raises(Exception, match="not a size"):
        _byte_size("lots")


def test_unexpressed_guards_do_not_allocate_the_opt_sizes(exported, tmp_path):
    """A pack whose guards torch's code must check builds that check from inputs of the
    manifest's opt sizes: those are one element expanded, whatever the opts say."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_container import rewrite

    _, model, ep = exported("guarded")
    path = trtpack.save(ep, tmp_path / "g.trtpack").path

    def huge_opts(m):
        for g in m["guards"]:
            if "% 4" in g["source"]:
                del g["expr"]  # checked by the program's own guard code
        m["symbols"]["x_dim0"]["opt"] = 2**13  # x at opt: 2**13 x 2**14 float32, 512 MiB
        m["symbols"]["x_dim1"]["opt"] = 2**14
        m["symbols"]["y_dim0"]["opt"] = 2**13

    bad = rewrite(path, tmp_path / "huge_opts.trtpack", edit_manifest=huge_opts)
    pack = trtpack.load(bad, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    a, b = torch.randn(5, 8), torch.randn(9, 8)
    torch.testing.assert_close(pack(a, b), model(a, b), rtol=0, atol=0)
    with pytest.raises(trtpack.InputMismatchError, match="program's own guard code"):
        pack(torch.randn(4, 7), torch.randn(9, 7))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200
