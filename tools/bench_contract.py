"""The per-call input check against the input checks of ``ep.module()``, in one run.

    .venv/bin/python tools/bench_contract.py [--calls 20000]

For each model: the time per call of trtpack's contract check alone; of ep.module() with its
guards (torch's default) and without them; their difference is what torch's own checks cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from models import CASES

import trtpack
from trtpack.program import runnable


def per_call(fn, calls: int) -> float:
    for _ in range(min(200, calls)):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    print(
        f"{'model':14s} {'trtpack check':>14s} {'ep.module() guards':>19s} "
        f"{'ep.module() call':>17s} {'pack call':>10s} {'guards/check':>13s}"
    )
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in ("one_tensor", "keywords", "derived", "nested", "scalars", "guarded"):
            case = CASES[name]
            _, ep = case.export()
            path = Path(tmp) / f"{name}.trtpack"
            trtpack.save(ep, path)
            pack = trtpack.load(path, device="cpu")
            a, k = case.args, case.kwargs
            checked, unchecked = ep.module(), runnable(ep)
            t_check = per_call(lambda p=pack, a=a, k=k: p.check_inputs(*a, **k), args.calls)
            t_mod = per_call(lambda m=checked, a=a, k=k: m(*a, **k), args.calls // 4)
            t_raw = per_call(lambda m=unchecked, a=a, k=k: m(*a, **k), args.calls // 4)
            t_pack = per_call(lambda p=pack, a=a, k=k: p(*a, **k), args.calls // 4)
            guards = max(t_mod - t_raw, 0.0)
            print(
                f"{name:14s} {t_check * 1e6:11.1f} us {guards * 1e6:16.1f} us "
                f"{t_mod * 1e6:14.1f} us {t_pack * 1e6:7.1f} us {guards / t_check:12.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
