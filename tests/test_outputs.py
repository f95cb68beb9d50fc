"""What a loaded pack's outputs are: what ep.module()'s are, by default; inference tensors
with load(..., inference_mode=True)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trtpack


class Detector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.lin(x) * 2
        return {"logits": logits, "best": logits.argmax(-1)}


def _pack(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    ep = torch.export.export(Detector().eval(), (torch.randn(2, 4),))
    path = tmp_path / "m.trtpack"
    trtpack.save(ep, path)
    return path


def test_outputs_are_what_ep_module_gives_by_default(tmp_path: Path) -> None:
    """In-place updates and autograd work on the outputs, as on ep.module()'s; under
    no_grad no autograd state is kept."""
    path = _pack(tmp_path)
    pack = trtpack.load(path, device="cpu")
    module = trtpack.load(path, device="cpu").exported_program.module()
    x = torch.randn(2, 4)
    out, ref = pack(x), module(x)
    for got, want in ((out["logits"], ref["logits"]), (out["best"], ref["best"])):
        assert (got.is_inference(), got.requires_grad) == (want.is_inference(), want.requires_grad)
    assert out["logits"].requires_grad and not out["logits"].is_inference()
    out["best"].add_(1)  # an inference tensor refuses this outside inference mode
    out["logits"].sum().backward()  # and autograd reaches the pack's own weights
    with torch.no_grad():
        assert pack(x)["logits"].requires_grad is False


def test_inference_mode_on_gives_inference_tensors(tmp_path: Path) -> None:
    pack = trtpack.load(_pack(tmp_path), device="cpu", inference_mode=True)
    out = pack(torch.randn(2, 4))
    assert out["logits"].requires_grad is False
    assert out["logits"].is_inference() and out["best"].is_inference()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        out["best"].add_(1)


class Outputs(torch.nn.Module):
    def forward(self, x: torch.Tensor):
        return {"logits": x * 2, "hidden_states": [x + 1, x - 1]}, x.sum()


def test_outputs_are_named_by_their_key_path_by_every_route(tmp_path: Path) -> None:
    """v0.1 named them by graph node (``mul``, ``argmax``): those became the MLflow signature
    and the Triton config."""
    ep = torch.export.export(Detector().eval(), (torch.randn(2, 4),))
    info = trtpack.save(ep, tmp_path / "d.trtpack")
    assert [(o.name, o.path) for o in info.manifest.outputs] == [
        ("logits", "output['logits']"), ("best", "output['best']"),
    ]  # fmt: skip
    ep = torch.export.export(Outputs(), (torch.randn(2, 4),))
    info = trtpack.save(ep, tmp_path / "o.trtpack")
    names = ["output_0.logits", "output_0.hidden_states.0", "output_0.hidden_states.1", "output_1"]
    assert [o.name for o in info.manifest.outputs] == names
    torch.export.save(ep, tmp_path / "o.pt2")  # the torch-free derivation names them alike
    assert [o.name for o in trtpack.migrate(tmp_path / "o.pt2", tmp_path / "m.trtpack")
            .manifest.outputs] == names  # fmt: skip


def test_output_names_override(tmp_path: Path) -> None:
    ep = torch.export.export(Detector().eval(), (torch.randn(2, 4),))
    info = trtpack.save(ep, tmp_path / "a.trtpack", output_names=["scores", "label"])
    assert [o.name for o in info.manifest.outputs] == ["scores", "label"]
    info = trtpack.save(ep, tmp_path / "b.trtpack", output_names={"output['best']": "label"})
    assert [o.name for o in info.manifest.outputs] == ["logits", "label"]
    for bad, match in [
        (["a"], "1 names for 2 outputs"),
        (["a", "a"], "not unique"),
        (["a", "has space"], "must match"),
        ({"nope": "x"}, "not outputs"),
    ]:
        with pytest.raises(trtpack.ManifestError, match=match):
            trtpack.save(ep, tmp_path / "c.trtpack", output_names=bad)
    with pytest.raises(TypeError):
        trtpack.save(ep, tmp_path / "c.trtpack", output_names="logits")
    assert not (tmp_path / "c.trtpack").exists()
