"""Atomic file replacement and the per-directory writer lock (no torch).

A write goes to ``.NAME.<pid>.<random>.trtpack-tmp`` beside the target, is fsynced, renamed
over the target, and the directory is fsynced. The temp name carries the writer's pid so a
later write can remove temp files whose writer is dead (a SIGKILL cannot clean up after
itself). ``TRTPACK_CRASH_AT=<step>[:<bytes>]``, read once at import, SIGKILLs the process at
that step: the crash-safety tests use it to crash deterministically.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputExistsError, PackLockedError, PackWriteError, TrtpackError

SUFFIX = ".trtpack-tmp"
STEPS = ("temp-created", "bytes", "before-fsync", "after-fsync", "before-rename",
         "after-rename", "before-dir-fsync", "after-dir-fsync")  # fmt: skip

_crash = os.environ.get("TRTPACK_CRASH_AT", "")
CRASH_STEP, _, _off = _crash.partition(":")
CRASH_OFFSET = int(_off) if _off else 0


def _at(step: str) -> None:
    if step == CRASH_STEP:
        _kill_self()


def _kill_self() -> None:
    import signal  # the crash-test hook alone needs it

    os.kill(os.getpid(), signal.SIGKILL)


class _CrashingFile:
    """Counts bytes written and SIGKILLs after CRASH_OFFSET of them (test hook only)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._n = 0

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        if self._n + len(view) >= CRASH_OFFSET:
            self._f.write(view[: CRASH_OFFSET - self._n])
            self._f.flush()
            _kill_self()
        self._n += len(view)
        return self._f.write(view)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path) -> int:
    """Remove temp files of ``target`` whose writer process is gone. Returns how many."""
    directory = target.parent if str(target.parent) else Path(".")
    removed = 0
    for p in directory.glob(f".{target.name}.*{SUFFIX}"):
        parts = p.name[len(target.name) + 2 : -len(SUFFIX)].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid != os.getpid() and not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(
    path: os.PathLike | str,
    *,
    overwrite: bool = True,
    before_replace: Callable[[], None] | None = None,
) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; on success fsync it, rename it over
    ``path`` and fsync the directory. On any error the temporary file is removed and
    ``path`` is untouched. ``before_replace`` runs once the new bytes are safe on disk, just
    before the rename (what must go when ``path`` changes); if it raises, nothing is renamed."""
    target = Path(path)
    if not overwrite and target.exists():
        raise OutputExistsError(target)
    directory = target.parent if str(target.parent) else Path(".")
    remove_stale_temps(target)
    tmp = directory / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}{SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as e:
        raise PackWriteError(target, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _at("temp-created")
            yield _CrashingFile(f) if CRASH_STEP == "bytes" else f  # type: ignore[misc]
            f.flush()
            _at("before-fsync")
            os.fsync(f.fileno())
            _at("after-fsync")
        if not overwrite and target.exists():
            raise OutputExistsError(target)  # it appeared while this write ran
        if before_replace is not None:
            before_replace()
        _at("before-rename")
        os.replace(tmp, target)
        _at("after-rename")
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if (
            isinstance(e, OSError)
            and not isinstance(e, TrtpackError)
            and (e.filename in (None, str(tmp)))
        ):  # the write itself failed (ENOSPC, EIO): say so about the target, not the temp file
            raise PackWriteError(target, e) from None
        raise
    _at("before-dir-fsync")
    fsync_dir(directory)
    _at("after-dir-fsync")


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform can open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def pack_lock(path: os.PathLike | str, *, timeout: float = 60.0) -> Iterator[None]:
    """Exclusive lock for a read-modify-write of ``path``: flock on an O_RDONLY fd of its
    DIRECTORY (the kernel drops it when the holder dies, and no lock file is left behind).
    A second writer waits up to ``timeout`` seconds, then gets PackLockedError."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        import fcntl
    except ImportError:  # no fcntl: an O_EXCL lock file
        fcntl = None  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    if fcntl is not None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PackLockedError(
                            f"{target}: another writer has held the lock on {directory} for "
                            f"over {timeout:g} s; try again when it finishes",
                            path=str(target), timeout=timeout) from None  # fmt: skip
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the flock
        return
    lock = directory / f".{target.name}.lock"
    while True:
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise PackLockedError(
                    f"{target}: lock file {lock} held for over {timeout:g} s",
                    path=str(target), timeout=timeout) from None  # fmt: skip
            time.sleep(0.02)
    try:
        yield
    finally:
        os.unlink(lock)
