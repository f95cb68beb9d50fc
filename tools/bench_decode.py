"""Decode-sized calls on CUDA (issue 27.4): eager, a loaded pack, the pack with CUDA graphs
(``load(cuda_graphs=...)``) and ``torch.compile(mode="reduce-overhead")``, in one process.

    python tools/bench_decode.py [--calls 300] [--hidden 4096] [--inter 11008]
        [--llama-hidden 256] [--llama-layers 4] [--no-compile] [--only mlp|llama]

Two workloads:

- ``mlp``: a bf16 SwiGLU MLP (``down(silu(gate(x)) * up(x))``, no bias; Llama-2-7B's sizes
  by default) at batch 1;
- ``llama``: the decode step of tests/llm.py's Llama with a static KV cache (float32, one
  token at a fixed position), the pack being the two-entry ``prefill``/``decode`` pack and
  graphs on ``decode`` only.

Each variant is timed two ways, median over ``--calls`` calls after a warm-up, all under
``torch.inference_mode()``: **latency** (each call followed by ``torch.cuda.synchronize()``,
clock around both) and **throughput** (``--calls`` calls back to back, one synchronize, the
time divided by the calls: what a CPU-bound serving loop sees). Ratios are against eager;
outputs are compared with the uncaptured pack's. Needs a CUDA GPU (and transformers for the
Llama).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/llm.py


def _time(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(median latency, throughput per call), in µs."""
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        lat.append(time.perf_counter() - t)
    rounds = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t) / calls)
    return statistics.median(lat) * 1e6, statistics.median(rounds) * 1e6


class _Rows:
    """Each variant's row printed as soon as it is measured (a run cut short by its timeout
    keeps what it measured); ratios against the eager row."""

    def __init__(self, title: str) -> None:
        print(f"== {title}", flush=True)
        self.base: tuple[float, float] | None = None

    def __setitem__(self, name: str, value: tuple[float, float] | str) -> None:
        if isinstance(value, str):
            print(f"  {name:38} {value}", flush=True)
            return
        lat, thr = value
        if name == "eager":
            self.base = value
        ratio = ""
        if self.base is not None:
            ratio = (f"   vs eager: latency {lat / self.base[0]:4.2f}x, back-to-back "
                     f"{thr / self.base[1]:4.2f}x")  # fmt: skip
        print(f"  {name:38} latency {lat:8.1f} µs   back-to-back {thr:8.1f} µs/call{ratio}",
              flush=True)  # fmt: skip


def _compiled(fn: Callable[[], object], calls: int) -> tuple[float, float] | str:
    import torch

    try:
        t = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        warm = time.perf_counter() - t
        lat, thr = _time(fn, calls)
    except Exception as e:  # the row says why; the others still run
        return f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    print(f"  (torch.compile: first 3 calls, compilation included: {warm:.1f} s)")
    return lat, thr


def bench_mlp(args: argparse.Namespace, folder: Path) -> None:
    import torch

    import trtpack

    class SwiGLU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate = torch.nn.Linear(args.hidden, args.inter, bias=False)
            self.up = torch.nn.Linear(args.hidden, args.inter, bias=False)
            self.down = torch.nn.Linear(args.inter, args.hidden, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))

    torch.manual_seed(0)
    model = SwiGLU().to(device="cuda", dtype=torch.bfloat16).eval()
    x = torch.randn(1, args.hidden, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    path = trtpack.save(ep, folder / "mlp.trtpack").path
    pack = trtpack.load(path, device="cuda")
    graphs = trtpack.load(path, device="cuda", cuda_graphs=True)
    with torch.inference_mode():
        same = torch.equal(graphs(x), pack(x))
        rows = _Rows(f"bf16 SwiGLU MLP {args.hidden}->{args.inter}->{args.hidden}, batch 1")
        rows["eager"] = _time(lambda: model(x), args.calls)
        rows["pack(x)"] = _time(lambda: pack(x), args.calls)
        rows["pack(x), cuda_graphs=True"] = _time(lambda: graphs(x), args.calls)
        rows["pack.module(x) (no check, no graphs)"] = _time(lambda: pack.module(x), args.calls)
        if not args.no_compile:
            compiled = torch.compile(model, mode="reduce-overhead")
            rows['torch.compile("reduce-overhead")'] = _compiled(lambda: compiled(x), args.calls)
    g = graphs.cuda_graphs
    print(f"  (graphs: {g.captures} captured, {g.replays} replays, reason {g.reason}; output "
          f"equal to the uncaptured pack's: {same})")  # fmt: skip


def bench_llama(args: argparse.Namespace, folder: Path) -> None:
    import llm
    import torch

    import trtpack

    make = llm.llama(hidden=args.llama_hidden, layers=args.llama_layers, vocab=1024)
    programs = llm.export_entry_points(make())
    path = trtpack.save(programs, folder / "llm.trtpack").path
    pack = trtpack.load(path, device="cuda")
    graphs = trtpack.load(path, device="cuda", cuda_graphs=["decode"])
    first = make()
    first.model.to("cuda")  # the model the closure holds: the next wrapper's cache is on CUDA
    eager = make()
    ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
    tok = torch.tensor([[7]], device="cuda")
    pos = torch.tensor([4], device="cuda")
    rows = _Rows(f"Llama decode step (tests/llm.py, hidden {args.llama_hidden}, "
                 f"{args.llama_layers} layers, float32, static cache)")  # fmt: skip
    with torch.inference_mode():
        for p in (pack, graphs):
            p["prefill"](input_ids=ids, cache_position=torch.arange(4, device="cuda"))
        a = pack["decode"](input_ids=tok, cache_position=pos)
        b = graphs["decode"](input_ids=tok, cache_position=pos)
        diff = float((a - b).abs().max())
        print(f"  largest logit difference, graphs vs the uncaptured pack: {diff:.2e}")
        eager(input_ids=ids, cache_position=torch.arange(4, device="cuda"))
        rows["eager"] = _time(lambda: eager(input_ids=tok, cache_position=pos), args.calls)
        d, gd = pack["decode"], graphs["decode"]
        rows['pack["decode"]'] = _time(lambda: d(input_ids=tok, cache_position=pos), args.calls)
        rows['pack["decode"], cuda_graphs=["decode"]'] = _time(
            lambda: gd(input_ids=tok, cache_position=pos), args.calls
        )
        if not args.no_compile:
            compiled = torch.compile(eager, mode="reduce-overhead")
            rows['torch.compile("reduce-overhead")'] = _compiled(
                lambda: compiled(input_ids=tok, cache_position=pos), args.calls
            )
    g = gd.cuda_graphs
    print(f"  (graphs: {g.captures} captured, {g.replays} replays, reason {g.reason})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--llama-hidden", type=int, default=256)
    ap.add_argument("--llama-layers", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--only", choices=("mlp", "llama"))
    args = ap.parse_args()
    import platform

    import torch

    if not torch.cuda.is_available():
        print("bench_decode: needs a CUDA GPU")
        return 1
    print(f"machine: {torch.cuda.get_device_name()}; torch {torch.__version__}, python "
          f"{platform.python_version()}; median of {args.calls} calls")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "mlp"):
            bench_mlp(args, Path(tmp))
        if args.only in (None, "llama"):
            try:
                import transformers  # noqa: F401
            except ImportError as e:
                print(f"== Llama decode step: skipped ({e})")
            else:
                bench_llama(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
