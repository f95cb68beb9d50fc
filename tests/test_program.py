"""The program members: the weights member is a standard safetensors file, checked in both
directions against the safetensors library."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trtpack.program.serialize import read_safetensors, safetensors_chunks

#: also run in .venv-trt (torch 2.14.1): tools/test.sh, issue 22.8
pytestmark = pytest.mark.program_path

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


def joined(chunks) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in chunks.parts)


tensor_dicts = st.dictionaries(
    keys=st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
    values=st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 5), min_size=0, max_size=3)),
    max_size=6,
)


def make(spec):
    out = {}
    for i, (name, (dtype, shape)) in enumerate(spec.items()):
        t = torch.arange(int(torch.tensor(shape).prod()) if shape else 1) + i
        out[name] = t.reshape(shape).to(dtype)
    return out


@settings(max_examples=150, deadline=None)
@given(spec=tensor_dicts)
def test_streamed_writer_is_read_by_the_safetensors_library(spec):
    tensors = make(spec)
    data = joined(safetensors_chunks(tensors, {"k": "v"}))
    loaded = safetensors.torch.load(data)
    # __pad__.N entries fill the gaps that keep every tensor 64-byte aligned
    assert {n for n in loaded if not n.startswith("__pad__.")} == set(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    header_len = int.from_bytes(data[:8], "little")
    assert (8 + header_len) % 64 == 0


@settings(max_examples=150, deadline=None)
@given(spec=tensor_dicts)
def test_zero_copy_reader_reads_the_safetensors_library(spec):
    tensors = make(spec)
    data = bytearray(safetensors.torch.save(tensors, metadata={"k": "v"}))
    loaded, meta = read_safetensors(memoryview(data), "test")
    assert meta == {"k": "v"} and set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name


def test_reader_shares_memory_with_the_buffer():
    data = bytearray(safetensors.torch.save({"w": torch.zeros(4)}))
    loaded, _ = read_safetensors(memoryview(data), "test")
    data[-4:] = torch.tensor([7.0]).numpy().tobytes()
    assert loaded["w"][-1].item() == 7.0  # no copy was made


def test_streamed_tensor_data_is_naturally_aligned():
    tensors = {
        "a": torch.ones(3, dtype=torch.uint8),
        "b": torch.ones(5, dtype=torch.float64),
        "c": torch.ones(2, dtype=torch.int16),
    }
    data = joined(safetensors_chunks(tensors, {}))
    import json

    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    for name, t in tensors.items():
        assert header[name]["data_offsets"][0] % t.element_size() == 0


@pytest.mark.parametrize("bad", [b"", b"\x00" * 7, (2**40).to_bytes(8, "little") + b"{}"])
def test_reader_refuses_garbage(bad):
    import trtpack

    with pytest.raises(trtpack.IntegrityError, match="not a valid safetensors file"):
        read_safetensors(memoryview(bad), "w")


@pytest.mark.parametrize("path", ["graph_json", "torch_serialize"])
def test_graph_serialization_on_torch_before_2_12(exported, tmp_path, monkeypatch, path):
    """torch < 2.12's serialize() (and its ExportedProgramSerializer.serialize) has no
    serialize_state_dict/... arguments and pickles the weights alongside the JSON; trtpack
    skips that pickling and still writes the same graph, both where it converts torch's
    dataclasses to JSON itself (graph_json) and where it leaves all of it to torch."""
    from torch._export.serde import serialize as serde

    import trtpack

    _, model, ep = exported("with_buffers")
    new_style = trtpack.program.serialize.serialize_graph(ep)
    if path == "graph_json":
        owner, name = serde.ExportedProgramSerializer, "serialize"
        # torch's program serializer, not graph_serde's following of it
        monkeypatch.setattr(trtpack.program.graph_serde, "available", lambda serde: False)
    else:
        owner, name = serde, "serialize"
        monkeypatch.setattr(trtpack.program.graph_json, "available", lambda serde: False)
    real = getattr(owner, name)
    pickled = []

    def old_signature(*args, **kwargs):
        if kwargs:
            raise TypeError(
                f"serialize() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        result = real(*args)
        pickled.append(len(result.state_dict))
        return result

    monkeypatch.setattr(owner, name, old_signature)
    assert trtpack.program.serialize.serialize_graph(ep) == new_style
    assert pickled == [0]  # the weights were not pickled
    trtpack.save(ep, tmp_path / "old.trtpack")
    pack = trtpack.load(tmp_path / "old.trtpack", device="cpu")
    tokens = torch.randint(0, 16, (2, 5))
    torch.testing.assert_close(pack(tokens), model(tokens))


def test_graph_serialization_skips_only_its_own_canonicalize_check(exported):
    """torch's serializer canonicalizes a deep copy of the program it built only to test the
    canonical form and drops it; serialize_graph skips that (most of a big graph's save) and
    writes torch's own bytes, while any other caller of canonicalize still gets torch's."""
    import threading

    from torch._export.serde import serialize as serde

    import trtpack

    _, _, ep = exported("with_buffers")
    ours = trtpack.program.serialize.serialize_graph(ep)
    kw = {"serialize_state_dict": False, "serialize_constants": False,
          "serialize_example_inputs": False}  # fmt: skip
    assert serde.serialize(ep, **kw).exported_program == ours
    program = serde.ExportedProgramSerializer().serialize(ep, **kw).exported_program
    results: list = []
    worker = threading.Thread(target=lambda: results.append(serde.canonicalize(program)))
    worker.start()
    worker.join()
    assert results[0] is not program  # torch's canonicalize ran: a canonical copy
    assert serde.canonicalize(program) is not program
