"""The long fuzz campaign: damaged and crafted packs through every reader.

    .venv/bin/python tools/fuzz.py                       # 100,000 iterations, 2 workers
    .venv/bin/python tools/fuzz.py -n 5000 --workers 1 --seed 7 --keep /tmp/findings

Each worker runs ``tests/fuzzing.py``'s campaign with its own seed; the summary prints
iterations/s, how many runs ended in a TrtpackError / no error, and every unexpected exception
or hang (with the damaged file kept under ``--keep``). Exits 1 when anything unexpected
escaped. The README gives the figures of the last long run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _worker(args: tuple[int, int, str, str | None, float | None]) -> dict:
    n, seed, seeds_dir, keep, seconds = args
    import fuzzing

    seeds = fuzzing.make_seeds(Path(seeds_dir))
    scratch = Path(tempfile.mkdtemp(prefix=f"trtpack-fuzz-{seed}-"))

    def progress(r: fuzzing.Report) -> None:
        print(
            f"  worker {seed}: {r.iterations}/{n}  {r.iterations / r.seconds:.0f} it/s  "
            f"unexpected {len(r.unexpected)}  hangs {len(r.hangs)}",
            file=sys.stderr,
            flush=True,
        )

    r = fuzzing.campaign(
        seeds,
        n,
        seed=seed,
        scratch=scratch,
        keep=Path(keep) if keep else None,
        on_progress=progress,
        max_seconds=seconds,
    )
    return {
        "iterations": r.iterations,
        "seconds": r.seconds,
        "expected": r.expected,
        "accepted": r.accepted,
        "by_error": r.by_error,
        "unexpected": [vars(f) for f in r.unexpected],
        "hangs": [vars(f) for f in r.hangs],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--iterations", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", help="directory for the files that made something escape")
    p.add_argument("--seconds", type=float, help="stop each worker after this long (wall time)")
    a = p.parse_args()
    seeds_dir = Path(tempfile.gettempdir()) / "trtpack-fuzz-seeds"
    import fuzzing

    fuzzing.make_seeds(seeds_dir)  # once, before the workers share it
    per = [a.iterations // a.workers + (i < a.iterations % a.workers) for i in range(a.workers)]
    jobs = [(n, a.seed + i, str(seeds_dir), a.keep, a.seconds) for i, n in enumerate(per)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(a.workers) as pool:
        results = pool.map(_worker, jobs)
    wall = time.perf_counter() - start
    total = sum(r["iterations"] for r in results)
    unexpected = [f for r in results for f in r["unexpected"]]
    hangs = [f for r in results for f in r["hangs"]]
    by_error: dict[str, int] = {}
    for r in results:
        for k, v in r["by_error"].items():
            by_error[k] = by_error.get(k, 0) + v
    print(
        f"fuzz: {total} iterations in {wall:.0f} s ({total / wall:.0f} it/s, {a.workers} "
        f"worker(s), seeds {a.seed}..{a.seed + a.workers - 1})"
    )
    print(
        f"  TrtpackError {sum(r['expected'] for r in results)}  no error "
        f"{sum(r['accepted'] for r in results)}  unexpected {len(unexpected)}  hangs {len(hangs)}"
    )
    print("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(by_error.items())))
    for f in unexpected + hangs:
        print(f"--- {f['seed']} / {f['op']} / {f['mutation']} ({f['file']})\n{f['error']}")
    return 1 if unexpected or hangs else 0


if __name__ == "__main__":
    raise SystemExit(main())
