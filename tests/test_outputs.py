"""What a loaded pack's outputs are: tensors free of autograd state by default."""

from __future__ import annotations

from pathlib import Path

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


def test_outputs_carry_no_autograd_state_by_default(tmp_path: Path) -> None:
    pack = trtpack.load(_pack(tmp_path), device="cpu")
    out = pack(torch.randn(2, 4))
    assert out["logits"].requires_grad is False
    assert out["logits"].is_inference() and out["best"].is_inference()


def test_inference_mode_off_runs_in_the_callers_grad_mode(tmp_path: Path) -> None:
    pack = trtpack.load(_pack(tmp_path), device="cpu", inference_mode=False)
    out = pack(torch.randn(2, 4))
    assert out["logits"].requires_grad is True
    assert not out["logits"].is_inference()
    with torch.no_grad():
        assert pack(torch.randn(2, 4))["logits"].requires_grad is False
