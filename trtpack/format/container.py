"""The .trtpack zip: where every byte is written and where every byte is checked. No torch.

Writing (``write_pack``): members are STORED (never compressed), every member after the
manifest starts its data on a 4096-byte boundary (padding in the local header's extra field,
as Android's zipalign does), every entry carries ZIP64 sizes, timestamps are fixed and member
order is sorted, so equal content gives byte-identical files. The file is written to a
temporary name beside the target, fsynced and renamed: a crash leaves the old file or none.

Reading (``PackReader``): the central directory is parsed by :mod:`zipfile`; then every entry
is checked before any member is used (names, duplicates, compression, sizes against the file,
local headers against the central directory, overlaps). Members are served as zero-copy views
of a private memory map (``view``: for work done while the file is open), or read into memory
of their own (``owned``: what a load keeps, so that nothing later done to the file reaches
it), and checked against the manifest's digests on request: a member's 16 MiB pieces on every
core where the manifest records them (format 1.3), else its SHA-256.

We write the zip ourselves because :mod:`zipfile` cannot align data or omit the alignment
padding from the central directory; reading stays with :mod:`zipfile`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import mmap
import os
import stat
import struct
import threading
import warnings
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import (
    IntegrityError,
    MissingMemberError,
    NotAPackError,
    PackWriteError,
    UnsafePackError,
)
from .atomic import atomic_write
from .atomic import fsync_dir as _fsync_dir  # noqa: F401
from .limits import MAX_MEMBERS, refuse
from .manifest import MANIFEST_NAME, Member

if TYPE_CHECKING:  # the threads are for writing and hashing: reading a manifest needs none
    from concurrent.futures import Future, ThreadPoolExecutor

ALIGNMENT = 4096
_CHUNK = 8 << 20
#: members larger than this also record the SHA-256 of each piece of this size (format 1.3),
#: so that verifying them uses every core; the manifest records the size it used
DIGEST_CHUNK = 16 << 20
#: how many written bytes start a background sync to disk
_WRITEBACK = 64 << 20
#: pieces a write may have read but not yet hashed
_IN_FLIGHT = 8
_ZIP_VERSION = 45  # 4.5: ZIP64
#: a pack's detached signature lies at ``PACK`` + this (``signing.py``); a write at ``PACK``
#: removes it, since it signed bytes that are gone
SIGNATURE_SUFFIX = ".sig"
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the earliest a zip can say
_DOS_TIME = 0
_EXTERNAL_ATTR = 0o100644 << 16  # a regular file, rw-r--r--
_ALIGN_EXTRA_ID = 0xD935  # the id zipalign uses for its padding field

PathLike = str | os.PathLike[str]
Data = bytes | bytearray | memoryview


# --- sources: what a member's bytes come from ------------------------------------------------


@dataclass(frozen=True)
class MemberDigest:
    sha256: str
    size: int
    crc32: int
    #: SHA-256 of each DIGEST_CHUNK piece, for a member over one piece (format 1.3)
    chunks: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FileSlice:
    """Bytes ``[offset, offset+size)`` of a file: how members are copied between packs
    without being read into memory."""

    path: Path
    offset: int
    size: int

    def chunks(self) -> Iterator[memoryview]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            left = self.size
            while left:
                # a fresh buffer per chunk: the hashing thread may still be reading the last one
                buf = bytearray(min(_CHUNK, left))
                n = f.readinto(buf)
                if not n:
                    raise IntegrityError(f"{self.path} ended early while copying a member")
                left -= n
                yield memoryview(buf)[:n]


@dataclass(frozen=True)
class Chunks:
    """A member made of several buffers written back to back (e.g. a safetensors header
    followed by each tensor's memory), so that it never has to exist as one bytes object."""

    parts: tuple[Data, ...]


Source = Data | FileSlice | Chunks


def _chunks(source: Source) -> Iterator[memoryview]:
    if isinstance(source, FileSlice):
        yield from source.chunks()
        return
    for part in source.parts if isinstance(source, Chunks) else (source,):
        view = memoryview(part).cast("B")
        for start in range(0, len(view), _CHUNK):
            yield view[start : start + _CHUNK]


def source_size(source: Source) -> int:
    if isinstance(source, FileSlice):
        return source.size
    if isinstance(source, Chunks):
        return sum(memoryview(p).nbytes for p in source.parts)
    return memoryview(source).nbytes


def _pieces(source: Source) -> Iterator[list[memoryview]]:
    """The member's bytes as consecutive DIGEST_CHUNK-byte pieces (the last may be shorter),
    each a list of views: a piece of a Chunks source may span several of its buffers."""
    piece: list[memoryview] = []
    filled = 0
    for view in _chunks(source):
        while view:
            take = min(len(view), DIGEST_CHUNK - filled)
            piece.append(view[:take])
            filled += take
            view = view[take:]
            if filled == DIGEST_CHUNK:
                yield piece
                piece, filled = [], 0
    if piece:
        yield piece


def _update_all(sha: Any, piece: list[memoryview]) -> None:
    for view in piece:
        sha.update(view)


def _piece_digest(piece: list[memoryview], with_sha: bool) -> tuple[str | None, int, int]:
    sha = hashlib.sha256() if with_sha else None
    crc = 0
    for view in piece:
        if sha is not None:
            sha.update(view)
        crc = zlib.crc32(view, crc)
    return (sha.hexdigest() if sha is not None else None), crc, sum(len(v) for v in piece)


class _Hasher:
    """A member's digests, computed while it is written. The whole member's SHA-256 is
    sequential by construction, so it runs on a thread of its own; each piece's CRC-32 (and,
    for a member over one DIGEST_CHUNK, its SHA-256) runs on a pool, and the CRCs are
    combined. hashlib and zlib release the GIL: hashing uses every core and overlaps with
    the write."""

    def __init__(self, pools: _Pools, size: int) -> None:
        self._pools = pools
        self._chunked = size > DIGEST_CHUNK
        self._sha = hashlib.sha256()
        self._whole: deque[Future[None]] = deque()
        self._pieces: list[Future[tuple[str | None, int, int]]] = []
        self._in_flight: deque[Future[tuple[str | None, int, int]]] = deque()

    def update(self, piece: list[memoryview]) -> None:
        self._whole.append(self._pools.whole.submit(_update_all, self._sha, piece))
        job = self._pools.pieces.submit(_piece_digest, piece, self._chunked)
        self._pieces.append(job)
        self._in_flight.append(job)
        # at most _IN_FLIGHT pieces wait to be hashed: a FileSlice reads a fresh buffer for
        # each, so this bounds the memory a copy between packs takes (8 x 16 MiB)
        while len(self._in_flight) > _IN_FLIGHT:
            self._in_flight.popleft().result()
        while len(self._whole) > _IN_FLIGHT:
            self._whole.popleft().result()

    def result(self) -> MemberDigest:
        for f in self._whole:
            f.result()
        crc, size, chunks = 0, 0, []
        for job in self._pieces:
            sha, piece_crc, n = job.result()
            crc = crc32_combine(crc, piece_crc, n) if size else piece_crc
            size += n
            chunks.append(sha)
        return MemberDigest(
            self._sha.hexdigest(),
            size,
            crc,
            tuple(c for c in chunks if c is not None) if self._chunked else None,
        )


@dataclass
class _Pools:
    """The threads of one write: one for whole-member SHA-256s (in order), the rest for
    pieces, and one that has the kernel write finished bytes back to disk meanwhile (threads
    start only when first used)."""

    whole: ThreadPoolExecutor
    pieces: ThreadPoolExecutor
    writeback: ThreadPoolExecutor

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[_Pools]:
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, os.cpu_count() or 1)
        with (
            ThreadPoolExecutor(1) as whole,
            ThreadPoolExecutor(workers) as pieces,
            ThreadPoolExecutor(1) as writeback,
        ):
            yield cls(whole, pieces, writeback)


def digest(source: Source) -> MemberDigest:
    """SHA-256 (whole and per piece), size and CRC-32 of a member's bytes, in one pass."""
    with _Pools.open() as pools:
        h = _Hasher(pools, source_size(source))
        for piece in _pieces(source):
            h.update(piece)
        return h.result()


def piece_count(size: int) -> int:
    """How many DIGEST_CHUNK pieces a member of ``size`` bytes has digests for (0: none,
    a member of at most one piece is covered by its whole SHA-256)."""
    return -(-size // DIGEST_CHUNK) if size > DIGEST_CHUNK else 0


# --- CRC-32 of concatenated pieces (zlib's crc32_combine, which Python's zlib lacks) ---------


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _gf2_compose(a: list[int], b: list[int]) -> list[int]:
    """The operator ``a`` after ``b``."""
    return [_gf2_times(a, column) for column in b]


@functools.lru_cache(maxsize=16)
def _append_zeros(nbytes: int) -> list[int]:
    """The linear operator on a CRC-32 register that appends ``nbytes`` zero bytes."""
    op = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    for _ in range(3):
        op = _gf2_compose(op, op)  # eight bits: one byte
    result = [1 << n for n in range(32)]  # identity
    while nbytes:
        if nbytes & 1:
            result = _gf2_compose(op, result)
        nbytes >>= 1
        if nbytes:
            op = _gf2_compose(op, op)
    return result


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    return _gf2_times(_append_zeros(len2), crc1) ^ crc2 if len2 else crc1


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

    def add(self, name: str, source: Source, *, align: int) -> MemberDigest:
        size = source_size(source)
        entry, extra = self._header(name, size, align)
        self._write(_local_header(entry.name, entry.flags, 0, extra) + extra)
        h = _Hasher(self.pools, size)
        for piece in _pieces(source):
            for view in piece:
                self._write(view)
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


#: directory bytes per entry that the cap on entries allows (46-byte header, a long name,
#: ZIP64 and alignment extras)
_MAX_ENTRY_BYTES = 512


def write_pack(
    path: PathLike,
    members: Mapping[str, Source],
    make_manifest: Callable[[Mapping[str, MemberDigest]], bytes],
    *,
    overwrite: bool = True,
) -> dict[str, MemberDigest]:
    """Write a pack atomically, in one pass over the members' bytes.

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
        digests = _write_zip(f, members, make_manifest)
    if removed:
        warnings.warn(
            f"trtpack: removed {signature}: it signed the bytes {target} had before this "
            f"write, and no longer matches (sign again: `trtpack sign {target} --key KEY`)",
            stacklevel=2,
        )
    return digests


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
) -> dict[str, MemberDigest]:
    sizes = {name: source_size(src) for name, src in members.items()}
    draft = make_manifest(
        {n: MemberDigest(_PLACEHOLDER, s, 0, _placeholder_chunks(s)) for n, s in sizes.items()}
    )
    with _Pools.open() as pools:
        w = _ZipWriter(f, pools)
        slot = w.reserve(MANIFEST_NAME, len(draft))
        digests = {name: w.add(name, members[name], align=ALIGNMENT) for name in sorted(members)}
        final = make_manifest(digests)
        if len(final) != len(draft):
            raise AssertionError("the manifest's length depends on more than its member sizes")
        w.fill(slot, final)
        w.finish()
        w.wait_writeback()
    return digests


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberInfo:
    name: str
    offset: int  # where the data starts in the file
    size: int
    crc32: int = 0
    compressed_size: int | None = None  # None: stored


def _anonymous(size: int) -> mmap.mmap:
    """``size`` bytes of memory of this process's own, page-aligned. Private: Python's
    default for an anonymous map is MAP_SHARED (shared memory, which a forked child would
    write through to the parent)."""
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)  # pragma: no cover  (Windows: private memory)


#: the most one positional read asks for (a read past 2 GiB fails on some systems)
_OWNED_READ = 256 << 20


class PackReader:
    """A checked view of a zip file. Construction reads only the central directory and the
    local headers; member data is read (or mapped) on request."""

    def __init__(
        self,
        path: PathLike,
        *,
        require_stored: bool = True,
        check_crc: bool = False,
        data: bytearray | None = None,
    ) -> None:
        """Read the zip at ``path``, or, with ``data``, the zip in memory (``path`` then only
        names it in messages). ``check_crc``: check each member's zip CRC-32 when it is first
        read (for files without trtpack's SHA-256 digests: legacy torch.export files)."""
        self.path = Path(path)
        self._data = data
        self._check_crc = check_crc
        self._crc_checked: set[str] = set()
        self._file: BinaryIO
        if data is not None:
            self._file = _Memory(data)  # type: ignore[assignment]
        else:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                raise FileNotFoundError(f"no such file: {self.path}") from None
            except IsADirectoryError:
                raise NotAPackError(f"{self.path} is a directory, not a pack") from None
        self._mmap: mmap.mmap | None = None
        #: members read by ``owned``: read once, shared by the load and the hash check
        self._owned: dict[str, memoryview] = {}
        self._owned_lock = threading.Lock()
        #: members whose read ``owned`` checks as it goes, and those it has checked
        self._check_on_read: dict[str, Member] = {}
        self._owned_checked: dict[str, Member] = {}
        #: current member name -> name in the file, for packs of an older format version
        self.aliases: dict[str, str] = {}
        try:
            self.file_size = (
                len(data) if data is not None else os.fstat(self._file.fileno()).st_size
            )
            self.members = self._read_directory(require_stored)
        except BaseException:
            self._file.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        # An mmap stays valid after its file is closed; tensors viewing it keep it alive.
        # Owned copies belong to whoever holds them now (tensors keep their buffer alive).
        self._owned.clear()
        self._file.close()

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the directory ----------------------------------------------------------------------

    def _check_end_record(self) -> None:
        """The entry count and directory size the end record declares, against the caps,
        before :mod:`zipfile` walks the directory."""
        f = self._file
        tail_len = min(self.file_size, 22 + 0xFFFF)
        f.seek(self.file_size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return  # no end record: zipfile says so below
        count, cd_size = struct.unpack_from("<HI", tail, at + 10)
        if (count == 0xFFFF or cd_size == 0xFFFFFFFF) and at >= 20:
            sig, _, eocd64 = struct.unpack_from("<IIQ", tail, at - 20)
            if sig == 0x07064B50 and 0 <= eocd64 <= self.file_size - 56:
                f.seek(eocd64)
                record = f.read(56)
                if record[:4] == b"PK\x06\x06":
                    count, cd_size = struct.unpack_from("<QQ", record, 32)
        if count > MAX_MEMBERS:
            raise refuse("number of zip entries", MAX_MEMBERS, count, str(self.path))
        if cd_size > MAX_MEMBERS * _MAX_ENTRY_BYTES:
            raise refuse("size of the zip directory in bytes", MAX_MEMBERS * _MAX_ENTRY_BYTES,
                         cd_size, str(self.path))  # fmt: skip
        f.seek(0)

    def _read_directory(self, require_stored: bool) -> dict[str, MemberInfo]:
        f = self._file
        head = f.read(4)
        self._check_end_record()
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
            if head == b"PK\x03\x04":
                raise IntegrityError(
                    f"{self.path} starts like a zip but its central directory is missing or "
                    f"damaged — the file is probably truncated ({self.file_size} bytes): {e}"
                ) from None
            raise NotAPackError(
                f"{self.path} is not a zip file, so not a .trtpack (first bytes {head!r})"
            ) from None
        except NotImplementedError as e:  # "zip file version 25.5": a damaged directory
            raise IntegrityError(
                f"{self.path}: the zip directory asks for a zip feature trtpack does not "
                f"read ({e}); the file is damaged or not a trtpack pack",
                field="version needed to extract",
            ) from None
        except (EOFError, OSError, ValueError, struct.error, OverflowError) as e:
            raise IntegrityError(f"{self.path}: the zip directory cannot be read: {e}") from None
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise refuse("number of zip entries", MAX_MEMBERS, len(infos), str(self.path))
        members: dict[str, MemberInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for info in infos:
            name = info.filename
            if name.endswith("/") and info.file_size == 0:
                continue  # a directory entry carries no data
            check_member_name(name)
            if name in members:
                raise UnsafePackError(f"{self.path}: member {name!r} appears twice")
            if info.compress_type != zipfile.ZIP_STORED:
                if require_stored:
                    raise UnsafePackError(
                        f"{self.path}: member {name!r} is compressed (method "
                        f"{info.compress_type}); trtpack members are stored uncompressed"
                    )
            elif info.compress_size != info.file_size:
                raise UnsafePackError(
                    f"{self.path}: stored member {name!r} declares {info.file_size} bytes "
                    f"but occupies {info.compress_size}"
                )
            if info.flag_bits & 0x1:
                raise UnsafePackError(f"{self.path}: member {name!r} is encrypted")
            if info.create_system == 3:  # Unix: the high 16 bits are st_mode
                mode = info.external_attr >> 16
                if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
                    raise UnsafePackError(
                        f"{self.path}: member {name!r} is {kind} (mode {mode:o}); pack members "
                        "are regular files",
                        member=name,
                        field="external_attr",
                        value=oct(mode),
                    )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise UnsafePackError(
                    f"{self.path}: member {name!r} uses compression method "
                    f"{info.compress_type}; trtpack reads stored (and, in legacy files, "
                    "deflated) members only",
                    member=name,
                    field="compression",
                    value=info.compress_type,
                )
            data_offset = self._local_data_offset(info)
            end = data_offset + info.compress_size
            if end > self.file_size:
                raise UnsafePackError(
                    f"{self.path}: member {name!r} declares {info.compress_size} bytes at "
                    f"offset {data_offset}, beyond the end of the {self.file_size}-byte file "
                    "(truncated file or a zip bomb)"
                )
            spans.append((info.header_offset, end, name))
            stored = info.compress_type == zipfile.ZIP_STORED
            members[name] = MemberInfo(name, data_offset, info.file_size, info.CRC,
                                       None if stored else info.compress_size)  # fmt: skip
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                raise UnsafePackError(f"{self.path}: members {a!r} and {b!r} overlap")
        return members

    def _local_data_offset(self, info: zipfile.ZipInfo) -> int:
        if info.header_offset < 0 or info.header_offset + 30 > self.file_size:
            raise UnsafePackError(
                f"{self.path}: member {info.filename!r} has its header beyond the end of the file"
            )
        self._file.seek(info.header_offset)
        header = self._file.read(30)
        sig, *_, name_len, extra_len = struct.unpack("<IHHHHHIIIHH", header)
        if sig != 0x04034B50:
            raise IntegrityError(
                f"{self.path}: member {info.filename!r} has no local header at "
                f"offset {info.header_offset}"
            )
        raw_name = self._file.read(name_len)
        if len(raw_name) != name_len:
            raise IntegrityError(
                f"{self.path}: member {info.filename!r}: its local header runs past the end "
                "of the file (truncated)",
                member=info.filename,
            )
        name = raw_name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        if name != info.filename:
            raise UnsafePackError(
                f"{self.path}: local header names {name!r} where the directory names "
                f"{info.filename!r}"
            )
        return info.header_offset + 30 + name_len + extra_len

    # -- member data ------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.members

    def info(self, name: str) -> MemberInfo:
        try:
            return self.members[self.aliases.get(name, name)]
        except KeyError:
            raise MissingMemberError(f"{self.path} has no member {name!r}") from None

    def read(self, name: str) -> bytes:
        """A member's bytes (a copy). For small members."""
        info = self.info(name)
        self._file.seek(info.offset)
        stored = info.size if info.compressed_size is None else info.compressed_size
        data = self._file.read(stored)
        if len(data) != stored:
            raise IntegrityError(f"{self.path}: member {name!r} is truncated", member=name)
        if info.compressed_size is not None:
            data = self._inflate(info, data)
        self._crc(info, data)
        return data

    def _inflate(self, info: MemberInfo, data: bytes) -> bytes:
        """A deflated member of a legacy file, never inflated past its declared size."""
        try:
            inflater = zlib.decompressobj(-15)
            out = inflater.decompress(data, info.size + 1)
        except zlib.error as e:
            raise IntegrityError(
                f"{self.path}: member {info.name!r} does not inflate: {e}", member=info.name
            ) from None
        if len(out) != info.size:
            raise IntegrityError(
                f"{self.path}: member {info.name!r} inflates to a size other than the "
                f"{info.size} bytes the directory declares",
                member=info.name,
                field="size",
                expected=info.size,
            )
        return out

    def _crc(self, info: MemberInfo, data: Data) -> None:
        if not self._check_crc or info.name in self._crc_checked:
            return
        got = zlib.crc32(data)
        if got != info.crc32:
            raise IntegrityError(
                f"{self.path}: member {info.name!r} is corrupt: its CRC-32 is {got:08x}, the "
                f"zip directory says {info.crc32:08x}",
                member=info.name,
                field="crc32",
                expected=f"{info.crc32:08x}",
                got=f"{got:08x}",
            )
        self._crc_checked.add(info.name)

    def view(self, name: str) -> memoryview:
        """A zero-copy, writable (copy-on-write) view of a member's bytes, backed by a private
        memory map of the file."""
        info = self.info(name)
        if info.compressed_size is not None:
            return memoryview(bytearray(self.read(name)))
        if info.size == 0:
            self._crc(info, b"")
            return memoryview(b"")
        if self._data is not None:
            view = memoryview(self._data)[info.offset : info.offset + info.size]
        else:
            if self._mmap is None:
                self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            view = memoryview(self._mmap)[info.offset : info.offset + info.size]
        self._crc(info, view)
        return view

    def owned(self, name: str) -> memoryview:
        """A member's bytes in memory of their own: read from the file once (later calls on
        this reader share the same buffer, so the hash check and the load see one copy), and
        from then on untouched by anything done to the file — truncated, overwritten in place
        or by ``cp``. A private map's pages stay backed by the file until written, so such
        changes reach a ``view`` (truncation as SIGBUS). The buffer is a page-aligned anonymous
        map, so data aligned in the file (tensors at 64 bytes) stays aligned; writable."""
        with self._owned_lock:  # the hash check (a thread) and the load ask at the same time
            got = self._owned.get(name)
            if got is None:
                member = self._check_on_read.pop(name, None)
                got = self._read_owned(self.info(name), member)
                self._owned[name] = got
                if member is not None:
                    self._owned_checked[name] = member
            return got

    def check_when_read(self, name: str, member: Member) -> None:
        """Have the read that ``owned(name)`` makes check the bytes against ``member`` as they
        arrive: each piece is hashed on other cores while the next is read, so the check
        costs little more than the read. ``verify(name, member, owned=True)`` then finds it
        done (or, where the read raised, checks again and raises the same)."""
        self._check_on_read[name] = member

    def _read_owned(self, info: MemberInfo, member: Member | None) -> memoryview:
        if info.compressed_size is not None:
            return memoryview(bytearray(self.read(info.name)))
        if info.size == 0:
            self._crc(info, b"")
            return memoryview(bytearray())
        if self._data is not None:  # already in memory of the caller's (a migration)
            view = memoryview(self._data)[info.offset : info.offset + info.size]
            self._crc(info, view)
            return view
        buf = memoryview(_anonymous(info.size))
        if not hasattr(os, "preadv"):  # pragma: no cover  (Windows: copied from the map)
            buf[:] = self.view(info.name)
            return buf
        if member is not None:
            self._check_size(info.name, info, member)
        from concurrent.futures import ThreadPoolExecutor

        # Pieces as the manifest records them, each read and hashed by one worker, the pieces
        # in parallel (reads release the GIL, as hashing does). A member verified by its
        # whole SHA-256 is hashed in order, on one thread, beside the read of the next piece.
        chunked = member is not None and member.chunks is not None
        whole = hashlib.sha256() if member is not None and not chunked else None
        step = member.chunks.size if member is not None and member.chunks else DIGEST_CHUNK
        pieces = [(start, min(start + step, info.size)) for start in range(0, info.size, step)]

        def read(span: tuple[int, int]) -> str:
            self._pread(info, buf, *span)
            return hashlib.sha256(buf[span[0] : span[1]]).hexdigest() if chunked else ""

        if whole is None:  # unchecked, or checked by pieces
            with ThreadPoolExecutor(max(1, min(len(pieces), os.cpu_count() or 1))) as pool:
                results = list(pool.map(read, pieces))
            if member is not None:
                self._compare_pieces(info.name, member, results, info.size)
        else:
            with ThreadPoolExecutor(1) as pool:
                jobs: list[Future[Any]] = []
                for start, end in pieces:
                    self._pread(info, buf, start, end)
                    jobs.append(pool.submit(whole.update, buf[start:end]))
                for job in jobs:
                    job.result()
            assert member is not None
            self._compare(info.name, "sha256", member.sha256, whole.hexdigest())
        self._crc(info, buf)
        return buf

    def _pread(self, info: MemberInfo, buf: memoryview, start: int, end: int) -> None:
        """Bytes ``[start, end)`` of the member into the same range of ``buf``, by positional
        reads (the file object's position is shared with other readers of it)."""
        fd = self._file.fileno()
        done = start
        while done < end:
            n = os.preadv(fd, [buf[done : min(end, done + _OWNED_READ)]], info.offset + done)
            if n == 0:
                raise IntegrityError(
                    f"{self.path}: member {info.name!r} is truncated: the file ended after "
                    f"{done} of its {info.size} bytes (changed while being read?)",
                    member=info.name, field="size", expected=info.size, got=done,
                )  # fmt: skip
            done += n

    def slice(self, name: str) -> Source:
        """The member as a source to copy into another pack, without reading it here."""
        info = self.info(name)
        if self._data is not None or info.compressed_size is not None or self._check_crc:
            return self.view(name)
        return FileSlice(self.path, info.offset, info.size)

    def verify(self, name: str, member: Member, *, owned: bool = False) -> None:
        """Check a member against the manifest's record of it (size, and the SHA-256 of each
        piece when recorded, else of the whole); raise IntegrityError naming what differs.
        Pieces are hashed in place (nothing is copied), on every core. ``owned``: hash the
        bytes ``owned(name)`` returns (reading them if no one has yet), so that what is
        checked is exactly what a load keeps; else the file's map."""
        info = self.info(name)
        self._check_size(name, info, member)
        if owned:
            view = self.owned(name)
            if self._owned_checked.get(name) == member:
                return  # checked piece by piece as it was read (check_when_read)
        else:
            view = self.view(name)
        if member.chunks is None:
            sha = hashlib.sha256()
            for start in range(0, len(view), _CHUNK):
                sha.update(view[start : start + _CHUNK])
            self._compare(name, "sha256", member.sha256, sha.hexdigest())
            return
        from concurrent.futures import ThreadPoolExecutor

        step = member.chunks.size
        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            got = list(
                pool.map(
                    lambda start: hashlib.sha256(view[start : start + step]).hexdigest(),
                    range(0, len(view), step),
                )
            )
        self._compare_pieces(name, member, got, len(view))

    def _check_size(self, name: str, info: MemberInfo, member: Member) -> None:
        if info.size != member.size:
            raise IntegrityError(
                f"{self.path}: member {name!r} is {info.size} bytes, the manifest says "
                f"{member.size}",
                member=name, field="size", expected=member.size, got=info.size,
            )  # fmt: skip

    def _compare_pieces(self, name: str, member: Member, got: list[str], size: int) -> None:
        assert member.chunks is not None
        step = member.chunks.size
        for index, (expected, actual) in enumerate(zip(member.chunks.sha256, got, strict=True)):
            where = f" (bytes {index * step}..{min((index + 1) * step, size)})"
            self._compare(name, f"chunks.sha256[{index}]", expected, actual, where)

    def _compare(self, name: str, field: str, expected: str, got: str, where: str = "") -> None:
        if got != expected:
            raise IntegrityError(
                f"{self.path}: member {name!r} is corrupt{where}: SHA-256 {got[:16]}… does not "
                f"match the manifest's {expected[:16]}…",
                member=name, field=field, expected=expected, got=got,
            )  # fmt: skip
