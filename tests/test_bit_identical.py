"""A loaded pack gives the eager model's outputs bit for bit on the CPU (issue 9 item 6).

Kernels may take another code path for data that is less than 64-byte aligned, so every
stored tensor starts on a 64-byte boundary of the file (trtpack/format/weights.py) and is used in
place, memory-mapped."""

from __future__ import annotations

import pytest
import torch
from models import CASES

import trtpack


class ManyOddTensors(torch.nn.Module):
    """ViT-like: many small parameters of odd sizes, so that an 8-byte-aligned layout puts
    most of them off a 64-byte boundary."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(13, 37)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.LayerNorm(37), torch.nn.Linear(37, 53), torch.nn.GELU(),
                torch.nn.Linear(53, 37),
            )
            for _ in range(6)
        )  # fmt: skip
        self.head = torch.nn.Linear(37, 7)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).softmax(-1)


def _leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _assert_bit_identical(got, want, where):
    for i, (g, w) in enumerate(zip(_leaves(got), _leaves(want), strict=True)):
        assert torch.equal(g, w), f"{where} output {i}: max diff {(g - w).abs().max()}"


def test_odd_sized_model_is_bit_identical_and_aligned(tmp_path):
    torch.manual_seed(0)
    model = ManyOddTensors().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    x = torch.randn(4, 13)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    pack = trtpack.load(trtpack.save(ep, tmp_path / "odd.trtpack").path, device="cpu")
    for n in (1, 4, 17, 64):
        xs = torch.randn(n, 13)
        with torch.no_grad():
            _assert_bit_identical(pack(xs), model(xs), f"batch {n}")
    ep_loaded = pack.exported_program
    tensors = [*ep_loaded.state_dict.values(), *ep_loaded.constants.values()]
    misaligned = [t.shape for t in tensors if t.numel() and t.data_ptr() % 64]
    assert not misaligned, f"{len(misaligned)} of {len(tensors)} tensors are not 64-byte aligned"


@pytest.mark.parametrize("name", sorted(CASES))
def test_test_models_are_bit_identical(tmp_path, name):
    case = CASES[name]
    model, ep = case.export()
    pack = trtpack.load(trtpack.save(ep, tmp_path / f"{name}.trtpack").path, device="cpu")
    for args, kwargs in [(case.args, case.kwargs), *case.calls]:
        with torch.no_grad():
            _assert_bit_identical(pack(*args, **kwargs), model(*args, **kwargs), name)
