"""`trtpack inspect` against getting the same facts through torch.export.load, in one run,
on a small pack and on a pack with a 1 GiB member (inspect must not grow with the pack).

    .venv/bin/python tools/bench_inspect.py [--gib 1] [--repeat 5]

Each timing is a whole process (python start-up included), median of N, as a user runs it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import trtpack

TORCH_FACTS = r"""
import sys, torch
ep = torch.export.load(sys.argv[1])
names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
ph = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
print([(n, ph[n].dtype, tuple(ph[n].shape)) for n in names], ep.range_constraints)
"""


def timed(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def export(n_floats: int) -> torch.export.ExportedProgram:
    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.zeros(n_floats // 64, 64))

        def forward(self, idx):
            return self.table[idx]

    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(
        Big(), (torch.zeros(8, dtype=torch.long),), dynamic_shapes=({0: batch},)
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        results = {}
        for label, n in (
            ("small (4 KiB)", 1024),
            (f"{args.gib:g} GiB member", int(args.gib * 2**28)),
        ):
            ep = export(n)
            pack, pt2 = d / f"{n}.trtpack", d / f"{n}.pt2"
            trtpack.save(ep, pack)
            torch.export.save(ep, pt2)
            del ep
            size = pack.stat().st_size
            t_cli = timed([py, "-m", "trtpack", "inspect", str(pack)], args.repeat)
            t_json = timed([py, "-m", "trtpack", "inspect", "--json", str(pack)], args.repeat)
            t_torch = timed([py, "-c", TORCH_FACTS, str(pt2)], args.repeat)
            t0 = time.perf_counter()
            for _ in range(20):
                trtpack.inspect(pack)
            t_api = (time.perf_counter() - t0) / 20
            results[label] = (size, t_cli, t_json, t_torch, t_api)
    print(
        f"{'pack':18s} {'size':>10s} {'trtpack inspect':>16s} {'--json':>8s} "
        f"{'torch.export.load':>18s} {'inspect() in-process':>21s}"
    )
    for label, (size, cli, js, tl, api) in results.items():
        print(
            f"{label:18s} {size / 2**20:8.1f}MB {cli * 1000:13.0f} ms {js * 1000:5.0f} ms "
            f"{tl * 1000:15.0f} ms {api * 1000:18.2f} ms"
        )
    (small, big) = results.values()
    print("ratios:")
    print(f"  1 GiB pack: torch.export.load / trtpack inspect   {big[3] / big[1]:6.1f}x")
    print(f"  trtpack inspect, 1 GiB pack / small pack           {big[1] / small[1]:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
