"""The weights streamed to a device, hashed as they are copied (trtpack/program/staging.py,
issue 27.6). The sink is device-agnostic but for pinned buffers, streams and events, so these
tests run it with the CPU as the device; its CUDA run is in tests/test_cuda_graphs.py's GPU
tests and tools/gpu_bench_cuda.sh (cold start)."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

import trtpack
from trtpack.errors import IntegrityError
from trtpack.format.container import PackReader
from trtpack.format.manifest import Member, MemberChunks
from trtpack.program import staging
from trtpack.program.serialize import _assemble_state, _rebuild_state
from trtpack.reading import open_pack
from trtpack.runtime import _verified

CPU = torch.device("cpu")
WEIGHTS = "program/weights.safetensors"


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(300, 200)  # 240 KB: many small pieces each
        self.b = torch.nn.Linear(200, 7)
        self.register_buffer("scale", torch.tensor([2.0]))
        self.register_buffer("empty", torch.zeros(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) * self.scale


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    ep = torch.export.export(Model().eval(), (torch.randn(2, 300),))
    return trtpack.save(ep, tmp_path_factory.mktemp("staging") / "m.trtpack").path


def _pieces(reader: PackReader, step: int) -> Member:
    """The weights member's record, in ``step``-byte pieces (a small step: many pieces, and
    tensors that span several, as 16 MiB pieces do in a large model)."""
    data = bytes(reader.view(WEIGHTS))
    chunks = tuple(hashlib.sha256(data[i : i + step]).hexdigest()
                   for i in range(0, len(data), step))  # fmt: skip
    return Member(hashlib.sha256(data).hexdigest(), len(data), MemberChunks(step, chunks))


def _expected(reader: PackReader):
    return _rebuild_state(reader.view(WEIGHTS), WEIGHTS, None)


@pytest.mark.parametrize("step", [1000, 4096, 1 << 20])
def test_streamed_tensors_equal_the_stored_ones(pack, step):
    with PackReader(pack) as reader:
        member = _pieces(reader, step)
        reader.check_when_read(WEIGHTS, member)
        stored, metadata, stored_at = staging.weights_to_device(reader, WEIGHTS, CPU)
        assert reader.checked_when_read(WEIGHTS, member)  # hashed as it was copied
        got = _assemble_state(stored, metadata, stored_at, WEIGHTS, None)
        want = _expected(reader)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for name in w:
            assert g[name].dtype == w[name].dtype and g[name].shape == w[name].shape
            assert torch.equal(g[name], w[name]), name
            # memory of their own, not a view of the file or of a staging buffer
            assert g[name].untyped_storage().nbytes() == w[name].numel() * w[name].element_size()


def test_a_whole_member_digest_is_checked_in_order_as_it_streams(pack):
    """A member without piece digests (format < 1.3): one SHA-256, updated in order."""
    with PackReader(pack) as reader:
        data = bytes(reader.view(WEIGHTS))
        member = Member(hashlib.sha256(data).hexdigest(), len(data))
        reader.check_when_read(WEIGHTS, member)
        staging.weights_to_device(reader, WEIGHTS, CPU)
        assert reader.checked_when_read(WEIGHTS, member)
        bad = Member(hashlib.sha256(data + b"x").hexdigest(), len(data))
        reader.check_when_read(WEIGHTS, bad)
        with pytest.raises(IntegrityError, match="corrupt"):
            staging.weights_to_device(reader, WEIGHTS, CPU)
        assert not reader.checked_when_read(WEIGHTS, bad)


def test_a_damaged_piece_fails_the_load_and_names_the_piece(pack, tmp_path):
    damaged = tmp_path / "damaged.trtpack"
    shutil.copy(pack, damaged)
    with PackReader(pack) as reader:
        member = _pieces(reader, 4096)
        offset = reader.info(WEIGHTS).offset
    with open(damaged, "r+b") as f:  # a byte of the second piece, inside a tensor
        f.seek(offset + 4096 + 100)
        byte = f.read(1)
        f.seek(offset + 4096 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with PackReader(damaged) as reader:
        reader.check_when_read(WEIGHTS, member)
        with pytest.raises(IntegrityError, match=r"corrupt \(bytes 4096\.\.8192\)"):
            staging.weights_to_device(reader, WEIGHTS, CPU)
        assert not reader.checked_when_read(WEIGHTS, member)


def test_a_header_that_changed_between_the_two_reads_is_refused(pack):
    """The header is parsed from the map before the pieces are read; the pieces must repeat
    it, or the layout the tensors were cut by is not the one hashed."""
    with PackReader(pack) as reader:
        head = staging.header_of(reader.view(WEIGHTS), WEIGHTS)
        other = head[:20] + bytes([head[20] ^ 1]) + head[21:]
        sink = staging.DeviceCopy([], other, CPU, WEIGHTS)
        with pytest.raises(IntegrityError, match="header changed while the member was being read"):
            reader.read_into(WEIGHTS, sink)
        reader.read_into(WEIGHTS, staging.DeviceCopy([], head, CPU, WEIGHTS))  # the same: fine


def test_staging_buffers_are_bounded_and_reused(pack, monkeypatch):
    monkeypatch.setattr(staging, "WORKERS", 2)
    monkeypatch.setattr(staging, "SLOT_BYTES", 1)
    with PackReader(pack) as reader:
        member = _pieces(reader, 1000)  # about 250 pieces
        reader.check_when_read(WEIGHTS, member)
        head = staging.header_of(reader.view(WEIGHTS), WEIGHTS)
        sink = staging.DeviceCopy([], head, CPU, WEIGHTS)
        reader.read_into(WEIGHTS, sink)
    assert sink.workers == 2 and sink._made <= 2 + staging.SPARE_SLOTS
    assert not sink._lent and len(sink._free) == sink._made  # every buffer given back


def test_the_verified_streamed_load_checks_before_returning(pack, tmp_path):
    """runtime._verified in the GPU's mode, with the sink on the CPU: the member is checked
    by the streaming read itself (no second hash), and a damaged one raises IntegrityError
    and returns nothing."""
    with open_pack(pack) as (reader, info):
        m = info.manifest
        got = _verified(reader, m, True, lambda: staging.weights_to_device(reader, WEIGHTS, CPU),
                        read="streamed")  # fmt: skip
        assert reader.checked_when_read(WEIGHTS, m.members[WEIGHTS])
        assert torch.equal(got[0]["a.weight"], _expected(reader)[0]["a.weight"])
    damaged = tmp_path / "damaged.trtpack"
    shutil.copy(pack, damaged)
    with PackReader(pack) as r:
        offset = r.info(WEIGHTS).offset + r.info(WEIGHTS).size - 10
    with open(damaged, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 4)
    with open_pack(damaged) as (reader, info):
        with pytest.raises(IntegrityError, match="corrupt"):
            _verified(reader, info.manifest, True,
                      lambda: staging.weights_to_device(reader, WEIGHTS, CPU),
                      read="streamed")  # fmt: skip

        def broken() -> None:  # build fails before reading the weights: the damage is named
            raise ValueError("something else")

        with pytest.raises(IntegrityError, match="corrupt"):
            _verified(reader, info.manifest, True, broken, read="streamed")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU on this machine (the streamed load to CUDA: tools/gpu_bench_cuda.sh "
    "runs it on the lent GPU machine)",
)
def test_a_load_to_cuda_streams_the_checked_weights(tmp_path, monkeypatch):
    """The real thing: pinned staging buffers, several streams, 16 MiB pieces (a 40 MiB
    model: three pieces, tensors across their borders), equal to the CPU load; a damaged
    piece fails the load. (The GPU default; ran on the H100 2026-12-07.)"""
    from trtpack.program.serialize import GPU_STAGING, weights_read

    monkeypatch.delenv(GPU_STAGING, raising=False)
    assert weights_read(torch.device("cuda"), False) == "streamed"

    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Linear(2048, 4096)
            self.b = torch.nn.Linear(4096, 600)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    path = trtpack.save(torch.export.export(Big().eval(), (torch.randn(2, 2048),)),
                        tmp_path / "big.trtpack").path  # fmt: skip
    cpu = trtpack.load(path, device="cpu")
    cuda = trtpack.load(path, device="cuda")
    assert cuda.manifest.members[WEIGHTS].chunks is not None  # recorded in pieces
    for name, t in cpu._program.tensors.items():
        got = cuda._program.tensors[name]
        assert got.device.type == "cuda" and torch.equal(got.cpu(), t), name
    x = torch.randn(2, 2048)  # the exported (static) batch
    torch.testing.assert_close(cuda(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
    with PackReader(path) as r:
        offset = r.info(WEIGHTS).offset + (16 << 20) + 12345  # inside the second piece
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=r"corrupt \(bytes 16777216\.\.33554432\)"):
        trtpack.load(path, device="cuda")
    trtpack.load(path, device="cuda", verify=False)  # the same path, unchecked


def test_a_gpu_load_is_staged_unless_told_to_map(monkeypatch):
    """A GPU load streams the weights through staging buffers (faster on the H100 and the
    bytes copied are the bytes hashed, docs/cuda.md); TRTPACK_GPU_STAGING=0 keeps the mapped
    path; the CPU reads into owned memory, or maps with mmap=True."""
    from trtpack.program.serialize import GPU_STAGING, weights_read

    monkeypatch.delenv(GPU_STAGING, raising=False)
    assert weights_read(torch.device("cuda"), False) == "streamed"
    assert weights_read(torch.device("cpu"), False) == "owned"
    assert weights_read(torch.device("cpu"), True) == "mapped"
    monkeypatch.setenv(GPU_STAGING, "0")
    assert weights_read(torch.device("cuda"), False) == "mapped"
    assert weights_read(torch.device("cpu"), False) == "owned"
