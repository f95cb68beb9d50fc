"""Where a load's time goes: ``trtpack.load`` + the first call, profiled in this process.

    python tools/profile_load.py PACK [--device cuda] [--top 30] [--verify/--no-verify]

Prints the wall time of the load and of the first call (inputs drawn at the manifest's opts),
then cProfile's functions by cumulative time and by own time. Run it in a fresh process after
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True)
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
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    pack = trtpack.load(ns.pack, device=dev, verify=ns.verify)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    loaded = time.perf_counter()
    args, kwargs = pack.call_of(leaves)
    pack(*args, **kwargs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    profile.disable()
    done = time.perf_counter()
    fast = pack.fast_path_reason or "yes"
    print(f"load {loaded - start:.3f} s, first call {done - loaded:.3f} s, "
          f"fast path: {fast} ({ns.device}, verify={ns.verify})")  # fmt: skip
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(key).print_stats(ns.top)
        print(f"--- by {key} ---")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
