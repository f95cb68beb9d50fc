"""CUDA graph replay of a loaded program (trtpack/cuda_graphs.py, issue 27.4).

The refusals, the argument checks, the graph scan, what a program writes, the signature and
the reset are checked here on any machine; the tests marked ``gpu`` capture and replay on a
CUDA device (tools/gpu_bench_cuda.sh runs them on the lent GPU machine) and skip elsewhere,
saying so (tests/conftest.py EXPECTED_SKIPS)."""

from __future__ import annotations

import llm
import pytest
import torch

import trtpack
from trtpack import cuda_graphs
from trtpack.errors import ArgumentTypeError, DeviceError, InputMismatchError, ManifestError
from trtpack.runtime import _attach_cuda_graphs

GPU = torch.cuda.is_available()
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU, reason="no CUDA GPU on this machine (CUDA graph replay: "
                       "tools/gpu_bench_cuda.sh runs these on the lent GPU machine)"),
]  # fmt: skip


def gpu_test(f):
    for mark in needs_gpu:
        f = mark(f)
    return f


class MLP(torch.nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gate = torch.nn.Linear(width, 2 * width, bias=False)
        self.up = torch.nn.Linear(width, 2 * width, bias=False)
        self.down = torch.nn.Linear(2 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class Counter(torch.nn.Module):
    """Writes a buffer in place each call (state), and its input (a user-input mutation)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        x.mul_(2)
        return x + self.count


class Synced(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.sum().item()


def _save(tmp_path, model, args, name, dynamic_shapes=None):
    ep = torch.export.export(model.eval(), args, dynamic_shapes=dynamic_shapes)
    return trtpack.save(ep, tmp_path / f"{name}.trtpack").path


@pytest.fixture(scope="module")
def mlp_pack(tmp_path_factory):
    batch = torch.export.Dim("batch", min=1, max=64)
    return _save(tmp_path_factory.mktemp("graphs"), MLP(), (torch.randn(2, 64),), "mlp",
                 dynamic_shapes=({0: batch},))  # fmt: skip


@pytest.fixture(scope="module")
def llama_pack(tmp_path_factory):
    programs = llm.export_entry_points(llm.llama()())
    path = tmp_path_factory.mktemp("graphs") / "llm.trtpack"
    return trtpack.save(programs, path).path


# --- any machine ----------------------------------------------------------------------------


def test_cuda_graphs_on_the_cpu_are_refused(mlp_pack):
    with pytest.raises(DeviceError, match=r"CUDA graphs \(cuda_graphs=\) replay on a CUDA device"):
        trtpack.load(mlp_pack, device="cpu", cuda_graphs=True)
    with pytest.raises(DeviceError):
        trtpack.load(mlp_pack, device="cpu", cuda_graphs=["forward"])
    assert trtpack.load(mlp_pack, device="cpu", cuda_graphs=False).cuda_graphs is None


@pytest.mark.parametrize("value", [1, b"x", [1], None, 2.0])
def test_cuda_graphs_argument_type(mlp_pack, value):
    with pytest.raises(ArgumentTypeError, match="cuda_graphs"):
        trtpack.load(mlp_pack, device="cpu", cuda_graphs=value)


def test_entry_points_named_must_exist_and_engines_are_not_captured(llama_pack):
    """The choice of entry points, on packs loaded on the CPU (the objects are built without
    touching CUDA; they capture on the first call)."""
    pack = trtpack.load(llama_pack, device="cpu")
    packs = {n: pack[n] for n in pack.entry_points}
    with pytest.raises(
        ManifestError, match=r"entry point\(s\) \['nope'\].*\['decode', 'prefill'\]"
    ):
        _attach_cuda_graphs(packs, "prefill", ("decode", "nope"), torch.device("cpu"))
    with pytest.warns(UserWarning, match="'decode': no CUDA graphs: node arange"):
        _attach_cuda_graphs(packs, "prefill", ("decode",), torch.device("cpu"))
    assert pack["prefill"].cuda_graphs is None
    graphs = pack["decode"].cuda_graphs
    assert isinstance(graphs, cuda_graphs.CudaGraphs)
    # the CPU-loaded graph builds its arange on the CPU: the scan names it
    assert graphs.reason is not None and "makes a tensor on the CPU" in graphs.reason
    pack["prefill"].backend = "tensorrt"  # as an entry point running engines is
    pack["prefill"].cuda_graphs = None
    with pytest.warns(UserWarning, match="no CUDA graphs: it runs TensorRT engines"):
        _attach_cuda_graphs(packs, "prefill", ("prefill",), torch.device("cpu"))


def test_the_scan_finds_what_a_graph_cannot_capture(tmp_path, mlp_pack):
    synced = trtpack.load(_save(tmp_path, Synced(), (torch.randn(3),), "synced"), device="cpu")
    reason = cuda_graphs.unsafe_reason(synced.module)
    assert reason is not None and "aten.item" in reason and "CPU synchronization" in reason
    assert cuda_graphs.unsafe_reason(trtpack.load(mlp_pack, device="cpu").module) is None
    assert "not a torch.fx graph" in cuda_graphs.unsafe_reason(object())

    class Nonzero(torch.nn.Module):
        def forward(self, x):
            return torch.nonzero(x)

    ep = torch.export.export(Nonzero(), (torch.randn(4),))
    assert "nonzero" in cuda_graphs.unsafe_reason(ep.module())


def test_what_a_program_writes_is_found(tmp_path, llama_pack):
    counter = trtpack.load(_save(tmp_path, Counter(), (torch.zeros(3),), "counter"),
                           device="cpu")  # fmt: skip
    state, inputs = cuda_graphs.written(counter.module, ["x"])
    assert [t is counter._program.tensors["count"] for t in state] == [True]
    assert inputs == [0]  # x, written in place
    decode = trtpack.load(llama_pack, device="cpu")["decode"]
    state, inputs = cuda_graphs.written(decode.module, ["input_ids", "cache_position"])
    assert len(state) == 4 and inputs == []  # the KV cache: keys and values of 2 layers
    loaded = {id(t) for t in decode._program.tensors.values()}
    assert all(id(t) in loaded for t in state)  # the pack's own state tensors
    with pytest.raises(ValueError, match="writes its input 'x'"):
        cuda_graphs.written(counter.module, ["y"])


def test_the_signature(mlp_pack):
    graphs = cuda_graphs.CudaGraphs(trtpack.load(mlp_pack, device="cpu").module,
                                    cuda_graphs.GraphPool(torch.device("cpu")),
                                    input_names=["x"], where="t")  # fmt: skip
    x = torch.randn(4, 64)
    key = graphs._key([x])
    assert key == graphs._key([torch.zeros(4, 64)])  # values do not matter
    assert key != graphs._key([torch.zeros(5, 64)])  # shapes do
    assert key != graphs._key([torch.zeros(64, 4).t()])  # strides do
    assert key != graphs._key([x.double()])  # dtypes do
    assert graphs._key([x, 3]) != graphs._key([x, 4])  # non-tensor values do
    w = torch.randn(4, 64, requires_grad=True)
    assert graphs._key([w]) is None  # autograd: uncaptured
    with torch.no_grad():
        assert graphs._key([w]) is not None
    # calls without a signature run the program itself (nothing CUDA is touched for them)
    module = trtpack.load(mlp_pack, device="cpu").module
    out = graphs.run([w], (w,), {}, module, call_of=None)
    assert out.grad_fn is not None and graphs.uncaptured == 1
    with torch.no_grad():  # an input that cannot be hashed
        torch.testing.assert_close(graphs.run([x, [1]], (x,), {}, module, None), module(x))
    assert graphs.uncaptured == 2 and graphs.captures == 0


def test_reset_state_writes_into_the_tensors_graphs_captured(llama_pack):
    """A captured graph writes the state at the addresses it recorded: reset_state must copy
    into those tensors, never replace them."""
    pack = trtpack.load(llama_pack, device="cpu")
    tensors = {n: (t, t.data_ptr()) for n, (t, _) in pack._state.items()}
    llm.generate(pack["prefill"], pack["decode"], [1, 2, 3], 2)
    assert any(t.abs().sum() > 0 for t, _ in tensors.values())  # the cache was written
    pack.reset_state()
    for name, (t, ptr) in tensors.items():
        assert pack._state[name][0] is t and t.data_ptr() == ptr
        assert pack["decode"]._program.tensors[name] is t
        assert t.abs().sum() == 0  # the saved (zero) cache


# --- on a CUDA GPU ---------------------------------------------------------------------------


@gpu_test
def test_replay_equals_the_uncaptured_pack(mlp_pack):
    plain = trtpack.load(mlp_pack, device="cuda")
    pack = trtpack.load(mlp_pack, device="cuda", cuda_graphs=True)
    graphs = pack.cuda_graphs
    assert graphs is not None and graphs.reason is None, graphs.reason

    def same(got, want):  # the same kernels; cuBLAS may pick another algorithm under capture
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    x, y, z = (torch.randn(n, 64, device="cuda") for n in (1, 1, 5))
    with torch.no_grad():
        want = {"x": plain(x), "y": plain(y), "z": plain(z)}
        first = pack(x)
        assert (graphs.captures, graphs.replays) == (1, 1)
        same(first, want["x"])
        second = pack(y)
        assert (graphs.captures, graphs.replays) == (1, 2)
        same(second, want["y"])
        same(first, want["x"])  # a clone: not overwritten by the next replay
        # a new signature (another batch size) is captured once, then replayed
        same(pack(z), want["z"])
        same(pack(z), want["z"])
        assert (graphs.captures, graphs.replays) == (2, 4) and len(graphs.signatures) == 2
    with torch.inference_mode():  # the same graphs, from inference mode
        same(pack(x), want["x"])
    same(pack(x), want["x"])  # and with grad enabled (inputs that need no grad)
    assert graphs.captures == 2 and graphs.replays == 6


@gpu_test
def test_the_contract_still_refuses_bad_calls(mlp_pack):
    pack = trtpack.load(mlp_pack, device="cuda", cuda_graphs=True)
    with torch.no_grad():
        pack(torch.randn(2, 64, device="cuda"))
        with pytest.raises(InputMismatchError, match="dtype"):
            pack(torch.randn(2, 64, device="cuda", dtype=torch.float64))
        with pytest.raises(InputMismatchError, match="is on cpu"):
            pack(torch.randn(2, 64))
        with pytest.raises(InputMismatchError, match="dim 0 is 65"):
            pack(torch.randn(65, 64, device="cuda"))
    assert pack.cuda_graphs.captures == 1


@gpu_test
def test_signatures_are_bounded(mlp_pack, monkeypatch):
    monkeypatch.setattr(cuda_graphs, "MAX_SIGNATURES", 2)
    pack = trtpack.load(mlp_pack, device="cuda", cuda_graphs=True)
    with torch.no_grad():
        for batch in (1, 2, 3, 1):
            pack(torch.randn(batch, 64, device="cuda"))
    graphs = pack.cuda_graphs
    assert graphs.captures == 4 and len(graphs.signatures) == 2
    assert [s[0][1][0] for s in graphs.signatures] == [3, 1]  # the least recently used went


@gpu_test
def test_state_and_written_inputs_are_as_without_graphs(tmp_path):
    """The warm-up's writes are undone (a capturing call counts once), and inputs the
    program writes in place are written back."""
    path = _save(tmp_path, Counter(), (torch.zeros(3),), "counter")
    plain = trtpack.load(path, device="cuda")
    pack = trtpack.load(path, device="cuda", cuda_graphs=True)
    with torch.no_grad():
        for _ in range(3):
            a, b = torch.ones(3, device="cuda"), torch.ones(3, device="cuda")
            torch.testing.assert_close(pack(a), plain(b), rtol=0, atol=0)
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # x.mul_(2) reached the caller's x
    assert pack.cuda_graphs.captures == 1 and pack.cuda_graphs.replays == 3
    pack.reset_state()
    assert float(pack._program.tensors["count"]) == 0.0


@gpu_test
def test_a_program_that_syncs_runs_uncaptured_with_the_reason(tmp_path):
    path = _save(tmp_path, Synced(), (torch.randn(3),), "synced")
    with pytest.warns(UserWarning, match="no CUDA graphs: node .* CPU synchronization"):
        pack = trtpack.load(path, device="cuda", cuda_graphs=True)
    x = torch.randn(3, device="cuda")
    torch.testing.assert_close(pack(x), x * x.sum())
    assert pack.cuda_graphs.captures == 0 and pack.cuda_graphs.uncaptured == 1


def _generate(prefill, decode, prompt, steps):
    with torch.no_grad():
        ids = torch.tensor([prompt], device="cuda")
        pos = torch.arange(len(prompt), device="cuda")
        logits = prefill(input_ids=ids, cache_position=pos)[:, -1]
        tokens, all_logits = [], [logits.clone()]
        for i in range(steps):
            tok = int(logits.argmax(-1))
            tokens.append(tok)
            pos = torch.tensor([len(prompt) + i], device="cuda")
            logits = decode(input_ids=torch.tensor([[tok]], device="cuda"), cache_position=pos)
            logits = logits[:, -1]
            all_logits.append(logits.clone())
    return tokens, all_logits


@gpu_test
def test_llama_decode_through_graphs_equals_token_for_token(llama_pack):
    plain = trtpack.load(llama_pack, device="cuda")
    pack = trtpack.load(llama_pack, device="cuda", cuda_graphs=["decode"])
    assert pack["prefill"].cuda_graphs is None
    graphs = pack["decode"].cuda_graphs
    assert graphs.reason is None, graphs.reason
    prompt = [1, 5, 9, 2]
    want_tokens, want_logits = _generate(plain["prefill"], plain["decode"], prompt, 8)
    for _ in range(2):  # again after reset_state: the captured graph sees the reset cache
        tokens, logits = _generate(pack["prefill"], pack["decode"], prompt, 8)
        assert tokens == want_tokens
        for got, want in zip(logits, want_logits):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        pack.reset_state()
    assert graphs.captures == 1 and graphs.replays == 16  # one signature: every decode step
