"""Multi-entry packs (format 1.4): the size of one prefill+decode pack against two single
packs, and the load time of both entry points against one.

    PYTHONPATH=. .venv/bin/python tools/bench_entry_points.py [--hidden 256 --layers 4]

A transformers Llama (tests/llm.py) with a static cache, exported as prefill and decode from
the same module. Load times are measured in fresh processes (the first load in a process
pays a fixed cost), the two packs' runs alternating, and again warm in the same process; the
median of --repeat runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MEASURE = """
import gc, json, sys, time
import torch, trtpack
path, device = sys.argv[1], sys.argv[2]
if device.startswith("cuda"):
    torch.zeros(1, device=device); torch.cuda.synchronize()  # CUDA's context: not on the clock
out = []
pack = None
for _ in range(2):
    pack = None  # the first load's tensors freed before the second (not two models in memory)
    # its graphs are reference cycles: freed here, off the clock, not by a full pass of the
    # collector that would otherwise land inside whichever load came next (~0.1 s on dev)
    gc.collect()
    t0 = time.perf_counter()
    pack = trtpack.load(path, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out.append(time.perf_counter() - t0)
print(json.dumps({"first": out[0], "warm": out[1], "entry_points": list(pack.entry_points)}))
"""


def _load_times(paths: list[Path], repeat: int, device: str) -> list[dict[str, float]]:
    """Each pack's median load times, from fresh processes that alternate pack by pack
    (A B, B A, ...): a page cache or a machine whose speed drifts moves both alike."""
    runs: list[list[dict[str, float]]] = [[] for _ in paths]
    for i in range(repeat):
        order = list(range(len(paths)))
        for k in order if i % 2 == 0 else order[::-1]:
            r = subprocess.run([sys.executable, "-c", MEASURE, str(paths[k]), device],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode != 0:
                raise SystemExit(f"loading {paths[k]} failed:\n{r.stderr[-3000:]}")
            runs[k].append(json.loads(r.stdout.strip().splitlines()[-1]))
    return [{key: statistics.median(run[key] for run in rs) for key in ("first", "warm")}
            for rs in runs]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the packs load (cpu, cuda)")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="write the packs into DIR and keep them (e.g. for "
                             "tools/profile_load.py --stages)")  # fmt: skip
    args = parser.parse_args()

    import llm

    import trtpack

    programs = llm.export_entry_points(llm.llama(args.hidden, args.layers, args.vocab)())
    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        both, prefill, decode = d / "llm.trtpack", d / "prefill.trtpack", d / "decode.trtpack"
        trtpack.save(programs, both, overwrite=keep is not None)
        trtpack.save(programs["prefill"], prefill, overwrite=keep is not None)
        trtpack.save(programs["decode"], decode, overwrite=keep is not None)
        sizes = {p.name: p.stat().st_size for p in (both, prefill, decode)}
        two = sizes["prefill.trtpack"] + sizes["decode.trtpack"]
        params = sum(t.numel() for t in programs["prefill"].state_dict.values())
        import torch

        print(f"Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
              f"{params / 1e6:.1f} M parameters; torch {torch.__version__}")  # fmt: skip
        print(f"pack sizes: prefill+decode in one pack {sizes['llm.trtpack'] / 2**20:.2f} MiB; "
              f"two single packs {two / 2**20:.2f} MiB "
              f"({sizes['prefill.trtpack'] / 2**20:.2f} + {sizes['decode.trtpack'] / 2**20:.2f}); "
              f"ratio {sizes['llm.trtpack'] / two:.2f}")  # fmt: skip
        one, multi = _load_times([prefill, both], args.repeat, args.device)
        print(
            f"load, first in a process (median of {args.repeat}): one entry point "
            f"{one['first'] * 1e3:.0f} ms, both entry points {multi['first'] * 1e3:.0f} ms"
        )
        print(f"load, warm: one entry point {one['warm'] * 1e3:.0f} ms, both entry points "
              f"{multi['warm'] * 1e3:.0f} ms")  # fmt: skip
        print(f"both / one ({args.device}): first {multi['first'] / one['first']:.2f}x, "
              f"warm {multi['warm'] / one['warm']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
