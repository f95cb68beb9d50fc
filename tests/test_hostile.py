"""Files built to hurt the reader, each found by an outside review, each refused with its own
TrtpackError: zip directory faults, symlink entries, plans that lie about their GPUs,
hash-consistent edits of derived fields, silently mutated legacy files, and files that ask for
unbounded work (schema/SPEC.md, "Limits")."""

from __future__ import annotations

import json
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_container import raw_members, rewrite

import trtpack
from trtpack.format import limits
from trtpack.format.container import PackReader
from trtpack.format.manifest import MANIFEST_NAME

FIXTURES = Path(__file__).parent / "fixtures"
PT2 = FIXTURES / "v0" / "torch_export" / "keywords.pt2"
PRE27 = FIXTURES / "v0" / "torch_export" / "keywords_pre27.pt2"
ENTRY_POINTS = {
    "inspect": trtpack.inspect,
    "verify": trtpack.verify,
    "load": lambda p: trtpack.load(p, device="cpu"),
}


def _cd_entries(data: bytes) -> list[int]:
    """Offsets of the central directory's file headers."""
    out, i = [], data.find(b"PK\x01\x02")
    while i >= 0:
        out.append(i)
        i = data.find(b"PK\x01\x02", i + 4)
    return out


def _refused_everywhere(path: Path, error: type[Exception], match: str) -> None:
    for name, fn in ENTRY_POINTS.items():
        with pytest.raises(error, match=match):
            fn(path)
        del name


# --- the zip directory -------------------------------------------------------------------


def test_version_needed_beyond_zip_is_an_integrity_error(small_pack, tmp_path):
    """zipfile raises NotImplementedError for a 'version needed to extract' above 6.3."""
    data = bytearray(small_pack.read_bytes())
    at = _cd_entries(bytes(data))[0]
    data[at + 6 : at + 8] = struct.pack("<H", 255)
    bad = tmp_path / "version.trtpack"
    bad.write_bytes(bytes(data))
    _refused_everywhere(bad, trtpack.IntegrityError, "zip feature trtpack does not read")


def test_local_header_offset_outside_the_file(small_pack, tmp_path):
    """A ZIP64 header offset past the end (or, shifted by a deletion, before the start)."""
    data = bytearray(small_pack.read_bytes())
    at = _cd_entries(bytes(data))[1]
    name_len = struct.unpack_from("<H", data, at + 28)[0]
    extra = at + 46 + name_len  # our ZIP64 extra: id, size, usize, csize, offset
    struct.pack_into("<Q", data, extra + 20, len(data) + 10)
    bad = tmp_path / "offset.trtpack"
    bad.write_bytes(bytes(data))
    _refused_everywhere(bad, trtpack.IntegrityError, "header beyond the end of the file")


def test_every_one_byte_deletion_in_the_directory(small_pack, tmp_path):
    """The one-byte deletions that once escaped as OSError (a negative seek)."""
    data = small_pack.read_bytes()
    start = _cd_entries(data)[0]
    bad = tmp_path / "deleted.trtpack"
    for at in range(start, len(data), 7):
        bad.write_bytes(data[:at] + data[at + 1 :])
        for fn in (trtpack.inspect, trtpack.verify):
            with pytest.raises(trtpack.TrtpackError):
                fn(bad)


def _with_mode(src: Path, dst: Path, member: str, mode: int) -> Path:
    """A copy of a zip whose entry ``member`` carries Unix mode ``mode`` (e.g. a symlink)."""
    data = bytearray(src.read_bytes())
    for at in _cd_entries(bytes(data)):
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_len]).decode() == member:
            data[at + 5] = 3  # made by: Unix
            struct.pack_into("<I", data, at + 38, mode << 16)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("mode", [stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755, stat.S_IFIFO])
def test_symlinks_and_other_non_files_are_refused(small_pack, tmp_path, mode):
    bad = _with_mode(small_pack, tmp_path / "link.trtpack", "program/graph.json", mode)
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
    _refused_everywhere(bad, trtpack.UnsafePackError, kind)
    with pytest.raises(trtpack.UnsafePackError) as e:
        trtpack.inspect(bad)
    assert (e.value.member, e.value.field) == ("program/graph.json", "external_attr")
    legacy = _with_mode(PT2, tmp_path / "link.pt2", "keywords/models/model.json", mode)
    with pytest.raises(trtpack.UnsafePackError, match=kind):
        trtpack.migrate(legacy, tmp_path / "out.trtpack")
    assert not (tmp_path / "out.trtpack").exists()


# --- lying plans and derived fields -----------------------------------------------------


def test_plan_whose_header_contradicts_the_variant_target(small_pack, tmp_path):
    """A plan built for sm86 inside a variant whose target says sm80 (hashes consistent)."""
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    import rtx

    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    info = trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)), variant="sm80")
    member = info.manifest.engines[0].engines[0].member
    bad = rewrite(pack, tmp_path / "lying.trtpack", replace={member: rtx.keywords_plan(("8.6",))})
    assert trtpack.inspect(bad).manifest.engines[0].target.compute_capabilities == ("8.0",)
    with pytest.raises(trtpack.EngineError, match="compute_capabilities") as e:
        trtpack.verify(bad)
    assert (e.value.member, e.value.expected, e.value.got) == (member, ("8.0",), ("8.6",))
    from trtpack.engines.loading import _check_members

    with PackReader(bad) as reader, pytest.raises(trtpack.EngineError, match="8.6"):
        _check_members(reader, trtpack.inspect(bad).manifest, info.manifest.engines[0], True)


def _edited(small_pack: Path, tmp_path: Path, edit) -> Path:
    return rewrite(small_pack, tmp_path / "edited.trtpack", edit_manifest=edit)


def test_input_path_edited_consistently_is_refused(small_pack, tmp_path):
    def swap(m):  # x is args[0]; say it is kwargs['mask']
        m["inputs"][0]["path"] = "kwargs['mask']"

    bad = _edited(small_pack, tmp_path, swap)
    with pytest.raises(trtpack.ManifestError, match=r"has path \"kwargs\['mask'\]\", but its"):
        trtpack.inspect(bad)


def test_output_path_and_duplicate_output_names_are_refused(small_pack, tmp_path):
    def move(m):
        m["outputs"][0]["path"] = "output[3]"

    with pytest.raises(trtpack.ManifestError, match="place in output_tree is 'output'"):
        trtpack.inspect(_edited(small_pack, tmp_path, move))


def test_engine_binding_name_edited_consistently_is_refused(small_pack, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    import rtx

    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)), variant="sm80")

    def rename(m):
        m["engines"][0]["engines"][0]["inputs"][0]["name"] = "x2"

    bad = rewrite(pack, tmp_path / "renamed.trtpack", edit_manifest=rename)
    with pytest.raises(trtpack.ManifestError, match=r"engine inputs \['x2'"):
        trtpack.inspect(bad)


def test_whole_graph_flag_that_contradicts_the_program_is_refused(small_pack, tmp_path):
    """``whole_graph`` is written for readers that do not derive it; it is never a second
    source of truth: a variant that has a program and says whole_graph is refused."""
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    import rtx

    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)), variant="sm80")
    assert trtpack.inspect(pack).manifest.engines[0].whole_graph

    def flip(m):
        m["engines"][0]["whole_graph"] = False

    bad = rewrite(pack, tmp_path / "flipped.trtpack", edit_manifest=flip)
    with pytest.raises(trtpack.ManifestError, match="whole_graph is false, but its other fields"):
        trtpack.inspect(bad)


def test_variant_ranges_that_contradict_the_profiles_are_refused(small_pack, tmp_path):
    """``ranges`` (the symbols the engines' profiles cover in part) is derived and checked:
    an edit that widens what the engines accept would send calls they cannot run."""
    pytest.importorskip("tensorrt_rtx", reason="builds a real plan: needs tensorrt_rtx")
    import rtx

    pack = shutil.copy(small_pack, tmp_path / "p.trtpack")
    trtpack.add_engine(pack, rtx.keywords_plan(("8.0",)), variant="sm80")

    def narrow(m):
        m["engines"][0]["ranges"] = {"batch": [1, 8]}

    bad = rewrite(pack, tmp_path / "ranges.trtpack", edit_manifest=narrow)
    with pytest.raises(trtpack.ManifestError, match="are not what its engines' profiles give"):
        trtpack.inspect(bad)


# --- legacy files: the zip CRC-32 is their only checksum --------------------------------


def test_mutated_legacy_pt2_is_caught_by_its_crc(tmp_path):
    data = bytearray(PT2.read_bytes())
    with zipfile.ZipFile(PT2) as z:
        weights = next(i for i in z.infolist() if "/data/weights/" in i.filename and
                       not i.filename.endswith(".json"))  # fmt: skip
    with PackReader(PT2) as r:
        at = r.info(weights.filename).offset
    data[at] ^= 0x40  # one weight changes; the CRC in the directory does not
    bad = tmp_path / "mutated.pt2"
    bad.write_bytes(bytes(data))
    with pytest.raises(trtpack.IntegrityError, match="CRC-32") as e:
        trtpack.load(bad, device="cpu")
    assert e.value.member == weights.filename and e.value.field == "crc32"
    with pytest.raises(trtpack.IntegrityError, match="CRC-32"):
        trtpack.migrate(bad, tmp_path / "out.trtpack")
    assert not (tmp_path / "out.trtpack").exists()


def test_pre27_file_inspects_without_torch():
    """291 MB and 7 s of torch for a 1.4 KB file, once: now the program JSON alone."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # importing torch now fails
        "from trtpack.cli import main\n"
        f"raise SystemExit(main(['inspect', {str(PRE27)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "pre-2.7 layout" in out.stdout
    assert "kwargs['mask']" in out.stdout and "x_dim0  min 1  max 64" in out.stdout


# --- unbounded work: each refused before the work -----------------------------------------


def _zip_with_entries(path: Path, count: int) -> Path:
    """A zip with ``count`` empty stored entries, written directly (zipfile would take
    minutes for 600,000)."""
    local, central = bytearray(), bytearray()
    for i in range(count):
        name = f"m{i}".encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0,
                               len(name), 0, 0, 0, 0, 0, len(local)) + name  # fmt: skip
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, 0, 0, len(name),
                             0) + name  # fmt: skip
    n = min(count, 0xFFFF)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def _refused(fn, path: Path, match: str) -> trtpack.UnsafePackError:
    with pytest.raises(trtpack.UnsafePackError, match=match) as e:
        fn(path)
    return e.value


# These refusals are fast because they happen before the expensive walk; the tests prove the
# order (no timing: these machines are noisy). tools/bench_refusals.py measures the seconds.


def test_600000_members_refused_before_zipfile_walks_the_directory(tmp_path, monkeypatch):
    bad = _zip_with_entries(tmp_path / "many.trtpack", 600_000)

    def walked(*args, **kwargs):
        raise AssertionError("zipfile was asked to read the 600,000-entry directory")

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", walked)
    for fn in (trtpack.inspect, trtpack.verify):
        e = _refused(fn, bad, "over trtpack's limit of 10000")
        assert (e.field, e.value) == ("number of zip entries", 0xFFFF)  # the end record's count


def _pack_with_manifest(small_pack: Path, path: Path, manifest: bytes) -> Path:
    members = raw_members(small_pack)
    members[MANIFEST_NAME] = manifest
    with zipfile.ZipFile(path, "w") as z:
        for name in [MANIFEST_NAME, *sorted(n for n in members if n != MANIFEST_NAME)]:
            z.writestr(name, members[name])
    return path


def test_manifest_nested_100000_levels_refused(small_pack, tmp_path):
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        bad = _pack_with_manifest(small_pack, tmp_path / "deep.trtpack", body)
        _refused(trtpack.inspect, bad, "nesting depth")  # not a RecursionError
    # and Manifest.from_json, for a manifest that comes from elsewhere (a registry)
    with pytest.raises(trtpack.UnsafePackError, match="nesting depth"):
        trtpack.Manifest.from_json(b"[" * 100_000 + b"]" * 100_000)


def test_input_tree_300_levels_deep_refused(small_pack, tmp_path):
    manifest = json.loads(raw_members(small_pack)[MANIFEST_NAME])
    tree: dict = {"type": "leaf"}
    for _ in range(300):
        tree = {"type": "tuple", "children": [tree]}
    manifest["input_tree"] = tree
    bad = _pack_with_manifest(small_pack, tmp_path / "tree.trtpack", json.dumps(manifest).encode())
    _refused(trtpack.inspect, bad, "nesting depth|input_tree depth")
    manifest["input_tree"] = tree = {"type": "leaf"}
    for _ in range(40):  # deeper than the tree cap, within the JSON one
        tree = {"type": "tuple", "children": [tree]}
    manifest["input_tree"] = tree
    bad = _pack_with_manifest(small_pack, tmp_path / "tree.trtpack", json.dumps(manifest).encode())
    _refused(trtpack.inspect, bad, "input_tree depth is 41")


def test_100_mb_manifest_refused_from_its_directory_entry(small_pack, tmp_path, monkeypatch):
    body = b'{"format": "trtpack", "pad": "' + b" " * (100 << 20) + b'"}'
    bad = _pack_with_manifest(small_pack, tmp_path / "big.trtpack", body)
    from trtpack.format.container import PackReader

    def read(self, name, *args, **kwargs):
        raise AssertionError(f"{name} was read")

    monkeypatch.setattr(PackReader, "read", read)  # refused before a byte of it is read
    e = _refused(trtpack.inspect, bad, f"limit of {limits.MAX_MANIFEST_BYTES}")
    assert e.value == len(body)


def test_too_many_inputs_refused_before_the_schema(small_pack, tmp_path):
    manifest = json.loads(raw_members(small_pack)[MANIFEST_NAME])
    manifest["inputs"] = manifest["inputs"] * (limits.MAX_INPUTS // 3 + 1)
    bad = _pack_with_manifest(small_pack, tmp_path / "wide.trtpack", json.dumps(manifest).encode())
    with pytest.raises(trtpack.UnsafePackError, match="number of inputs") as e:
        trtpack.inspect(bad)
    assert e.value.field == "number of inputs"


# --- the weights header: every crafted layout a clear IntegrityError ------------------------


def _edit_weights(small_pack: Path, tmp_path: Path, edit) -> Path:
    """A pack whose weights' safetensors header is edited (hashes fixed up)."""
    weights = raw_members(small_pack)["program/weights.safetensors"]
    (n,) = struct.unpack_from("<Q", weights)
    header = json.loads(weights[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    new = struct.pack("<Q", len(raw)) + raw + weights[8 + n :]
    return rewrite(small_pack, tmp_path / "weights.trtpack",
                   replace={"program/weights.safetensors": new})  # fmt: skip


def _first_tensor(header: dict) -> str:
    return next(k for k in sorted(header) if not k.startswith("__"))


def _layout(header: dict) -> dict:
    return json.loads(header["__metadata__"]["trtpack.tensors"])


def _set_layout(header: dict, layout: dict) -> None:
    header["__metadata__"]["trtpack.tensors"] = json.dumps(layout)


def _view_edit(**changes):
    def edit(header):
        layout = _layout(header)
        name = _first_tensor(header)
        layout["__view__"] = {"group": "constants", "view_of": name, "dtype": "float32",
                              "shape": [2], "stride": [1], "offset": 0, **changes}  # fmt: skip
        _set_layout(header, layout)

    return edit


def _int_parameter_requiring_grad(header: dict) -> None:
    """Found by tools/fuzz.py (seed 500): a parameter stored as an integer dtype that
    requires grad escaped from load as torch's RuntimeError."""
    layout = _layout(header)
    name = next(n for n, e in sorted(layout.items()) if e.get("param") and "view_of" not in e)
    header[name]["dtype"] = "I32"  # the same 4 bytes per element as F32: offsets still fit
    layout[name]["requires_grad"] = True
    _set_layout(header, layout)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h[_first_tensor(h)].update(shape=[-1]), "negative|shape"),
        (lambda h: h[_first_tensor(h)].update(dtype="F99"), "dtype"),
        (lambda h: h[_first_tensor(h)].update(data_offsets=[0, 10**9]), "beyond|offsets|past"),
        (_view_edit(shape=[10**6]), "past its"),
        (_view_edit(view_of="missing"), "not stored"),
        (_view_edit(dtype="complex_thing"), "unknown dtype"),
        (_view_edit(offset=-4), "offset"),
        (_view_edit(shape=[-2]), "negative|shape"),
        (_int_parameter_requiring_grad, "parameter of dtype int32 that requires grad"),
        (_view_edit(dtype="int64", param=True, requires_grad=True),
         "parameter of dtype int64 that requires grad"),
    ],
    ids=["negative-dim", "bad-dtype", "data-out-of-bounds", "view-out-of-bounds",
         "view-of-missing", "view-bad-dtype", "view-negative-offset", "view-negative-dim",
         "int-parameter-requires-grad", "int-view-parameter-requires-grad"],
)  # fmt: skip
def test_crafted_weights_headers(small_pack, tmp_path, edit, match):
    bad = _edit_weights(small_pack, tmp_path, edit)
    trtpack.verify(bad)  # consistent: the hashes match
    with pytest.raises(trtpack.IntegrityError, match=match):
        trtpack.load(bad, device="cpu")


@pytest.mark.parametrize("edit", ["signature", "in_spec", "out_spec"])
def test_a_program_without_its_call_signature_is_refused(tmp_path, edit):
    """Found by tools/fuzz.py (seed 301): a consistent edit of a pre-2.7 .pt2 that nulls its
    call signature escaped as a raw AttributeError from migrate."""
    src = FIXTURES / "v0" / "torch_export" / "keywords_pre27.pt2"
    with zipfile.ZipFile(src) as z:
        name = next(n for n in z.namelist() if n.endswith("serialized_exported_program.json"))
        doc = json.loads(z.read(name))
        entry = doc["graph_module"]["module_call_graph"][0]
        if edit == "signature":
            entry["signature"] = None
        else:
            entry["signature"][edit] = None
        bad = tmp_path / "bad.pt2"
        with zipfile.ZipFile(bad, "w") as out:
            for info in z.infolist():
                out.writestr(info, json.dumps(doc) if info.filename == name else z.read(info))
    with pytest.raises(trtpack.TrtpackError):
        trtpack.migrate(bad, tmp_path / "out.trtpack")
    assert not (tmp_path / "out.trtpack").exists()


def test_an_engine_constant_asking_for_a_huge_unpickler_memo_is_refused():
    """Found by tools/fuzz.py (seed 500): a torch_tensorrt engine constant whose pickle puts
    into memo slot 2**31 - 1 escaped from migrate as a MemoryError."""
    from trtpack.engines.packed_info import read_engine_pickle

    data = b"\x80\x04]r" + struct.pack("<I", 2**31 - 1) + b"."  # [] memoized at 2**31 - 1
    with pytest.raises(trtpack.EngineError, match="refused: MemoryError"):
        read_engine_pickle(data, where="x.ep:engine")


def test_the_graph_a_load_parses_is_the_graph_it_hashed(small_pack, monkeypatch):
    """The graph member is read once, and those bytes are hashed and parsed: a file whose
    graph changes between a hash of the file and a read of it (here: every ``read`` of it
    after the first returns other, valid JSON) cannot slip the second version past the
    hash. A load that hashed the file's map and then read the member again ran the edited
    graph."""
    import torch

    graph = trtpack.inspect(small_pack).manifest.program.graph
    original = PackReader.read

    def read(self, name):
        data = original(self, name)
        if name != graph:
            return data
        edited = json.loads(data)
        edited["graph_module"]["graph"]["nodes"][-2]["metadata"]["stack_trace"] = "edited"
        return json.dumps(edited).encode()

    monkeypatch.setattr(PackReader, "read", read)
    with pytest.raises(trtpack.IntegrityError, match=graph) as e:
        trtpack.load(small_pack, device="cpu")
    assert e.value.member == graph
    pack = trtpack.load(small_pack, device="cpu", verify=False)  # unverified: it is the edit
    assert pack(torch.ones(4, 6), mask=torch.ones(4, 6), bias=torch.ones(6)) is not None
