"""trtpack.load in two checkouts, A against B, on the same pack: fresh processes alternating
pair by pair (A B, B A, ...), so a machine whose speed drifts moves both alike.

    python tools/ab_load.py PACK CHECKOUT_A CHECKOUT_B [--rounds 11] [--import transformers]
        [--device cpu]

CHECKOUT_A/B: two trees of trtpack on the same filesystem (e.g. this one and
`git worktree add ../before HEAD~1`: the modules a load imports lazily are read from there,
and a tree on another filesystem was seen to move the ratio by 10 %).
Each run is a fresh Python process that imports torch, safetensors and trtpack's load path
(and ``--import`` modules: a transformers model's outputs need its pytree classes) and, on
CUDA, makes the context before the clock, then times ``trtpack.load(PACK, device=...)``
alone (to ``torch.cuda.synchronize()``); bytecode is cached per checkout. Prints each side's
median and the median of the pairwise ratios A/B (under 1: A is faster). Use it for a change
to the load path; the whole-model cold start is tools/bench_cold_start.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time
import torch, safetensors.torch
for name in {imports!r}:
    __import__(name)
import trtpack, trtpack.runtime, trtpack.program.serialize, trtpack.program.graph_module
cuda = {device!r}.startswith("cuda")
if cuda:  # CUDA's context is not the load's: made before the clock, as a server has it
    torch.zeros(1, device={device!r}); torch.cuda.synchronize()
t = time.perf_counter()
pack = trtpack.load({pack!r}, device={device!r})
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - t
print(seconds, pack.fast_path_reason)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack")
    ap.add_argument("a", help="checkout A (a folder holding trtpack/)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--rounds", type=int, default=11, help="pairs timed (after one untimed)")
    ap.add_argument("--import", dest="imports", action="append", default=[],
                    help="a module to import before the clock (repeatable)")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    trees = [os.path.abspath(args.a), os.path.abspath(args.b)]
    for tree in trees:
        if not os.path.isdir(os.path.join(tree, "trtpack")):
            ap.error(f"{tree} holds no trtpack/")
    child = CHILD.format(imports=args.imports, pack=os.path.abspath(args.pack), device=args.device)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as cache:
        for i in range(args.rounds + 1):
            for tree in trees if i % 2 else trees[::-1]:
                pycache = os.path.join(cache, str(trees.index(tree)))
                run_env = dict(env, PYTHONPATH=tree, PYTHONPYCACHEPREFIX=pycache)
                out = subprocess.run([sys.executable, "-c", child], env=run_env, cwd=tree,
                                     capture_output=True, text=True, check=False)  # fmt: skip
                if out.returncode != 0:
                    print(f"{tree}: the load failed\n{out.stderr[-3000:]}")
                    return 1
                seconds, reason = out.stdout.strip().splitlines()[-1].split(" ", 1)
                if i:  # the first pair only compiles and warms the page cache
                    times[tree].append(float(seconds))
    for tree, runs in times.items():
        shown = " ".join(f"{r * 1e3:.0f}" for r in runs)
        print(f"{tree}: median {statistics.median(runs) * 1e3:.1f} ms (runs {shown}); fast path "
              f"{'yes' if reason == 'None' else 'no: ' + reason}")  # fmt: skip
    ratios = [x / y for x, y in zip(*times.values())]
    print(
        f"A/B: median of {len(ratios)} pairwise ratios {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
