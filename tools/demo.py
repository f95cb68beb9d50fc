"""End-to-end demo: export -> save (no inputs argument) -> inspect -> load -> run -> compare.

Run it with ``tools/demo.sh`` (sets up .venv first). Writes out/demo.trtpack.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import trtpack

OUT = Path(__file__).resolve().parent.parent / "out"


class Detector(torch.nn.Module):
    """A small conv net with a keyword input: a per-sample score mask."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.features(x)) * mask
        return {"logits": logits, "best": logits.argmax(dim=1)}


def step(text: str) -> None:
    print(f"\n== {text}")


def main() -> int:
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    path = OUT / "demo.trtpack"
    model = Detector().eval()

    step("export with a dynamic batch shared by x and the keyword input mask")
    batch = torch.export.Dim("batch", min=1, max=64)
    x, mask = torch.randn(8, 3, 32, 32), torch.ones(8, 10)
    ep = torch.export.export(
        model, (x,), {"mask": mask}, dynamic_shapes={"x": {0: batch}, "mask": {0: batch}}
    )

    step(f"trtpack.save(ep, {path.name!r}) — no inputs argument")
    info = trtpack.save(ep, path, metadata={"model": "detector-demo"}, overwrite=True)
    print(f"wrote {path} ({info.file_size} bytes), digest {info.digest}")

    step("trtpack inspect (a separate process; it does not import torch)")
    subprocess.run([sys.executable, "-m", "trtpack", "inspect", str(path)], check=True)
    subprocess.run([sys.executable, "-m", "trtpack", "verify", str(path)], check=True)

    step("trtpack.load and call it like the model")
    pack = trtpack.load(path)
    print(pack)
    worst = 0.0
    for n in (1, 5, 64):
        xb, mb = torch.randn(n, 3, 32, 32), torch.rand(n, 10)
        got, want = pack(xb, mask=mb), model(xb, mask=mb)
        diff = (got["logits"] - want["logits"]).abs().max().item()
        same_best = torch.equal(got["best"], want["best"])
        print(f"batch {n:2d}: max |pack - eager| = {diff:.2e}, argmax equal: {same_best}")
        worst = max(worst, diff)
        if not same_best or diff > 1e-5:
            print("MISMATCH against eager")
            return 1

    step("a call outside the contract is refused before anything runs")
    try:
        pack(torch.randn(65, 3, 32, 32), mask=torch.ones(65, 10))
    except trtpack.InputMismatchError as e:
        print(f"InputMismatchError: {e}")
    else:
        print("expected an InputMismatchError")
        return 1

    print(f"\ndemo OK: outputs match eager (max abs diff {worst:.1e}); pack at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
