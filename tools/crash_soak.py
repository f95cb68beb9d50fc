"""Crash soak: SIGKILL writers of a pack at random moments, hundreds of times.

    .venv/bin/python tools/crash_soak.py                 # 240 kills
    .venv/bin/python tools/crash_soak.py -n 1000 --seed 3

Each round takes a target pack, starts a writer on it — ``migrate --force`` of a torch.export
file over it, ``add-engine`` in place, or ``save`` over it — and kills it: half the time at a
random step or byte offset of the atomic write (``TRTPACK_CRASH_AT``), half the time from
outside after a random delay (a real SIGKILL, wherever the writer is). Then it checks that
the target is byte for byte the old pack or the new one and verifies, and that the next
write leaves no temp file. Prints the counts and exits 1 on any violation.
tests/test_crash_points.py covers every step deterministically; this is the long random run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "v0"
PT2 = FIXTURES / "torch_export" / "derived.pt2"
PLAN = FIXTURES / "engine" / "keywords.plan"
WRITERS = {
    "migrate --force": "import sys, trtpack; trtpack.migrate(sys.argv[2], sys.argv[1], "
    "overwrite=True)",
    "add-engine in place": "import sys, trtpack; trtpack.add_engine(sys.argv[1], sys.argv[3], "
    "variant='soak')",
    "save over": "import sys, torch, trtpack\ntorch.manual_seed(0)\n"
    "ep = torch.export.export(torch.nn.Linear(256, 256), (torch.randn(2, 256),))\n"
    "trtpack.save(ep, sys.argv[1], overwrite=True)",
}
STEPS = ("temp-created", "before-fsync", "after-fsync", "before-rename", "after-rename",
         "before-dir-fsync", "after-dir-fsync")  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--kills", type=int, default=240)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import trtpack
    from trtpack.format.atomic import SUFFIX

    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="trtpack-soak-"))
    base = work / "base.trtpack"
    # the keywords program: add-engine refuses a plan whose inputs are not the pack's (issue 12)
    trtpack.migrate(FIXTURES / "torch_export" / "keywords.pt2", base)
    # the pack each writer produces, written once without a crash
    news: dict[str, str] = {}
    took: dict[str, float] = {}  # how long each writer runs here, now (the machine is shared)
    for name, code in WRITERS.items():
        out = work / "ref.trtpack"
        shutil.copy(base, out)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(out), str(PT2), str(PLAN)], check=True)
        took[name] = time.perf_counter() - t0
        news[name] = sha(out)
    target = work / "model.trtpack"
    counts = {"old": 0, "new": 0, "violations": 0, "hooked": 0, "external": 0, "finished": 0}
    temps_left_max = 0
    start = time.perf_counter()
    i = 0
    while counts["hooked"] + counts["external"] < a.kills:
        i += 1
        writer = rng.choice(list(WRITERS))
        shutil.copy(base, target)
        old = sha(target)
        env = dict(os.environ)
        hooked = rng.random() < 0.5
        if hooked:
            env["TRTPACK_CRASH_AT"] = (
                rng.choice(STEPS) if rng.random() < 0.5 else f"bytes:{rng.randrange(1, 12000)}"
            )
        args = [sys.executable, "-c", WRITERS[writer], str(target), str(PT2), str(PLAN)]
        proc = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
        if not hooked:
            # a delay scaled to the writer's measured run (most of it starting Python and
            # importing torch): fixed delays landed before every write on a loaded machine
            time.sleep(rng.uniform(0.5, 1.1) * took[writer])
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        if rc == -signal.SIGKILL:
            counts["hooked" if hooked else "external"] += 1
        else:
            counts["finished"] += 1  # done before the kill: checked too, not counted as one
        got = sha(target)
        ok = got in (old, news[writer])
        if ok:
            try:
                trtpack.verify(target)
            except trtpack.TrtpackError as e:
                ok = False
                print(f"kill {i}: {writer}: target does not verify: {e}")
        else:
            print(f"kill {i}: {writer} ({env.get('TRTPACK_CRASH_AT', 'external')}): the target "
                  "is neither the old nor the new pack")  # fmt: skip
        counts["violations"] += not ok
        counts["old" if got == old else "new"] += ok
        temps = list(work.glob(f"*{SUFFIX}"))
        temps_left_max = max(temps_left_max, len(temps))
        # the next write (here: a clean migrate) removes the dead writer's temp file
        trtpack.migrate(PT2, target, overwrite=True)
        if list(work.glob(f"*{SUFFIX}")):
            counts["violations"] += 1
            print(f"kill {i}: a temp file survived the next write")
    wall = time.perf_counter() - start
    shutil.rmtree(work, ignore_errors=True)
    print(f"crash soak: {a.kills} kills in {wall:.0f} s (seed {a.seed}); uncrashed writers took "
          + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))  # fmt: skip
    print(f"  killed at a chosen step or byte offset: {counts['hooked']}")
    print(f"  killed from outside after a random delay: {counts['external']}")
    print(f"  writers that finished before their kill (checked, not counted): {counts['finished']}")
    print(f"  target afterwards: the old pack {counts['old']}, the new pack {counts['new']}")
    print(f"  violations (neither, or does not verify, or a temp file survives): "
          f"{counts['violations']}")  # fmt: skip
    print(f"  temp files beside the target after a kill: at most {temps_left_max}; "
          "after the next write: 0")  # fmt: skip
    return 1 if counts["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
