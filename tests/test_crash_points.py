"""Deterministic crash safety (trtpack/format/atomic.py): a writing process — ``save`` over an
existing pack, ``migrate --force``, ``add-engine`` in place — is SIGKILLed at each step of the
atomic write (and after a chosen number of bytes); the target is always exactly the old pack or
the new one, and the next write leaves no temp file behind. In-place edits hold a lock, so two
``add-engine`` runs at once both land, and two writers to one path leave one whole pack.
tools/crash_soak.py kills at random points, hundreds of times (README: figures)."""

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
from trtpack.format.atomic import STEPS, SUFFIX, atomic_write, pack_lock, remove_stale_temps

CHILD = r"""
import sys, torch, trtpack
torch.manual_seed(1)
ep = torch.export.export(torch.nn.Linear(64, 64), (torch.randn(2, 64),))
trtpack.save(ep, sys.argv[1], overwrite=True)
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


CRASHES = [*(s for s in STEPS if s != "bytes"), "bytes:100", "bytes:5000"]
FIXTURES = Path(__file__).parent / "fixtures" / "v0"
PT2 = FIXTURES / "torch_export" / "keywords.pt2"
PLAN = FIXTURES / "engine" / "keywords.plan"
# torch-free writers: migrate a torch.export file over a pack; add a bare engine in place
MIGRATE = "import sys, trtpack; trtpack.migrate(sys.argv[2], sys.argv[1], overwrite=True)"
ADD_ENGINE = (
    "import sys, trtpack; trtpack.add_engine(sys.argv[1], sys.argv[2], variant=sys.argv[3])"
)


def _before_rename(crash: str) -> bool:
    return crash.startswith("bytes") or crash in (
        "temp-created", "before-fsync", "after-fsync", "before-rename",
    )  # fmt: skip


@pytest.fixture(scope="module")
def new_save_sha(tmp_path_factory) -> str:
    ref = tmp_path_factory.mktemp("ref") / "model.trtpack"
    subprocess.run([sys.executable, "-c", CHILD, str(ref)], check=True)
    return _sha(ref)


@pytest.mark.slow
@pytest.mark.parametrize("crash", CRASHES)
def test_crash_at_each_step_leaves_old_or_new(tmp_path, small_pack, crash, new_save_sha):
    new = new_save_sha
    work = tmp_path / "work"
    work.mkdir()
    target = work / "model.trtpack"
    target.write_bytes(small_pack.read_bytes())
    old = _sha(target)
    env = {**os.environ, "TRTPACK_CRASH_AT": crash}
    child = subprocess.run([sys.executable, "-c", CHILD, str(target)], env=env)
    assert child.returncode == -signal.SIGKILL, f"the crash hook did not fire at {crash}"
    assert _sha(target) in (old, new)
    assert _sha(target) == (old if _before_rename(crash) else new), crash
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


def _run_killed(code: str, crash: str, *args: object) -> None:
    env = {**os.environ, "TRTPACK_CRASH_AT": crash}
    child = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env)
    assert child.returncode == -signal.SIGKILL, f"the crash hook did not fire at {crash}"


@pytest.mark.parametrize("crash", CRASHES)
def test_migrate_force_killed_at_each_step(tmp_path, small_pack, crash):
    target = tmp_path / "model.trtpack"
    ref = tmp_path / "ref.trtpack"
    trtpack.migrate(PT2, ref)
    target.write_bytes(small_pack.read_bytes())
    old, new = _sha(target), _sha(ref)
    _run_killed(MIGRATE, crash, target, PT2)
    assert _sha(target) == (old if _before_rename(crash) else new), crash
    trtpack.verify(target)
    subprocess.run([sys.executable, "-c", MIGRATE, str(target), str(PT2)], check=True)
    assert _temps(tmp_path) == [] and _sha(target) == new


@pytest.mark.parametrize("crash", CRASHES)
def test_add_engine_in_place_killed_at_each_step(tmp_path, small_pack, crash):
    target = tmp_path / "model.trtpack"
    target.write_bytes(small_pack.read_bytes())
    ref = tmp_path / "ref.trtpack"
    ref.write_bytes(small_pack.read_bytes())
    trtpack.add_engine(ref, PLAN, variant="sm86")
    old, new = _sha(target), _sha(ref)
    _run_killed(ADD_ENGINE, crash, target, PLAN, "sm86")
    assert _sha(target) == (old if _before_rename(crash) else new), crash
    info = trtpack.verify(target)
    assert [v.name for v in info.manifest.engines] == ([] if _before_rename(crash) else ["sm86"])
    assert _temps(tmp_path) == [] or _before_rename(crash)
    if _before_rename(crash):  # the next in-place edit removes the dead writer's temp file
        subprocess.run([sys.executable, "-c", ADD_ENGINE, str(target), str(PLAN), "sm86"],
                       check=True)  # fmt: skip
    assert _temps(tmp_path) == [] and _sha(target) == new


def test_two_add_engines_at_once_both_land_20_rounds(tmp_path, small_pack):
    """v0.1 lost one of the two variants in 20 of 20 rounds while both reported success."""
    target = tmp_path / "model.trtpack"
    for round_ in range(20):
        target.write_bytes(small_pack.read_bytes())
        procs = [
            subprocess.Popen([sys.executable, "-c", ADD_ENGINE, str(target), str(PLAN), name])
            for name in ("a", "b")
        ]
        assert [p.wait(120) for p in procs] == [0, 0], f"round {round_}"
        names = sorted(v.name for v in trtpack.verify(target).manifest.engines)
        assert names == ["a", "b"], f"round {round_}: {names}"
        assert _temps(tmp_path) == []


def test_two_writers_to_one_path_leave_one_whole_pack(tmp_path, small_pack):
    """Two migrate --force runs of different sources to one target, 10 rounds: the target is
    always one of the two complete packs, and no temp file is left."""
    other = FIXTURES / "torch_export" / "derived.pt2"
    refs = {}
    for src in (PT2, other):
        trtpack.migrate(src, tmp_path / "ref.trtpack", overwrite=True)
        refs[_sha(tmp_path / "ref.trtpack")] = src.name
    (tmp_path / "ref.trtpack").unlink()
    target = tmp_path / "model.trtpack"
    for _ in range(10):
        target.write_bytes(small_pack.read_bytes())
        procs = [subprocess.Popen([sys.executable, "-c", MIGRATE, str(target), str(src)])
                 for src in (PT2, other)]  # fmt: skip
        assert [p.wait(120) for p in procs] == [0, 0]
        assert _sha(target) in refs
        trtpack.verify(target)
        assert _temps(tmp_path) == []
