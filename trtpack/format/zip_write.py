"""The .trtpack zip, written: where every byte of a pack is written. No torch.

Writing (``write_pack``): members are STORED (never compressed), every member after the
manifest starts its data on a 4096-byte boundary (padding in the local header's extra field,
as Android's zipalign does), every entry carries ZIP64 sizes, timestamps are fixed and member
order is sorted, so equal content gives byte-identical files. The file is written to a
temporary name beside the target, fsynced and renamed: a crash leaves the old file or none.

We write the zip ourselves because :mod:`zipfile` cannot align data or omit the alignment
padding from the central directory; reading stays with :mod:`zipfile`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import IntegrityError, PackWriteError, UnsafePackError
from .atomic import atomic_write
from .digests import (
    DIGEST_CHUNK,
    Data,
    FileSlice,
    MemberDigest,
    PathLike,
    Source,
    _Hasher,
    _pieces,
    _Pools,
    digest,
    piece_count,
    source_size,
)
from .manifest import MANIFEST_NAME
from .progress import Progress

if TYPE_CHECKING:
    from concurrent.futures import Future

ALIGNMENT = 4096
#: how many written bytes start a background sync to disk
_WRITEBACK = 64 << 20
_ZIP_VERSION = 45  # 4.5: ZIP64
#: a pack's detached signature lies at ``PACK`` + this (``signing.py``); a write at ``PACK``
#: removes it, since it signed bytes that are gone
SIGNATURE_SUFFIX = ".sig"
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest a zip can say
_DOS_TIME = 0
_EXTERNAL_ATTR = 0o100644 << 16  # a regular file, rw-r--r--
_ALIGN_EXTRA_ID = 0xD935  # the id zipalign uses for its padding field


# --- writing -----------------------------------------------------------------------------


def check_member_name(name: str) -> None:
    """A member name is a relative POSIX path with no '.', '..' or empty parts."""
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise UnsafePackError(
            f"member name {name!r} is not a safe relative path "
            "(no leading '/', no '..' or '.' parts, no backslash, no drive letter)"
        )


@dataclass
class _Entry:
    name: bytes
    flags: int
    offset: int  # of the local header
    digest: MemberDigest | None = None


def _local_header(name: bytes, flags: int, crc: int, extra: bytes) -> bytes:
    return (
        struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            _ZIP_VERSION,
            flags,
            0,
            _DOS_TIME,
            _DOS_DATE,
            crc,
            0xFFFFFFFF,
            0xFFFFFFFF,
            len(name),
            len(extra),
        )
        + name
    )


class _ZipWriter:
    """Writes entries in one pass over their bytes. The CRC-32 sits in the local header, before
    the data, so each header is written with a zero CRC and patched once the data is hashed."""

    def __init__(self, fp: BinaryIO, pools: _Pools) -> None:
        self.fp = fp
        self.pools = pools
        self.pos = 0
        self.entries: list[_Entry] = []
        try:
            self._fd: int | None = fp.fileno()
        except (AttributeError, OSError, ValueError):  # in memory: nothing to write back
            self._fd = None
        self._unsynced = 0
        self._writeback: Future[None] | None = None

    def _write(self, data: Data) -> None:
        self.fp.write(data)
        n = memoryview(data).nbytes
        self.pos += n
        self._unsynced += n
        if self._fd is not None and self._unsynced >= _WRITEBACK:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """The atomic save fsyncs at the end; syncing what is written so far, on a thread,
        while the rest is hashed and written, leaves that fsync little to wait for."""
        if self._writeback is not None and not self._writeback.done():
            return  # one at a time: the next one covers these bytes too
        if self._writeback is not None:
            self._writeback.result()  # an I/O error surfaces here, not at the end
        self.fp.flush()
        self._unsynced = 0
        sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
        self._writeback = self.pools.writeback.submit(sync, self._fd)  # type: ignore[arg-type]

    def wait_writeback(self) -> None:
        if self._writeback is not None:
            self._writeback.result()

    def _header(self, name: str, size: int, align: int) -> tuple[_Entry, bytes]:
        check_member_name(name)
        raw_name = name.encode("utf-8")
        flags = 0x0800 if not name.isascii() else 0  # bit 11: the name is UTF-8
        extra = struct.pack("<HHQQ", 1, 16, size, size)  # ZIP64 sizes
        if align > 1:
            pad = -(self.pos + 30 + len(raw_name) + len(extra)) % align
            if pad:
                pad += align if pad < 6 else 0
                extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, pad - 4, align) + bytes(pad - 6)
        return _Entry(raw_name, flags, self.pos), extra

    def add(self, name: str, source: Source, *, align: int,
            progress: Progress | None = None) -> MemberDigest:  # fmt: skip
        size = source_size(source)
        entry, extra = self._header(name, size, align)
        self._write(_local_header(entry.name, entry.flags, 0, extra) + extra)
        h = _Hasher(self.pools, size)
        if progress is not None:
            progress.begin(name)
        for piece in _pieces(source):
            for view in piece:
                self._write(view)
                if progress is not None:
                    progress.advance(view.nbytes)
            h.update(piece)
        entry.digest = h.result()
        if entry.digest.size != size:
            raise IntegrityError(f"member {name!r} changed size while being written")
        self._patch_crc(entry)
        self.entries.append(entry)
        return entry.digest

    def reserve(self, name: str, size: int) -> _Entry:
        """Room for a member whose bytes are known only at the end (the manifest)."""
        entry, extra = self._header(name, size, 1)
        self._write(_local_header(entry.name, entry.flags, 0, extra) + extra)
        self._write(bytes(size))
        self.entries.append(entry)
        return entry

    def fill(self, entry: _Entry, data: bytes) -> None:
        entry.digest = digest(data)
        end = self.fp.tell()
        self.fp.seek(entry.offset + 30 + len(entry.name) + 20)
        self.fp.write(data)
        self.fp.seek(end)
        self._patch_crc(entry)

    def _patch_crc(self, entry: _Entry) -> None:
        assert entry.digest is not None
        end = self.fp.tell()
        self.fp.seek(entry.offset + 14)
        self.fp.write(struct.pack("<I", entry.digest.crc32))
        self.fp.seek(end)

    def finish(self) -> None:
        cd_start = self.pos
        for e in self.entries:
            assert e.digest is not None
            d = e.digest
            extra = struct.pack("<HHQQQ", 1, 24, d.size, d.size, e.offset)
            self._write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    (3 << 8) | _ZIP_VERSION,
                    _ZIP_VERSION,
                    e.flags,
                    0,
                    _DOS_TIME,
                    _DOS_DATE,
                    d.crc32,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    _EXTERNAL_ATTR,
                    0xFFFFFFFF,
                )
                + e.name
                + extra
            )
        cd_size = self.pos - cd_start
        eocd64 = self.pos
        n = len(self.entries)
        self._write(
            struct.pack(
                "<IQHHIIQQQQ",
                0x06064B50,
                44,
                (3 << 8) | _ZIP_VERSION,
                _ZIP_VERSION,
                0,
                0,
                n,
                n,
                cd_size,
                cd_start,
            )
        )
        self._write(struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1))
        self._write(
            struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        )


_PLACEHOLDER = "0" * 64


def _placeholder_chunks(size: int) -> tuple[str, ...] | None:
    return (_PLACEHOLDER,) * piece_count(size) if size > DIGEST_CHUNK else None


def write_pack(
    path: PathLike,
    members: Mapping[str, Source],
    make_manifest: Callable[[Mapping[str, MemberDigest]], bytes],
    *,
    overwrite: bool = True,
    progress: Progress | None = None,
) -> dict[str, MemberDigest]:
    """Write a pack atomically, in one pass over the members' bytes (counted on ``progress``).

    ``manifest.json`` comes first but records every member's SHA-256, known only once the
    member is written. So its room is reserved first — ``make_manifest`` is called with
    placeholder hashes of the final length, which gives the exact size — then the members are
    written (sorted, aligned) and hashed as they go, and finally the manifest is built with
    the real hashes and written into its room. Returns the members' digests.

    A signature at ``PATH.sig`` signed the file this write replaces (or an earlier one), so
    it no longer matches: it is removed just before the new pack is renamed into place (a
    failed write keeps both; a crash between the two leaves the old pack unsigned, never a
    pack with a signature of other bytes), with a warning.
    """
    target = Path(path)
    signature = target.with_name(target.name + SIGNATURE_SUFFIX)
    removed: list[Path] = []

    def remove_signature() -> None:
        try:
            if stat.S_ISDIR(os.lstat(signature).st_mode):
                return  # not a signature file; nothing reads it as one
            os.unlink(signature)
        except FileNotFoundError:
            return
        except OSError as e:  # the pack must not change while a signature of it stays
            cause = OSError(e.errno, f"cannot remove its signature {signature}: {e.strerror}")
            raise PackWriteError(target, cause) from None
        removed.append(signature)

    with atomic_write(target, overwrite=overwrite, before_replace=remove_signature) as f:
        if overwrite:
            release_cache(target, members)
        digests = _write_zip(f, members, make_manifest, progress)
    if removed:
        warnings.warn(
            f"trtpack: removed {signature}: it signed the bytes {target} had before this "
            f"write, and no longer matches (sign again: `trtpack sign {target} --key KEY`)",
            stacklevel=2,
        )
    return digests


def release_cache(target: Path, members: Mapping[str, Source]) -> None:
    """Drop the page cache of the file a write is about to replace, unless a member is
    copied from it (an in-place ``add_engine`` or ``remove_engine`` reads it meanwhile).

    Those pages are garbage once the new file is renamed over the old; freed first, the new
    bytes take their place in memory, as an in-place rewrite's truncation gives them,
    rather than pushing other files' pages out, or, in a virtual machine whose host takes
    back guest memory left free (free page reporting), landing on pages the host must back
    again: on dev, writing 1 GiB into such pages took 2.5-3.3 s of CPU against 0.2-0.3 s
    (docs/performance.md). The file itself is untouched (a failed write leaves it whole,
    only uncached); pages that a process has mapped stay, as the kernel drops only unmapped
    clean pages. Where there is no such call (macOS, Windows), nothing happens."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:  # never through a symlink (the rename replaces the link), never blocking on a FIFO
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError:
        return  # nothing there to replace, or nothing this process may read
    try:
        old = os.fstat(fd)
        if not stat.S_ISREG(old.st_mode):
            return
        for source in members.values():
            if isinstance(source, FileSlice):
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.stat(source.path), old):
                        return
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return  # a hint only: a file system that refuses it loses nothing
    finally:
        os.close(fd)


class _Memory:
    """A seekable file over a growing bytearray: what the zip writer needs, in memory, with
    no final copy (BytesIO would copy its buffer out)."""

    def __init__(self, data: bytearray | None = None) -> None:
        self.data = bytearray() if data is None else data
        self.pos = 0

    def write(self, b: Data) -> int:
        view = memoryview(b).cast("B")
        end = self.pos + len(view)
        if self.pos == len(self.data):
            self.data += view
        else:
            self.data[self.pos : end] = view
        self.pos = end
        return len(view)

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else min(self.pos + n, len(self.data))
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: len(self.data) + pos}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def pack_bytes(
    members: Mapping[str, Source],
    make_manifest: Callable[[Mapping[str, MemberDigest]], bytes],
) -> bytearray:
    """The same pack, in memory (for a legacy file migrated on load)."""
    buf = _Memory()
    _write_zip(buf, members, make_manifest)  # type: ignore[arg-type]
    return buf.data


def _write_zip(
    f: BinaryIO,
    members: Mapping[str, Source],
    make_manifest: Callable[[Mapping[str, MemberDigest]], bytes],
    progress: Progress | None = None,
) -> dict[str, MemberDigest]:
    sizes = {name: source_size(src) for name, src in members.items()}
    if progress is not None:
        progress.total = progress.done + sum(sizes.values())
    draft = make_manifest(
        {n: MemberDigest(_PLACEHOLDER, s, 0, _placeholder_chunks(s)) for n, s in sizes.items()}
    )
    with _Pools.open() as pools:
        w = _ZipWriter(f, pools)
        slot = w.reserve(MANIFEST_NAME, len(draft))
        digests = {name: w.add(name, members[name], align=ALIGNMENT, progress=progress)
                   for name in sorted(members)}  # fmt: skip
        final = make_manifest(digests)
        if len(final) != len(draft):
            raise AssertionError("the manifest's length depends on more than its member sizes")
        w.fill(slot, final)
        w.finish()
        w.wait_writeback()
    return digests
