"""The per-call input check against the input checks of ``ep.module()``, in one run.

    .venv/bin/python tools/bench_contract.py [--calls 60000] [--rounds 15]

For each model: the time per call of trtpack's contract check alone; of ep.module() with its
guards (torch's default) and without them; their difference is what torch's own checks cost.
The four take turns in each round and each time is the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from models import CASES

import trtpack
from trtpack.program.serialize import runnable


def per_call(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def interleaved(fns: dict, calls: dict, rounds: int) -> dict:
    """Median per-call time of each function, the functions taking turns in every round
    (a noisy neighbour then slows all of them alike, not one)."""
    for name, fn in fns.items():
        for _ in range(min(200, calls[name])):
            fn()
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(per_call(fn, calls[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60000, help="check calls per model, in all")
    ap.add_argument("--rounds", type=int, default=15)
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
            fns = {
                "check": lambda p=pack, a=a, k=k: p.check_inputs(*a, **k),
                "mod": lambda m=checked, a=a, k=k: m(*a, **k),
                "raw": lambda m=unchecked, a=a, k=k: m(*a, **k),
                "pack": lambda p=pack, a=a, k=k: p(*a, **k),
            }
            n = {"check": args.calls // args.rounds, **dict.fromkeys(("mod", "raw", "pack"),
                 args.calls // args.rounds // 4)}  # fmt: skip
            t = interleaved(fns, n, args.rounds)
            t_check, t_mod, t_raw, t_pack = t["check"], t["mod"], t["raw"], t["pack"]
            guards = max(t_mod - t_raw, 0.0)
            print(
                f"{name:14s} {t_check * 1e6:11.1f} us {guards * 1e6:16.1f} us "
                f"{t_mod * 1e6:14.1f} us {t_pack * 1e6:7.1f} us {guards / t_check:12.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
