"""A crash mid-save leaves the old pack or the new one, never a half-written file: a saving
subprocess is SIGKILLed at random moments, many times, and the target is checked each time."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import trtpack
from trtpack.atomic import SUFFIX

CHILD = r"""
import sys, torch, trtpack
torch.manual_seed(0)
target = sys.argv[1]
programs = []
for width in (1024, 2048):  # two different programs of 4 MiB and 16 MiB of weights
    lin = torch.nn.Linear(width, width)
    programs.append(torch.export.export(lin, (torch.randn(2, width),)))
print("ready", flush=True)
i = 0
while True:
    trtpack.save(programs[i % 2], target)
    i += 1
"""


def _digests(tmp: Path) -> set[str]:
    """The digests of the two packs the child writes (made the same way, in this process)."""
    torch.manual_seed(0)
    out = set()
    for width in (1024, 2048):
        lin = torch.nn.Linear(width, width)
        ep = torch.export.export(lin, (torch.randn(2, width),))
        out.add(trtpack.save(ep, tmp / f"ref{width}.trtpack").digest)
    return out


@pytest.mark.slow
def test_killed_save_leaves_old_or_new_pack(tmp_path, small_pack):
    rng = random.Random(1234)
    expected = _digests(tmp_path)
    work = tmp_path / "target_dir"
    work.mkdir()
    target = work / "model.trtpack"
    old = trtpack.inspect(small_pack).digest
    seen: dict[str, int] = {}
    kills = 16
    for i in range(kills):
        if i % 2 == 0:  # half the rounds start from an existing pack that must survive
            target.write_bytes(small_pack.read_bytes())
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        if not target.exists():
            assert i % 2 == 1, "an existing pack was lost"
            seen["absent"] = seen.get("absent", 0) + 1
            for leftover in work.glob(f".model.trtpack.*{SUFFIX}"):
                leftover.unlink()
            continue
        digest = trtpack.verify(target).digest  # fully valid, every member hash checked
        assert digest in expected | {old}, "the target is neither the old nor a new pack"
        seen[digest] = seen.get(digest, 0) + 1
        for leftover in work.iterdir():  # only temporary files may be left beside it
            assert leftover == target or leftover.name.startswith(".model.trtpack."), leftover
        partial = list(work.glob(f".model.trtpack.*{SUFFIX}"))
        if partial:
            seen["killed mid-write"] = seen.get("killed mid-write", 0) + 1
        for leftover in partial:
            leftover.unlink()
    # the kills landed in different places, some while a pack was half written
    assert len(seen) >= 3 and seen.get("killed mid-write", 0) >= 1, seen
