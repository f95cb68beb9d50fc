"""A member's bytes and their digests: the byte sources a member is written from, their
SHA-256 (whole and per 16 MiB piece) and CRC-32, hashed on pools of threads, and the CRC-32
of concatenated pieces. No torch; nothing of the zip.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError

if TYPE_CHECKING:  # the threads are for writing and hashing: reading a manifest needs none
    from concurrent.futures import Future, ThreadPoolExecutor

_CHUNK = 8 << 20
#: members larger than this also record the SHA-256 of each piece of this size (format 1.3),
#: so that verifying them uses every core; the manifest records the size it used
DIGEST_CHUNK = 16 << 20
#: pieces a write may have read but not yet hashed
_IN_FLIGHT = 8

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


def read_head(source: Source, n: int) -> bytes:
    """The first ``n`` bytes of a member's source (fewer if it is shorter)."""
    out = bytearray()
    for view in _chunks(source):
        out += view[: n - len(out)]
        if len(out) >= n:
            break
    return bytes(out)


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

        workers = usable_cores()
        with (
            ThreadPoolExecutor(1) as whole,
            ThreadPoolExecutor(workers) as pieces,
            ThreadPoolExecutor(1) as writeback,
        ):
            yield cls(whole, pieces, writeback)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container or ``taskset`` may give
    it fewer than the machine has), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


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
