"""The zip: aligned, ZIP64, deterministic, and every malformed or hostile file gets its own
clear trtpack error (never a raw zipfile/json/KeyError traceback)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trtpack
from trtpack.format.container import ALIGNMENT, PackReader, digest, write_pack
from trtpack.format.manifest import MANIFEST_NAME, Manifest


def raw_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def rewrite(src: Path, dst: Path, edit_manifest=None, replace=None, extra=None) -> Path:
    """A copy of a pack with its manifest edited and/or members replaced (hashes fixed up
    unless the edit says otherwise), written with trtpack's own writer."""
    members = raw_members(src)
    manifest = json.loads(members.pop(MANIFEST_NAME))
    for name, data in (replace or {}).items():
        members[name] = data
        manifest["members"][name] = {"sha256": digest(data).sha256, "size": len(data)}
    for name, data in (extra or {}).items():
        members[name] = data
    if edit_manifest:
        edit_manifest(manifest)
    raw = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    write_pack(dst, members, lambda _digests: raw)  # the manifest exactly as edited
    return dst


def zip_of(path: Path, entries: list[tuple[str, bytes]], method=zipfile.ZIP_STORED) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names; that is the point
        with zipfile.ZipFile(path, "w", compression=method) as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name)
                info.compress_type = method
                z.writestr(info, data)
    return path


# --- the layout ----------------------------------------------------------------------------


def test_manifest_first_members_aligned_stored_zip64(small_pack):
    with zipfile.ZipFile(small_pack) as z:
        infos = z.infolist()
    assert infos[0].filename == MANIFEST_NAME and infos[0].header_offset == 0
    assert [i.filename for i in infos[1:]] == sorted(i.filename for i in infos[1:])
    with PackReader(small_pack) as r:
        for info in infos[1:]:
            assert r.info(info.filename).offset % ALIGNMENT == 0, info.filename
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert struct.unpack_from("<H", info.extra, 0)[0] == 1  # the ZIP64 extra field


def test_standard_tools_read_the_pack(small_pack):
    with zipfile.ZipFile(small_pack) as z:
        assert z.testzip() is None
    if shutil.which("unzip"):
        out = subprocess.run(["unzip", "-t", str(small_pack)], capture_output=True, text=True)
        assert out.returncode == 0 and "No errors detected" in out.stdout


def test_writer_is_deterministic_and_sorted(tmp_path):
    members = {"b/two": b"2" * 10, "a/one": b"1" * 5000}

    def manifest(digests):
        return json.dumps({n: d.sha256 for n, d in sorted(digests.items())}).encode()

    got = write_pack(tmp_path / "x", members, manifest)
    write_pack(tmp_path / "y", dict(reversed(list(members.items()))), manifest)
    assert got == {n: digest(d) for n, d in members.items()}
    assert (tmp_path / "x").read_bytes() == (tmp_path / "y").read_bytes()
    with zipfile.ZipFile(tmp_path / "x") as z:
        assert z.namelist() == [MANIFEST_NAME, "a/one", "b/two"]
        assert z.read("a/one") == members["a/one"]


@pytest.mark.slow
def test_member_over_4_gib(tmp_path):
    """ZIP64 for real: a 4.1 GiB member (a sparse source file) is written and read back."""
    from trtpack.format.container import FileSlice

    big = tmp_path / "big.bin"
    size = (4 << 30) + 12345
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size - 5)
        f.write(b"tail!")
    src = FileSlice(big, 0, size)
    pack = tmp_path / "big.zip"
    got = write_pack(pack, {"engines/big.plan": src}, lambda d: b"{}")
    assert got["engines/big.plan"].size == size
    big.unlink()
    with PackReader(pack) as r:
        info = r.info("engines/big.plan")
        assert info.size == size and info.offset % ALIGNMENT == 0
        assert bytes(r.view("engines/big.plan")[-5:]) == b"tail!"
    with zipfile.ZipFile(pack) as z:
        assert z.getinfo("engines/big.plan").file_size == size


@pytest.mark.slow
def test_a_pack_over_4_gib_saves_verifies_loads_and_runs(tmp_path):
    """Big members just work, end to end: an ExportedProgram whose weights member is over
    4 GiB is saved, verified, loaded and called, reading bytes on both sides of the 4 GiB
    mark (about a minute here: the bytes are written, hashed and read back once each)."""
    import gc

    import torch

    size = (4 << 30) + 12345

    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("big", torch.zeros(size, dtype=torch.uint8))
            self.big[0], self.big[(4 << 30) + 1], self.big[-1] = 7, 9, 11

        def forward(self, x):
            return x + self.big[0] + self.big[(4 << 30) + 1] + self.big[-1]

    x = torch.arange(3, dtype=torch.uint8)
    model = Big()
    ep = torch.export.export(model, (x,))
    path = trtpack.save(ep, tmp_path / "big.trtpack").path
    del ep, model
    gc.collect()
    manifest = trtpack.inspect(path).manifest
    assert manifest.members[manifest.program.weights].size > size  # the tensor and its header
    trtpack.verify(path)
    pack = trtpack.load(path, device="cpu")
    assert torch.equal(pack(x), x + 27)
    with zipfile.ZipFile(path) as z:  # a standard reader agrees on every entry's size
        assert z.getinfo(manifest.program.weights).file_size > size


# --- hostile and broken files ------------------------------------------------------------------


def test_truncated_pack(small_pack, tmp_path):
    data = small_pack.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        bad = tmp_path / f"cut{cut}.trtpack"
        bad.write_bytes(data[:cut])
        with pytest.raises(trtpack.IntegrityError, match="truncated"):
            trtpack.inspect(bad)


def test_not_a_zip(tmp_path):
    for name, data in [
        ("text", b"hello world\n" * 10),
        ("empty", b""),
        ("torchscript", b"\x80\x02}q\x00."),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(trtpack.NotAPackError, match="not a zip file"):
            trtpack.inspect(path)
    with pytest.raises(trtpack.NotAPackError, match="is a directory"):
        trtpack.inspect(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        trtpack.inspect(tmp_path / "missing.trtpack")


def test_zip_without_manifest(tmp_path):
    path = zip_of(tmp_path / "other.zip", [("readme.txt", b"hi")])
    with pytest.raises(
        trtpack.NotAPackError, match=r"a zip without manifest.json \(members: readme.txt\)"
    ):
        trtpack.inspect(path)


def test_manifest_failing_the_schema(small_pack, tmp_path):
    def break_it(m):
        m["inputs"][0]["dtype"] = "float33"
        del m["producer"]

    bad = rewrite(small_pack, tmp_path / "bad.trtpack", edit_manifest=break_it)
    with pytest.raises(trtpack.ManifestError, match=r"fails the JSON Schema") as e:
        trtpack.inspect(bad)
    assert "at inputs/0/dtype: 'float33' is not one of" in str(e.value)
    assert "'producer' is a required property" in str(e.value)


def test_manifest_not_json(small_pack, tmp_path):
    members = raw_members(small_pack)
    members[MANIFEST_NAME] = b"{not json"
    bad = zip_of(tmp_path / "nj.trtpack", list(members.items()))
    with pytest.raises(trtpack.ManifestError, match="not valid JSON"):
        trtpack.inspect(bad)


def test_manifest_inconsistent_beyond_schema(small_pack, tmp_path):
    def bad_opt(m):
        m["symbols"]["batch"]["opt"] = 99

    bad = rewrite(small_pack, tmp_path / "opt.trtpack", edit_manifest=bad_opt)
    with pytest.raises(trtpack.ManifestError, match=r"symbol 'batch': opt 99 outside \[1, 64\]"):
        trtpack.inspect(bad)


def test_member_hash_mismatch(small_pack, tmp_path):
    weights = trtpack.inspect(small_pack).manifest.program.weights
    bad = tmp_path / "flipped.trtpack"
    data = bytearray(small_pack.read_bytes())
    with PackReader(small_pack) as r:
        offset = r.info(weights).offset
    data[offset + 200] ^= 0xFF
    bad.write_bytes(bytes(data))
    trtpack.inspect(bad)  # inspect reads the manifest only: it does not notice
    with pytest.raises(
        trtpack.IntegrityError, match=r"member 'program/weights.safetensors' is corrupt: SHA-256"
    ):
        trtpack.verify(bad)
    with pytest.raises(trtpack.IntegrityError, match="is corrupt"):
        trtpack.load(bad, device="cpu")


def test_member_size_disagrees_with_manifest(small_pack, tmp_path):
    def shrink(m):
        m["members"]["program/graph.json"]["size"] -= 1

    bad = rewrite(small_pack, tmp_path / "size.trtpack", edit_manifest=shrink)
    with pytest.raises(
        trtpack.IntegrityError, match=r"'program/graph.json' is \d+ bytes, the manifest says"
    ):
        trtpack.inspect(bad)


def test_member_missing_or_unlisted(small_pack, tmp_path):
    def add_ghost(m):
        m["members"]["ghost.bin"] = {"sha256": "0" * 64, "size": 1}

    bad = rewrite(small_pack, tmp_path / "ghost.trtpack", edit_manifest=add_ghost)
    with pytest.raises(trtpack.MissingMemberError, match=r"lists 'ghost.bin', the zip lacks it"):
        trtpack.inspect(bad)
    bad = rewrite(small_pack, tmp_path / "stow.trtpack", extra={"stowaway.bin": b"x"})
    with pytest.raises(
        trtpack.UnsafePackError, match=r"'stowaway.bin' is not listed in the manifest"
    ):
        trtpack.inspect(bad)


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/etc/evil", "C:/evil", "a\\b", "a//b"]
)
def test_unsafe_member_names(small_pack, tmp_path, name):
    members = [*raw_members(small_pack).items(), (name, b"x")]
    bad = zip_of(tmp_path / "names.trtpack", members)
    with pytest.raises(trtpack.UnsafePackError, match="is not a safe relative path"):
        trtpack.inspect(bad)


def test_duplicate_member_names(small_pack, tmp_path):
    members = list(raw_members(small_pack).items())
    bad = zip_of(tmp_path / "dup.trtpack", [*members, members[1]])
    with pytest.raises(trtpack.UnsafePackError, match=r"member 'program/graph.json' appears twice"):
        trtpack.inspect(bad)


def test_compressed_member_refused(small_pack, tmp_path):
    bad = zip_of(
        tmp_path / "deflate.trtpack", list(raw_members(small_pack).items()), zipfile.ZIP_DEFLATED
    )
    with pytest.raises(trtpack.UnsafePackError, match=r"is compressed \(method 8\)"):
        trtpack.inspect(bad)


def _patch_central_size(path: Path, member: str, new_size: int) -> None:
    """Rewrite a member's sizes in the central directory's ZIP64 extra field."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        start = z.start_dir
    pos = start
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", data, pos + 28)
        name = data[pos + 46 : pos + 46 + n].decode()
        if name == member:
            extra = pos + 46 + n
            assert struct.unpack_from("<HH", data, extra) == (1, 24)
            struct.pack_into("<QQ", data, extra + 4, new_size, new_size)
        pos += 46 + n + e + c
    path.write_bytes(bytes(data))


def test_zip_bomb_declared_size(small_pack, tmp_path):
    bad = tmp_path / "bomb.trtpack"
    shutil.copy(small_pack, bad)
    _patch_central_size(bad, "program/weights.safetensors", 1 << 40)
    with pytest.raises(
        trtpack.UnsafePackError, match=r"declares 1099511627776 bytes .* beyond the end"
    ):
        trtpack.inspect(bad)


def test_overlapping_members(tmp_path):
    # two directory entries pointing at the same local header: the classic overlap bomb
    path = zip_of(tmp_path / "o.zip", [(MANIFEST_NAME, b"{}"), ("a", b"A" * 100)])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        start, a_off = z.start_dir, z.getinfo("a").header_offset
    second = data.index(b"PK\x01\x02", start + 4)
    entry = bytes(data[second:])[: 46 + 1]  # 'a' entry (no extra, no comment)
    dup = bytearray(entry)
    dup[46:47] = b"b"
    struct.pack_into("<I", dup, 42, a_off)
    eocd = data.rindex(b"PK\x05\x06")
    cd = bytes(data[start:eocd]) + bytes(dup)
    tail = bytearray(data[eocd:])
    struct.pack_into("<HHII", tail, 8, 3, 3, len(cd), start)
    path.write_bytes(bytes(data[:start]) + cd + bytes(tail))
    with pytest.raises(trtpack.TrtpackError, match="overlap|local header names"):
        trtpack.inspect(path)


def test_newer_major_version_refused_newer_minor_tolerated(small_pack, tmp_path):
    def future_major(m):
        m["format_version"] = [2, 0]

    bad = rewrite(small_pack, tmp_path / "v2.trtpack", edit_manifest=future_major)
    with pytest.raises(
        trtpack.UnsupportedVersionError, match=r"format version 2.0; this trtpack reads up to 1.x"
    ):
        trtpack.inspect(bad)

    def future_minor(m):
        m["format_version"] = [1, 7]
        m["new_top_level"] = {"anything": True}
        m["inputs"][0]["new_field"] = 1

    newer = rewrite(small_pack, tmp_path / "v1_7.trtpack", edit_manifest=future_minor)
    info = trtpack.inspect(newer)
    assert info.manifest.format_version == (1, 7)
    assert trtpack.load(newer, device="cpu").manifest.inputs[0].name == "x"


def test_unknown_fields_at_our_own_minor_are_refused(small_pack, tmp_path):
    def typo(m):
        m["inputs"][0]["dtyp"] = "float32"

    bad = rewrite(small_pack, tmp_path / "typo.trtpack", edit_manifest=typo)
    with pytest.raises(trtpack.ManifestError, match=r"'dtyp' was unexpected"):
        trtpack.inspect(bad)


def test_hostile_files_write_nothing(small_pack, tmp_path, monkeypatch):
    """Reading any of the hostile packs above writes no file anywhere near it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    members = list(raw_members(small_pack).items())
    hostile = [
        zip_of(work / "n.trtpack", [*members, ("../escape.txt", b"x")]),
        zip_of(work / "a.trtpack", [*members, ("/tmp/escape.txt", b"x")]),
        zip_of(work / "d.trtpack", members * 2),
    ]
    before = sorted(os.listdir(work)), sorted(os.listdir(tmp_path))
    for path in hostile:
        for fn in (trtpack.inspect, trtpack.verify):
            with pytest.raises(trtpack.TrtpackError):
                fn(path)
        with pytest.raises(trtpack.TrtpackError):
            trtpack.load(path, device="cpu")
    assert (sorted(os.listdir(work)), sorted(os.listdir(tmp_path))) == before
    assert not Path("/tmp/escape.txt").exists()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_packs_raise_only_trtpack_errors(small_pack, tmp_path, data):
    """Random byte edits anywhere in a pack: reading it either works or raises a TrtpackError."""
    raw = bytearray(small_pack.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "fuzz.trtpack"
    path.write_bytes(bytes(raw))
    for fn in (trtpack.inspect, trtpack.verify):
        try:
            fn(path)
        except trtpack.TrtpackError:
            pass


def test_manifest_reads_through_from_json_only(small_pack):
    raw = raw_members(small_pack)[MANIFEST_NAME]
    assert Manifest.from_json(raw).to_json() == raw  # canonical: parse and dump are inverses


def _cached(fd: int) -> bool:
    """Whether the file's first page is in the page cache: mincore(2) over a map of it, which
    asks without reading anything in (a probing read would start a readahead)."""
    import ctypes
    import mmap

    m = mmap.mmap(fd, mmap.PAGESIZE, access=mmap.ACCESS_COPY)  # mapped, not touched
    try:
        page = (ctypes.c_char * mmap.PAGESIZE).from_buffer(m)
        try:
            vec = ctypes.c_ubyte()
            libc = ctypes.CDLL(None, use_errno=True)
            addr, size = ctypes.c_void_p(ctypes.addressof(page)), ctypes.c_size_t(mmap.PAGESIZE)
            if libc.mincore(addr, size, ctypes.byref(vec)):
                raise OSError(ctypes.get_errno(), "mincore")
            return bool(vec.value & 1)
        finally:
            del page
    finally:
        m.close()


@pytest.mark.skipif(
    not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this OS (Linux has it)"
)
def test_a_replaced_file_leaves_the_page_cache_before_its_successor_is_written(tmp_path):
    """The file a write replaces is dropped from the page cache before the new bytes are
    written (they take its pages), unless a member is copied from it. make_manifest runs
    before the first member is written and after the last, the old file still in place."""
    from trtpack.format.container import PackReader

    pack = tmp_path / "m.trtpack"
    write_pack(pack, {"w.bin": os.urandom(1 << 20)}, lambda _d: b"{}")
    old = os.open(pack, os.O_RDONLY)  # the old file, kept past the rename
    try:
        assert _cached(old)  # just written
        seen: list[bool] = []

        def manifest(_digests):
            seen.append(_cached(old))
            return b"{}"

        with PackReader(pack) as r:  # a member copied from the file being replaced
            write_pack(pack, {"w.bin": r.slice("w.bin")}, manifest)
        assert seen == [True, True]  # its pages stayed for the copy to read
    finally:
        os.close(old)

    old = os.open(pack, os.O_RDONLY)
    try:
        os.pread(old, 1 << 20, 0)
        assert _cached(old)
        seen.clear()
        write_pack(pack, {"w.bin": os.urandom(1 << 20)}, manifest)
        assert seen == [False, False]
    finally:
        os.close(old)
    with zipfile.ZipFile(pack) as z:
        assert z.testzip() is None
