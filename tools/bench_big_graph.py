"""Big graphs: save and load of a program of N nodes against torch.export, in one run
(issue 27, item 7).

    python tools/bench_big_graph.py [--nodes 10000 50000] [--repeat 3] [--profile]

The program is a chain of ``sin`` and ``mul`` nodes on a small tensor (weights are tiny: only
the graph's size counts). Every timing is in this process, best of ``--repeat``, after one
untimed save and load of each kind (the first load in a process pays torch's imports).
Printed too: where trtpack.load's time goes (the member's JSON decoding, the graph check,
the direct build with its code generation) and how often torch.fx generated the module's
code in one load. ``--profile``: cProfile's top functions of one save and one load.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trtpack  # noqa: E402
from trtpack.format.container import PackReader  # noqa: E402
from trtpack.program.gcpause import paused_gc  # noqa: E402
from trtpack.program.graph_check import check_graph  # noqa: E402


def chain(nodes: int) -> torch.export.ExportedProgram:
    class Chain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(nodes // 2):
                x = torch.sin(x) * self.w
            return x

    return torch.export.export(Chain(), (torch.randn(4, 8),))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def paused(fn, *args):
    with paused_gc():
        return fn(*args)


def profile(fn, lines: int = 18) -> str:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(lines)
    return out.getvalue()


def codegen_count(path: Path) -> int:
    """How many times torch.fx generates code for a graph of more than 10 nodes in one load."""
    graph_cls = torch.fx.Graph
    original = graph_cls.python_code
    calls = []

    def counted(self, *args, **kwargs):
        if len(self.nodes) > 10:
            calls.append(1)
        return original(self, *args, **kwargs)

    graph_cls.python_code = counted
    try:
        trtpack.load(path, device="cpu")
    finally:
        graph_cls.python_code = original
    return len(calls)


def one(n: int, d: Path, repeat: int, with_profile: bool) -> None:
    t = time.perf_counter()
    ep = chain(n)
    export_s = time.perf_counter() - t
    pack, pt2 = d / f"g{n}.trtpack", d / f"g{n}.pt2"
    trtpack.save(ep, pack, overwrite=True)
    torch.export.save(ep, pt2)
    trtpack.load(pack, device="cpu")
    torch.export.load(pt2).module()
    save = best(lambda: trtpack.save(ep, pack, overwrite=True), repeat)
    tsave = best(lambda: torch.export.save(ep, pt2), repeat)
    load = best(lambda: trtpack.load(pack, device="cpu"), repeat)
    tload = best(lambda: torch.export.load(pt2).module(), repeat)
    with PackReader(pack) as r:
        raw = r.read("program/graph.json")
    decode = best(lambda: paused(json.loads, raw), repeat)  # as the load decodes it
    parsed = json.loads(raw)
    check = best(lambda: check_graph(parsed, "program/graph.json"), repeat)
    loaded = trtpack.load(pack, device="cpu")
    x = torch.randn(4, 8)
    torch.testing.assert_close(loaded(x), ep.module()(x))
    how = loaded.fast_path_reason or "fast path"
    print(f"\n{len(ep.graph.nodes)} nodes (export {export_s:.1f} s, graph.json "
          f"{len(raw) / 2**20:.1f} MiB), {how}")  # fmt: skip
    print(f"  trtpack.save        {save:7.3f} s   torch.export.save {tsave:7.3f} s   "
          f"ratio {save / tsave:5.2f}x")  # fmt: skip
    print(
        f"  trtpack.load        {load:7.3f} s   torch.export.load + module() "
        f"{tload:7.3f} s   ratio {load / tload:5.2f}x ({tload / load:.1f}x faster)"
    )
    print(f"  of the load: JSON decoding {decode:.3f} s, graph check {check:.3f} s; "
          f"torch.fx code generated {codegen_count(pack)} time(s) per load")  # fmt: skip
    if with_profile:
        print(profile(lambda: trtpack.save(ep, pack, overwrite=True)))
        print(profile(lambda: trtpack.load(pack, device="cpu")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for n in args.nodes:
            one(n, d, args.repeat, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
