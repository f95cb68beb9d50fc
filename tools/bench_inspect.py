"""`trtpack inspect PACK`, the whole process, against `python -c pass`, in one run (issue 13's
goal: at most 2x), on packs of a few sizes (inspect must not grow with the pack). Also against
`python -S -c pass` (no site hooks): on an image whose site-packages runs a `.pth` hook, that
hook is most of `python -c pass`, which would flatter every ratio (issue 27, item 8).

    .venv/bin/python tools/bench_inspect.py [--repeat 21] [--gib 1] [--source DIR] [--torch]

Each timing is a whole process, as a user runs it: `trtpack inspect PACK` is the console
script's code (`from trtpack.cli import main`), `python -m trtpack inspect PACK` is shown
too. The commands run in interleaved rounds (one of each per round, so that the machine's
noise hits all alike); the median and the minimum are printed, and the ratio is of medians.
Byte-code caching is on (PYTHONDONTWRITEBYTECODE is removed from the children's environment,
and a first, untimed round writes the caches), as for an installed wheel. ``--source DIR``
times the trtpack of another checkout (e.g. ``git archive main | tar -x -C DIR``) on the
same packs. ``--torch``: also the same facts through torch.export.load (seconds). The
``floor:`` rows are processes that only import standard-library modules inspect needs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import trtpack  # noqa: E402

SCRIPT = "import re, sys\nfrom trtpack.cli import main\nsys.exit(main())"  # pip's console script
TORCH_FACTS = r"""
import sys, torch
ep = torch.export.load(sys.argv[1])
names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
ph = {n.name: n.meta["val"] for n in ep.graph.nodes if n.op == "placeholder"}
print([(n, ph[n].dtype, tuple(ph[n].shape)) for n in names], ep.range_constraints)
"""
GOAL = 2.0
#: What a process pays to import the standard-library modules inspect needs, timed in the
#: same rounds: the floor under inspect on this machine (re, json, hashlib, struct and zlib are
#: the least that reading, parsing and hashing a zipped manifest takes; the last row adds what
#: trtpack's read path and CLI are built on).
_FLOOR_MODULES = (
    ("re", "json"),
    ("hashlib", "struct", "zlib"),  # with these: the least any reader of a zipped manifest needs
    ("argparse", "zipfile", "dataclasses", "typing", "pathlib"),
)
FLOORS = {
    f"floor: {'+ ' if i else ''}{', '.join(group)}": "import "
    + ", ".join(m for g in _FLOOR_MODULES[: i + 1] for m in g)
    for i, group in enumerate(_FLOOR_MODULES)
}


def export(n_floats: int) -> torch.export.ExportedProgram:
    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.zeros(max(n_floats // 64, 1), 64))

        def forward(self, idx):
            return self.table[idx]

    batch = torch.export.Dim("batch", min=1, max=64)
    return torch.export.export(
        Big(), (torch.zeros(8, dtype=torch.long),), dynamic_shapes=({0: batch},)
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"python {platform.python_version()} ({sys.executable}); load average {load}"
    )


def rounds(commands: dict[str, list[str]], repeat: int, env: dict[str, str],
           cwd: str) -> dict[str, list[float]]:  # fmt: skip
    """Each command once per round, ``repeat`` rounds after an untimed one."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(repeat + 1):
        for name, cmd in commands.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=cwd)
            if i:
                times[name].append(time.perf_counter() - t)
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the largest pack's member")
    ap.add_argument("--source", type=Path, default=ROOT, help="the trtpack checkout to time")
    ap.add_argument("--torch", action="store_true", help="also time torch.export.load")
    args = ap.parse_args()
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(args.source.resolve())
    fixture = max((ROOT / "tests" / "fixtures").glob("v1.*/keywords_engines.trtpack"))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        packs: dict[str, Path] = {}
        for label, n in (
            ("4 KiB weights", 1024),
            ("64 MiB weights", 2**24),
            (f"{args.gib:g} GiB weights", int(args.gib * 2**28)),
        ):
            ep = export(n)
            packs[label] = d / f"{n}.trtpack"
            trtpack.save(ep, packs[label])
            if args.torch:
                torch.export.save(ep, d / f"{n}.pt2")
            del ep
        packs["engine variant"] = fixture
        # -S: no site hooks. On an image whose site-packages holds a .pth redirector,
        # `python -c pass` spends most of its time there; both baselines are shown.
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -S -c pass": [py, "-S", "-c", "pass"],
        }
        commands.update({name: [py, "-c", code] for name, code in FLOORS.items()})
        for label, pack in packs.items():
            commands[f"trtpack inspect, {label}"] = [py, "-c", SCRIPT, "inspect", str(pack)]
        small = packs["4 KiB weights"]
        commands["python -m trtpack inspect, 4 KiB"] = [py, "-m", "trtpack", "inspect", str(small)]
        commands["trtpack inspect --json, 4 KiB"] = [py, "-c", SCRIPT, "inspect", "--json",
                                                    str(small)]  # fmt: skip
        times = rounds(commands, args.repeat, env, tmp)
        trtpack.inspect(small)
        t = time.perf_counter()
        for _ in range(50):
            trtpack.inspect(small)
        in_process = (time.perf_counter() - t) / 50
        sizes = {name: pack.stat().st_size for name, pack in packs.items()}
        torch_times = {}
        if args.torch:
            for label, pack in packs.items():
                pt2 = pack.with_suffix(".pt2")
                if pt2.exists():
                    cmd = {label: [py, "-c", TORCH_FACTS, str(pt2)]}
                    torch_times[label] = rounds(cmd, max(args.repeat // 4, 3), env, tmp)[label]

    base = statistics.median(times["python -c pass"])
    base_s = statistics.median(times["python -S -c pass"])
    print(f"machine: {machine()}")
    print(f"trtpack: {args.source.resolve()}; {args.repeat} rounds, median (min) of each\n")
    print(f"{'command':58s} {'pack':>10s} {'median':>9s} {'min':>9s} {'/ pass':>7s} {'/ -S':>7s}")
    worst = worst_s = 0.0
    for name, ts in times.items():
        label = name.split(", ", 1)[-1]
        size = next((f"{s / 2**20:.1f} MiB" for k, s in sizes.items() if k == label), "")
        ratio = statistics.median(ts) / base
        ratio_s = statistics.median(ts) / base_s
        if name.startswith("trtpack inspect, "):
            worst, worst_s = max(worst, ratio), max(worst_s, ratio_s)
        print(f"{name:58s} {size:>10s} {statistics.median(ts) * 1e3:6.1f} ms "
              f"{min(ts) * 1e3:6.1f} ms {ratio:6.2f}x {ratio_s:6.2f}x")  # fmt: skip
    for label, ts in torch_times.items():
        name, med = f"torch.export.load, {label}", statistics.median(ts)
        print(f"{name:58s} {'':>10s} {med * 1e3:6.0f} ms {min(ts) * 1e3:6.0f} ms "
              f"{med / base:6.1f}x {med / base_s:6.1f}x")  # fmt: skip
    big = statistics.median(times[f"trtpack inspect, {args.gib:g} GiB weights"])
    small_t = statistics.median(times["trtpack inspect, 4 KiB weights"])
    print(
        f"\ntrtpack inspect / python -c pass: {worst:.2f}x (the slowest pack; goal <= "
        f"{GOAL:g}x: {'met' if worst <= GOAL else 'not met'})"
    )
    print(
        f"trtpack inspect / python -S -c pass: {worst_s:.2f}x (no site hooks: what the "
        f"interpreter alone costs; python -c pass / python -S -c pass {base / base_s:.2f}x)"
    )
    floors = ", ".join(
        f"{name.removeprefix('floor: ')} {statistics.median(times[name]) / base:.2f}x"
        for name in FLOORS
    )
    print(f"the standard library's floor on this machine, / python -c pass: {floors}")
    print(f"trtpack inspect, {args.gib:g} GiB / 4 KiB pack: {big / small_t:.2f}x (constant)")
    print(f"trtpack.inspect() in-process (this checkout), 4 KiB pack: {in_process * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
