"""Where a load's time goes: ``trtpack.load`` + the first call, profiled in this process.

    python tools/profile_load.py PACK [--device cuda] [--top 30] [--verify/--no-verify] [--stages]

Prints the wall time of the load and of the first call (inputs drawn at the manifest's opts),
then cProfile's functions by cumulative time and by own time. ``--stages`` instead: no
profiler, the wall time of each stage of the load in call order (each entry point's
``_load_entry``, its graph read and check, its weights, its module's build) and each pass
of Python's cyclic collector that ran inside the load. Run it in a fresh process after
CUDA is initialised (the script does that before the clock), the way bench_cold_start.py
measures, so imports of torch and CUDA's context are not counted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--stages", action="store_true", help="stage times, no profiler")
    ns = ap.parse_args()

    import torch

    import trtpack
    from trtpack.samples import sample_leaves, sample_symbols

    dev = torch.device(ns.device)
    if dev.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=dev)
        torch.cuda.synchronize()
    try:  # transformers registers its output classes with torch's pytree at import
        import transformers.modeling_outputs  # noqa: F401
    except ImportError:
        pass
    manifest = trtpack.inspect(ns.pack).manifest
    leaves = sample_leaves(manifest, sample_symbols(manifest, "opt", random.Random(0)),
                           torch.Generator().manual_seed(0), dev)  # fmt: skip
    stages, stop = _time_stages() if ns.stages else (None, None)
    profile = cProfile.Profile()
    start = time.perf_counter()
    if stages is None:
        profile.enable()
    pack = trtpack.load(ns.pack, device=dev, verify=ns.verify)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    loaded = time.perf_counter()
    if stop is not None:
        stop()  # the first call's collector passes are not the load's
    args, kwargs = pack.call_of(leaves)
    pack(*args, **kwargs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    profile.disable()
    done = time.perf_counter()
    fast = pack.fast_path_reason or "yes"
    print(f"load {loaded - start:.3f} s, first call {done - loaded:.3f} s, "
          f"fast path: {fast} ({ns.device}, verify={ns.verify})")  # fmt: skip
    if stages is not None:
        small = [ms for name, ms in stages if name.startswith("gc") and ms < 1]
        for name, ms in stages:
            if not (name.startswith("gc") and ms < 1):
                print(f"  {name:<28} {ms:8.1f} ms")
        print(f"  and {len(small)} collector passes under 1 ms ({sum(small):.1f} ms)")
        return 0
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(key).print_stats(ns.top)
        print(f"--- by {key} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    return 0


def _time_stages() -> tuple[list[tuple[str, float]], Callable[[], None]]:
    """Wrap the load's stages (module functions, looked up at call time) and the cyclic
    collector with timers: the list fills in the order each stage ends, until the function
    returned with it is called."""
    import functools
    import gc

    from trtpack import runtime
    from trtpack.program import graph_module, serialize

    record: list[tuple[str, float]] = []

    def timed(module: object, name: str) -> None:
        inner = getattr(module, name)

        @functools.wraps(inner)
        def wrapper(*args: object, **kwargs: object) -> object:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                record.append((name, (time.perf_counter() - t) * 1e3))

        setattr(module, name, wrapper)

    timed(runtime, "_load_entry")  # one entry point: all of what follows for it
    timed(runtime, "read_checked_graph")  # on the graph thread, beside the weights
    timed(serialize, "load_state")  # the weights, read (and hashed) and moved
    timed(graph_module, "build_module")  # the direct build
    began = [0.0]

    def collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            record.append((f"gc generation {info['generation']}",
                           (time.perf_counter() - began[0]) * 1e3))  # fmt: skip

    gc.callbacks.append(collector)
    return record, lambda: gc.callbacks.remove(collector)


if __name__ == "__main__":
    raise SystemExit(main())
