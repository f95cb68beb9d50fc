"""Member digests (format 1.3): the whole member's SHA-256 for OCI and model_signing, the
SHA-256 of each 16 MiB piece for verifying on every core, and the zip CRC-32 combined from
the pieces' CRCs. Each is checked against hashlib/zlib over the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trtpack
from trtpack.format.container import (
    DIGEST_CHUNK,
    Chunks,
    PackReader,
    crc32_combine,
    digest,
    piece_count,
)
from trtpack.format.manifest import MANIFEST_NAME, Manifest

WEIGHTS = "program/weights.safetensors"


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=300), b=st.binary(max_size=300), pad=st.integers(0, 70000))
def test_crc32_combine_is_zlibs(a, b, pad):
    b = b + bytes(pad)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@pytest.mark.parametrize("size", [0, 1, DIGEST_CHUNK, DIGEST_CHUNK + 1, 2 * DIGEST_CHUNK + 12345])
def test_digest_of_a_split_source(size):
    data = os.urandom(size)
    cut = min(7, size)  # the pieces do not follow the source's own buffers
    d = digest(Chunks((data[:cut], memoryview(data)[cut:])))
    assert (d.sha256, d.size, d.crc32) == (hashlib.sha256(data).hexdigest(), size, zlib.crc32(data))
    pieces = [data[i : i + DIGEST_CHUNK] for i in range(0, size, DIGEST_CHUNK)]
    expected = tuple(hashlib.sha256(p).hexdigest() for p in pieces) if size > DIGEST_CHUNK else None
    assert d.chunks == expected and len(d.chunks or ()) == piece_count(size)


@pytest.fixture(scope="module")
def big_pack(tmp_path_factory):
    """A pack whose weights member spans two pieces."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2400, 2400).eval()  # 23 MB of float32
    ep = torch.export.export(model, (torch.randn(2, 2400),))
    path = tmp_path_factory.mktemp("big") / "big.trtpack"
    trtpack.save(ep, path)
    return path


def test_a_large_member_records_its_pieces(big_pack):
    m = trtpack.inspect(big_pack).manifest.members[WEIGHTS]
    data = zipfile.ZipFile(big_pack).read(WEIGHTS)
    assert m.chunks is not None and m.chunks.size == DIGEST_CHUNK
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert list(m.chunks.sha256) == [
        hashlib.sha256(data[i : i + DIGEST_CHUNK]).hexdigest()
        for i in range(0, len(data), DIGEST_CHUNK)
    ]
    assert zipfile.ZipFile(big_pack).testzip() is None  # the combined CRC-32 is the zip's
    small = trtpack.inspect(big_pack).manifest.members["program/graph.json"]
    assert small.chunks is None  # one piece: its whole SHA-256 covers it


def test_a_corrupt_piece_is_named(big_pack, tmp_path):
    bad = tmp_path / "bad.trtpack"
    raw = bytearray(big_pack.read_bytes())
    with PackReader(big_pack) as reader:
        offset = reader.info(WEIGHTS).offset
    raw[offset + DIGEST_CHUNK + 100] ^= 0xFF  # in the second piece
    bad.write_bytes(raw)
    with pytest.raises(trtpack.IntegrityError, match=r"corrupt \(bytes 16777216\.\.") as e:
        trtpack.verify(bad)
    assert (e.value.member, e.value.field) == (WEIGHTS, "chunks.sha256[1]")
    with pytest.raises(trtpack.IntegrityError):
        trtpack.load(bad, device="cpu")
    trtpack.load(bad, device="cpu", verify=False)  # the hash check is what refused it


def test_piece_digests_must_cover_the_member(big_pack):
    data = json.loads(zipfile.ZipFile(big_pack).read(MANIFEST_NAME))
    data["members"][WEIGHTS]["chunks"]["sha256"].pop()
    with pytest.raises(trtpack.ManifestError, match="chunk digests") as e:
        Manifest.from_dict(data)
    assert e.value.field == f"members/{WEIGHTS}/chunks" and (e.value.expected, e.value.got) == (
        2,
        1,
    )


def test_a_pack_without_piece_digests_verifies_whole(big_pack, tmp_path):
    """A 1.2 pack records only the whole SHA-256; a reader checks that instead."""
    members = {i.filename: zipfile.ZipFile(big_pack).read(i) for i in
               zipfile.ZipFile(big_pack).infolist()}  # fmt: skip
    manifest = json.loads(members.pop(MANIFEST_NAME))
    manifest["format_version"] = [1, 2]
    for m in manifest["members"].values():
        m.pop("chunks", None)
    old = tmp_path / "old.trtpack"
    with zipfile.ZipFile(old, "w") as z:
        z.writestr(MANIFEST_NAME, json.dumps(manifest))
        for name, data in members.items():
            z.writestr(name, data)
    info = trtpack.verify(old)
    assert info.upgraded_from == (1, 2) and info.manifest.members[WEIGHTS].chunks is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_hashing_threads_follow_the_process_affinity():
    """A container or `taskset` may give the process fewer cores than the machine has: the
    hashing pools size themselves to the cores it may run on, not to os.cpu_count()."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from trtpack.format import digests\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "with digests._Pools.open() as pools:\n"
        "    print(digests.usable_cores(), pools.pieces._max_workers)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["1", "1"]
