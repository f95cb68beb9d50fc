"""One rule for every writer: an existing destination is replaced only with overwrite=True
(--force); add_engine, build and remove_engine edit the named pack in place, as they are
asked to. And the rest of the API a newcomer reaches for: export_triton, push and pull from
``trtpack``, engine variants listed and removed, ``LoadedPack.to``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trtpack
from trtpack.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
PLAN = FIXTURES / "v0" / "engine" / "keywords.plan"
ENGINES = FIXTURES / "v1.3" / "keywords_engines.trtpack"


def test_save_refuses_an_existing_file_and_says_how_to_replace_it(exported, tmp_path):
    _, _, ep = exported("keywords")
    path = tmp_path / "m.trtpack"
    first = trtpack.save(ep, path)
    with pytest.raises(trtpack.OutputExistsError, match=r"exists; pass overwrite=True \(--force\)"):
        trtpack.save(ep, path, metadata={"changed": "yes"})
    assert trtpack.inspect(path).digest == first.digest  # untouched
    again = trtpack.save(ep, path, metadata={"changed": "yes"}, overwrite=True)
    assert again.manifest.metadata == {"changed": "yes"}


def test_edits_written_elsewhere_refuse_an_existing_output(tmp_path, capsys):
    pack = tmp_path / "p.trtpack"
    pack.write_bytes((FIXTURES / "v1.3" / "keywords.trtpack").read_bytes())
    taken = tmp_path / "taken.trtpack"
    taken.write_bytes(b"someone else's file")
    with pytest.raises(trtpack.OutputExistsError):
        trtpack.add_engine(pack, PLAN, variant="sm86", out=taken)
    with pytest.raises(trtpack.OutputExistsError):
        trtpack.remove_engine(ENGINES, "rtx_sm80", out=taken)
    assert taken.read_bytes() == b"someone else's file"
    assert trtpack.add_engine(pack, PLAN, variant="sm86", out=taken, overwrite=True).path == taken
    assert main(["add-engine", str(pack), str(PLAN), "--variant", "b", "-o", str(taken)]) == 1
    assert "exists; pass --force to replace it" in capsys.readouterr().err
    # in place (out None, or out = the pack itself) is what an edit is for
    assert trtpack.add_engine(pack, PLAN, variant="here", out=pack).path == pack


def test_build_and_the_cli_share_default_targets(exported, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    from trtpack.writing.build import DEFAULT_TARGETS

    _, _, ep = exported("one_tensor")
    pack = trtpack.save(ep, tmp_path / "m.trtpack").path
    assert main(["build", str(pack), "-o", str(tmp_path / "b.trtpack"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compute_capabilities"] == list(DEFAULT_TARGETS)
    assert main(["build", str(pack), "-o", str(tmp_path / "b.trtpack")]) == 1  # exists
    assert "exists; pass --force" in capsys.readouterr().err


def test_list_and_remove_engine_variants(tmp_path, capsys):
    pack = tmp_path / "e.trtpack"
    pack.write_bytes(ENGINES.read_bytes())
    trtpack.add_engine(pack, PLAN, variant="sm86")
    assert [v.name for v in trtpack.engine_variants(pack)] == ["rtx_sm80", "sm86"]
    assert main(["engines", str(pack), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["compute_capabilities"]) for r in rows] == [
        ("rtx_sm80", ["8.0"]), ("sm86", ["8.6"])
    ]  # fmt: skip
    before = trtpack.inspect(pack).manifest
    out = tmp_path / "one.trtpack"
    info = trtpack.remove_engine(pack, "sm86", out=out)
    assert [v.name for v in info.manifest.engines] == ["rtx_sm80"]
    # its plan is gone; every other member is the same bytes
    gone = {e.member for v in before.engines if v.name == "sm86" for e in v.engines}
    assert set(before.members) - set(info.manifest.members) == gone
    for name, m in info.manifest.members.items():
        assert m.sha256 == before.members[name].sha256
    trtpack.verify(out)
    assert main(["remove-engine", str(pack), "rtx_sm80"]) == 0  # in place
    assert "engine variants sm86" in capsys.readouterr().out
    with pytest.raises(trtpack.EngineError, match=r"no engine variant 'nope' \(variants: sm86\)"):
        trtpack.remove_engine(pack, "nope")
    assert main(["engines", str(pack)]) == 0
    assert capsys.readouterr().out.startswith("sm86  tensorrt_rtx 1.6.1.120  GPUs 8.6")


def test_the_last_engine_of_an_engines_only_pack_stays(tmp_path):
    bare = trtpack.migrate(PLAN, tmp_path / "bare.trtpack",
                           inputs=["x:float32[b=1..64@4,6]", "mask:float32[b,6]", "bias:float32[6]"],
                           outputs=["output0:float32[b,6]"]).path  # fmt: skip
    (v,) = trtpack.engine_variants(bare)
    with pytest.raises(trtpack.EngineError, match="would leave nothing to run"):
        trtpack.remove_engine(bare, v.name)


def test_integrations_are_part_of_the_api():
    from trtpack.integrations import oci, triton

    assert trtpack.export_triton is triton.export_triton
    assert (trtpack.push, trtpack.pull) == (oci.push, oci.pull)
    for name in ("export_triton", "push", "pull", "engine_variants", "remove_engine"):
        assert name in trtpack.__all__ and getattr(trtpack, name).__doc__


def test_loaded_pack_to_loads_again_with_the_same_options(small_pack, tmp_path):
    pack = trtpack.load(small_pack, device="cpu", inference_mode=True)
    assert pack.to("cpu") is pack
    moved = pack.to(torch.device("cpu", 0))  # another device spec: loaded again there
    assert moved is not pack and moved.device == torch.device("cpu", 0)
    assert moved.inference_mode is True and moved.digest == pack.digest
    if torch.version.cuda is None:
        with pytest.raises(trtpack.DeviceError, match="CPU-only build"):
            pack.to("cuda")
    copy = tmp_path / "k.trtpack"
    copy.write_bytes(small_pack.read_bytes())
    loaded = trtpack.load(copy, device="cpu")
    trtpack.add_engine(copy, PLAN, variant="sm86")  # the file changes under the loaded pack
    with pytest.raises(trtpack.ManifestError, match="changed on disk since it was loaded"):
        loaded.to(torch.device("cpu", 0))
