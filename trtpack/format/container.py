"""The .trtpack zip: where every byte is written and where every byte is checked. No torch.

The one name the rest of trtpack imports the zip by; the code lives by job:
:mod:`.digests` (byte sources, SHA-256 and CRC-32 on pools of threads, CRC-32 combination),
:mod:`.zip_write` (the one writer: aligned STORED members, ZIP64, atomic ``write_pack``,
``pack_bytes`` in memory) and :mod:`.zip_read` (``PackReader``: every entry checked before
use, zero-copy views, owned reads, digest checks).
"""

from __future__ import annotations

from .atomic import atomic_write
from .atomic import fsync_dir as _fsync_dir  # noqa: F401
from .digests import (
    DIGEST_CHUNK,
    Chunks,
    Data,
    FileSlice,
    MemberDigest,
    PathLike,
    Source,
    crc32_combine,
    digest,
    piece_count,
    read_head,
    source_size,
)
from .zip_read import MemberInfo, PackReader
from .zip_write import ALIGNMENT, SIGNATURE_SUFFIX, check_member_name, pack_bytes, write_pack

__all__ = [
    "ALIGNMENT",
    "DIGEST_CHUNK",
    "SIGNATURE_SUFFIX",
    "Chunks",
    "Data",
    "FileSlice",
    "MemberDigest",
    "MemberInfo",
    "PackReader",
    "PathLike",
    "Source",
    "atomic_write",
    "check_member_name",
    "crc32_combine",
    "digest",
    "pack_bytes",
    "piece_count",
    "read_head",
    "source_size",
    "write_pack",
]
