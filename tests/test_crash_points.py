"""Deterministic crash safety (trtpack/atomic.py): a saving process is SIGKILLed at each step
of the atomic write (and after a chosen number of bytes); the target is always exactly the
old pack or the new one, and the next write leaves no temp file behind. In-place edits hold
a lock, so a second writer waits or gets PackLockedError."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import trtpack
from trtpack.atomic import STEPS, SUFFIX, atomic_write, pack_lock, remove_stale_temps

CHILD = r"""
import sys, torch, trtpack
torch.manual_seed(1)
ep = torch.export.export(torch.nn.Linear(64, 64), (torch.randn(2, 64),))
trtpack.save(ep, sys.argv[1])
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def _new_pack_sha(tmp_path: Path) -> str:
    ref = tmp_path / "ref" / "model.trtpack"
    ref.parent.mkdir()
    subprocess.run([sys.executable, "-c", CHILD, str(ref)], check=True)
    return _sha(ref)


@pytest.mark.slow
@pytest.mark.parametrize("crash", [*(s for s in STEPS if s != "bytes"), "bytes:100", "bytes:5000"])
def test_crash_at_each_step_leaves_old_or_new(tmp_path, small_pack, crash):
    new = _new_pack_sha(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "model.trtpack"
    target.write_bytes(small_pack.read_bytes())
    old = _sha(target)
    env = {**os.environ, "TRTPACK_CRASH_AT": crash}
    child = subprocess.run([sys.executable, "-c", CHILD, str(target)], env=env)
    assert child.returncode == -signal.SIGKILL, f"the crash hook did not fire at {crash}"
    assert _sha(target) in (old, new)
    before_rename = crash.startswith("bytes") or crash in (
        "temp-created", "before-fsync", "after-fsync", "before-rename",
    )  # fmt: skip
    assert _sha(target) == (old if before_rename else new), crash
    trtpack.verify(target)
    # the killed writer's temp file (if any) is removed by the next write
    subprocess.run([sys.executable, "-c", CHILD, str(target)], check=True)
    assert _temps(work) == []
    assert _sha(target) == new


def test_stale_temp_of_a_dead_writer_is_removed_live_one_kept(tmp_path):
    target = tmp_path / "model.trtpack"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".{target.name}.{dead.pid}.abcd1234{SUFFIX}"
    live = tmp_path / f".{target.name}.{os.getppid()}.abcd1234{SUFFIX}"
    stale.write_bytes(b"x" * 10)
    live.write_bytes(b"y")
    assert remove_stale_temps(target) == 1
    assert not stale.exists() and live.exists()
    with atomic_write(target) as f:
        f.write(b"data")
    assert target.read_bytes() == b"data"
    assert _temps(tmp_path) == [live]


def test_second_in_place_writer_waits_then_times_out(tmp_path):
    target = tmp_path / "model.trtpack"
    held = threading.Event()
    release = threading.Event()

    def holder():
        with pack_lock(target):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    try:
        with pytest.raises(trtpack.PackLockedError) as info:
            with pack_lock(target, timeout=0.2):
                pass
        assert info.value.path == str(target)
    finally:
        release.set()
        t.join()
    with pack_lock(target, timeout=1):  # free again once the holder is done
        pass
