"""How long trtpack takes to refuse hostile files, against inspecting a normal pack, in one run
(the tests prove each refusal happens before the expensive work; this measures the seconds).

    .venv/bin/python tools/bench_refusals.py [--repeat 5]

Files: a zip claiming 600,000 entries, a manifest nested 100,000 levels, a 300-level input
tree, a 100 MB manifest. Each is refused by ``trtpack.inspect`` with an ``UnsafePackError``;
the time is the median of N in-process calls, printed with its ratio to ``inspect`` of the
small pack the hostile ones were made from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import trtpack


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from test_hostile import _pack_with_manifest, _zip_with_entries

    small = Path(__file__).resolve().parent.parent / "tests/fixtures/v1.1/keywords.trtpack"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        manifest = json.loads(trtpack.inspect(small).manifest.to_json())
        tree: dict = {"type": "leaf"}
        for _ in range(300):
            tree = {"type": "tuple", "children": [tree]}
        cases = {
            "600,000 zip entries": _zip_with_entries(d / "many.trtpack", 600_000),
            "manifest nested 100,000 deep": _pack_with_manifest(
                small, d / "deep.trtpack", b"[" * 100_000 + b"]" * 100_000
            ),
            "input tree 300 deep": _pack_with_manifest(
                small, d / "tree.trtpack", json.dumps({**manifest, "input_tree": tree}).encode()
            ),
            "100 MB manifest": _pack_with_manifest(
                small, d / "big.trtpack",
                b'{"format": "trtpack", "pad": "' + b" " * (100 << 20) + b'"}',
            ),
        }  # fmt: skip
        base = _median(lambda: trtpack.inspect(small), args.repeat)
        print(f"inspect of a normal pack: {base * 1e3:.2f} ms (baseline)")
        for name, path in cases.items():

            def refuse(path: Path = path, name: str = name) -> None:
                try:
                    trtpack.inspect(path)
                except trtpack.UnsafePackError:
                    return
                raise SystemExit(f"{name}: not refused")

            t = _median(refuse, args.repeat)
            print(f"{name:32s} refused in {t * 1e3:8.2f} ms  ({t / base:6.1f}x the baseline)")


if __name__ == "__main__":
    main()
