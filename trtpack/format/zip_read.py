"""The .trtpack zip, read: where every byte of a pack is checked. No torch.

Reading (``PackReader``): the central directory is parsed by :mod:`zipfile`; then every entry
is checked before any member is used (names, duplicates, compression, sizes against the file,
local headers against the central directory, overlaps). Members are served as zero-copy views
of a private memory map (``view``: for work done while the file is open), or read into memory
of their own (``owned``: what a load keeps, so that nothing later done to the file reaches
it), and checked against the manifest's digests on request: a member's 16 MiB pieces on every
core where the manifest records them (format 1.3), else its SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
import stat
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from ..errors import IntegrityError, MissingMemberError, NotAPackError, UnsafePackError
from .digests import _CHUNK, DIGEST_CHUNK, Data, FileSlice, PathLike, Source, usable_cores
from .limits import MAX_MEMBERS, refuse
from .manifest import Member
from .progress import Progress
from .zip_write import _Memory, check_member_name

if TYPE_CHECKING:
    from concurrent.futures import Future

#: directory bytes per entry that the cap on entries allows (46-byte header, a long name,
#: ZIP64 and alignment extras)
_MAX_ENTRY_BYTES = 512


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
#: ``read_into`` reads pieces up to this size into its sink's buffers; a member recorded in
#: larger pieces is read whole first (a sink's buffers are of one piece each)
_MAX_PIECE = 64 << 20


class Sink(Protocol):
    """Where ``PackReader.read_into`` puts a member's bytes, piece by piece (the pieces its
    digests are recorded in): each piece is read into a buffer the sink gives (``slot``),
    handed back to it (``fill``: the sink uses the bytes, e.g. copies them to a device),
    hashed from that same buffer, and released (``release``: the sink may reuse it). Several
    pieces are in flight at once, on ``workers`` threads at most; ``slot`` may block until a
    buffer is free. A member that is already in memory (or cannot be read piece by piece) is
    filled from the reader's own memory, which ``slot`` did not give."""

    #: the most pieces the sink takes at once (the reader's threads)
    workers: int

    def slot(self, start: int, end: int) -> memoryview: ...

    def fill(self, start: int, end: int, data: memoryview) -> None: ...

    def release(self, data: memoryview) -> None: ...


class _Into:
    """The sink of ``owned``: each piece read straight into its place in one buffer."""

    workers = 1 << 30

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf

    def slot(self, start: int, end: int) -> memoryview:
        return self.buf[start:end]

    def fill(self, start: int, end: int, data: memoryview) -> None:
        pass

    def release(self, data: memoryview) -> None:
        pass


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
        self._seek_lock = threading.Lock()  # seek + read of ``read`` (other reads are positional)
        #: members whose read (``owned``, ``read_into``) checks as it goes, and those it has
        #: checked so: the bytes a load keeps, or copied on, are the bytes hashed
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
        stored = info.size if info.compressed_size is None else info.compressed_size
        with self._seek_lock:  # a load reads the graph on one thread, the weights on others
            self._file.seek(info.offset)
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

    def release_pages(self) -> None:
        """Drop the pages of the file's memory map from this process's memory (RSS). They
        are read from the file again if touched, so views stay valid and read the file's bytes
        (a write through a view into this private map is dropped). ``trtpack.build`` calls it
        once the program's weights are exported to ONNX, before TensorRT-RTX's builder takes
        several times their size."""
        if self._mmap is not None and hasattr(mmap, "MADV_DONTNEED"):  # not on Windows
            self._mmap.madvise(mmap.MADV_DONTNEED)

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
        """Have the read that ``owned(name)`` (or ``read_into``) makes check the bytes against
        ``member`` as they arrive: each piece is hashed on other cores while the next is read,
        so the check costs little more than the read. ``verify(name, member, owned=True)``
        then finds it done (or, where the read raised, checks again and raises the same)."""
        self._check_on_read[name] = member

    def checked_when_read(self, name: str, member: Member) -> bool:
        """Whether a read of ``name`` (``owned``, ``read_into``) has checked it against
        ``member`` (``check_when_read``) and found it whole."""
        return self._owned_checked.get(name) == member

    def read_into(self, name: str, sink: Sink) -> None:
        """A member's bytes through ``sink``, piece by piece (see :class:`Sink`): read from the
        file by positional reads on up to ``sink.workers`` threads, each piece handed to the
        sink and hashed from the same buffer when ``check_when_read`` asked for it, the hashes
        compared once every piece is in (IntegrityError: the sink has been given bytes that do
        not match, and its caller must drop what it made of them). So a load that copies the
        weights on to a device copies exactly the bytes it hashed, and never holds the whole
        member in memory of its own. A member in memory already (an in-memory pack), deflated,
        or read where pieces cannot be (no ``preadv``) is read whole (``owned``, checked
        the same way) and filled from there."""
        info = self.info(name)
        with self._owned_lock:
            member = self._check_on_read.pop(name, None)
        step = member.chunks.size if member is not None and member.chunks else DIGEST_CHUNK
        if (info.compressed_size is not None or info.size == 0 or self._data is not None
                or self._check_crc or not hasattr(os, "preadv") or step > _MAX_PIECE):  # fmt: skip
            if member is not None:
                self._check_on_read[name] = member
            data = self.owned(name)
            for start in range(0, len(data), DIGEST_CHUNK):
                end = min(start + DIGEST_CHUNK, len(data))
                sink.fill(start, end, data[start:end])
            return
        if member is not None:
            self._check_size(name, info, member)
        self._read_pieces(info, member, sink)
        if member is not None:
            self._owned_checked[name] = member

    def _read_owned(self, info: MemberInfo, member: Member | None) -> memoryview:
        if info.compressed_size is not None:
            view = memoryview(bytearray(self.read(info.name)))
        elif info.size == 0:
            self._crc(info, b"")
            view = memoryview(bytearray())
        elif self._data is not None:  # already in memory of the caller's (a migration)
            view = memoryview(self._data)[info.offset : info.offset + info.size]
            self._crc(info, view)
        elif not hasattr(os, "preadv"):  # pragma: no cover  (Windows: copied from the map)
            view = memoryview(_anonymous(info.size))
            view[:] = self.view(info.name)
        else:
            buf = memoryview(_anonymous(info.size))
            if member is not None:
                self._check_size(info.name, info, member)
            self._read_pieces(info, member, _Into(buf))
            self._crc(info, buf)
            return buf
        if member is not None:  # read whole: checked whole, as ``verify`` checks
            self._check_size(info.name, info, member)
            self._check_bytes(info.name, view, member)
        return view

    def _read_pieces(self, info: MemberInfo, member: Member | None, sink: Sink) -> None:
        """Every piece of the member read into a buffer of ``sink``'s, handed to it, and
        hashed (``member``: against its record) from that buffer."""
        from concurrent.futures import ThreadPoolExecutor

        # Pieces as the manifest records them, each read and hashed by one worker, the pieces
        # in parallel (reads release the GIL, as hashing does). A member verified by its
        # whole SHA-256 is hashed in order, on one thread, beside the read of the next piece.
        chunked = member is not None and member.chunks is not None
        whole = hashlib.sha256() if member is not None and not chunked else None
        step = member.chunks.size if member is not None and member.chunks else DIGEST_CHUNK
        pieces = [(start, min(start + step, info.size)) for start in range(0, info.size, step)]

        def read(span: tuple[int, int]) -> str:
            data = sink.slot(*span)
            try:
                self._pread(info, data, span[0])
                sink.fill(*span, data)
                return hashlib.sha256(data).hexdigest() if chunked else ""
            finally:
                sink.release(data)

        if whole is None:  # unchecked, or checked by pieces
            workers = max(1, min(len(pieces), usable_cores(), sink.workers))
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(read, pieces))
            if member is not None:
                self._compare_pieces(info.name, member, results, info.size)
            return

        def hashed(data: memoryview) -> None:
            try:
                whole.update(data)
            finally:
                sink.release(data)

        with ThreadPoolExecutor(1) as pool:
            jobs: list[Future[Any]] = []
            for start, end in pieces:
                data = sink.slot(start, end)
                try:
                    self._pread(info, data, start)
                    sink.fill(start, end, data)
                except BaseException:
                    sink.release(data)
                    raise
                jobs.append(pool.submit(hashed, data))
            for job in jobs:
                job.result()
        assert member is not None
        self._compare(info.name, "sha256", member.sha256, whole.hexdigest())

    def _pread(self, info: MemberInfo, dest: memoryview, start: int) -> None:
        """Bytes ``[start, start + len(dest))`` of the member into ``dest``, by positional
        reads (the file object's position is shared with other readers of it)."""
        fd = self._file.fileno()
        done, end = 0, len(dest)
        while done < end:
            n = os.preadv(fd, [dest[done : min(end, done + _OWNED_READ)]],
                          info.offset + start + done)  # fmt: skip
            if n == 0:
                raise IntegrityError(
                    f"{self.path}: member {info.name!r} is truncated: the file ended after "
                    f"{start + done} of its {info.size} bytes (changed while being read?)",
                    member=info.name, field="size", expected=info.size, got=start + done,
                )  # fmt: skip
            done += n

    def slice(self, name: str) -> Source:
        """The member as a source to copy into another pack, without reading it here."""
        info = self.info(name)
        if self._data is not None or info.compressed_size is not None or self._check_crc:
            return self.view(name)
        return FileSlice(self.path, info.offset, info.size)

    def verify(
        self, name: str, member: Member, *, owned: bool = False, progress: Progress | None = None
    ) -> None:
        """Check a member against the manifest's record of it (size, and the SHA-256 of each
        piece when recorded, else of the whole); raise IntegrityError naming what differs.
        Pieces are hashed in place (nothing is copied), on every core. ``owned``: hash the
        bytes ``owned(name)`` returns (reading them if no one has yet), so that what is
        checked is exactly what a load keeps; else the file's map. ``progress``: the member
        is begun on it and the bytes hashed are counted as each piece is done."""
        info = self.info(name)
        self._check_size(name, info, member)
        if progress is not None:
            progress.begin(name)
        if owned:
            view = self.owned(name)
            if self._owned_checked.get(name) == member:
                if progress is not None:
                    progress.advance(len(view))
                return  # checked piece by piece as it was read (check_when_read)
        else:
            view = self.view(name)
        self._check_bytes(name, view, member, progress)

    def verify_bytes(self, name: str, data: bytes | memoryview, member: Member) -> None:
        """``data``, this member's bytes as the caller read them (``read``), against the
        manifest's record: what a load parses is then exactly what was hashed."""
        self._check_size(name, self.info(name), member)
        self._check_bytes(name, memoryview(data), member)

    def _check_bytes(
        self, name: str, view: memoryview, member: Member, progress: Progress | None = None
    ) -> None:
        """``view`` (the member's bytes) against its record: pieces on every core; the bytes
        hashed counted on ``progress``."""
        if member.chunks is None:
            sha = hashlib.sha256()
            for start in range(0, len(view), _CHUNK):
                piece = view[start : start + _CHUNK]
                sha.update(piece)
                if progress is not None:
                    progress.advance(len(piece))
            self._compare(name, "sha256", member.sha256, sha.hexdigest())
            return
        from concurrent.futures import ThreadPoolExecutor

        step = member.chunks.size
        got = []
        with ThreadPoolExecutor(usable_cores()) as pool:
            # the pieces' results in order, counted here (one thread drives ``progress``)
            for start, digest in zip(
                range(0, len(view), step),
                pool.map(
                    lambda start: hashlib.sha256(view[start : start + step]).hexdigest(),
                    range(0, len(view), step),
                ),
            ):
                got.append(digest)
                if progress is not None:
                    progress.advance(min(step, len(view) - start))
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
