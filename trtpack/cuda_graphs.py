"""CUDA graph replay of a loaded pack's program, opt-in (issue 27.4).

``trtpack.load(path, device="cuda", cuda_graphs=True)`` (every entry point the program runs)
or ``cuda_graphs=["decode"]`` (those entry points only): a call whose inputs have a signature
not seen before is run once to warm up, captured into a ``torch.cuda.CUDAGraph``, and from
then on each call with that signature copies its inputs into the graph's static input
buffers and replays the graph — the way torch_tensorrt's cudagraphs mode and vLLM serve a
decode step. The per-call contract check (trtpack/contract.py) still runs first, every call.

- **Signature**: per input leaf, a tensor's dtype, shape, strides and device, or a
  non-tensor's type and value (an int the program specialised on is baked into the graph).
  A bounded number of signatures is kept per entry point (``MAX_SIGNATURES``, least recently
  used dropped first); all graphs of a pack share one memory pool.
- **State**: buffers and constants the program writes in place (a KV cache shared by
  ``prefill`` and ``decode``, docs/multi-entry.md) are the tensors loaded with the pack; the
  graph writes them at the addresses it captured, so every entry point sees what a replay
  wrote, and ``pack.reset_state()`` (which copies into those tensors) resets a graph's state
  too. The warm-up run's writes are undone before capture (the state is snapshotted and
  copied back), so a call that captures has the effect of one call. User inputs the program
  writes in place are copied back from the static buffers after each replay.
- **Outputs** are returned as clones (new memory each call): the graph's own output buffers
  are overwritten by its next replay. ``graphs.clone_outputs = False`` returns those buffers
  themselves: valid until the next replay of any graph of the pack (they share one memory
  pool, which is safe because each replay's outputs are cloned before the next replay).
- **Autograd**: capture and replay run without autograd; outputs have no history. A call
  with grad enabled and an input that requires grad runs the program uncaptured.
- **Refusals**: a pack on the CPU (``DeviceError`` at load). Fallbacks, with the reason in
  ``graphs.reason`` and a warning: an entry point that runs TensorRT engines (they have
  their own CUDA graph mode), a program with an operation that synchronizes with the CPU or
  has a data-dependent output size (``.item()``, ``nonzero``, ``torch.cond``, ...: found in
  the graph at load), and a capture that fails anyway (torch then documents the allocator's
  state as undefined; that entry point is not captured again).

Calls are serialized per pack while graphs are on (one lock around copy-in, replay and
copy-out), and a replay on another stream than the previous one waits for it.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: captured signatures kept per entry point; the least recently used is dropped first
MAX_SIGNATURES = 8

#: operators that synchronize with the CPU or make an output whose size depends on values
#: (not capturable: a CUDA graph has fixed sizes and no host round trip)
_SYNC_OPS = frozenset(
    [
        "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select",
        "aten::unique_consecutive", "aten::unique_dim", "aten::unique_dim_consecutive",
        "aten::_unique", "aten::_unique2", "aten::bincount", "aten::histc",
        "aten::equal", "aten::is_nonzero",
    ]
)  # fmt: skip

#: one capture at a time in the process (torch.cuda.graph's documented restriction)
_CAPTURE_LOCK = threading.Lock()


def unsafe_reason(module: Any) -> str | None:
    """Why ``module``'s graph cannot be captured (None: nothing found): an operator that
    synchronizes with the CPU, a data-dependent output size, a branch chosen on the host,
    or a copy to the CPU. Every subgraph is searched."""
    if not isinstance(module, torch.fx.GraphModule):
        return f"the program runs as a {type(module).__name__}, not a torch.fx graph"
    unsafe_tag = getattr(torch.Tag, "cudagraph_unsafe", None)
    for sub in module.modules():
        if not isinstance(sub, torch.fx.GraphModule):
            continue
        for node in sub.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                name = target._schema.name
                if name in _SYNC_OPS:
                    return f"node {node.name} calls {target} (a CPU synchronization)"
                if name == "aten::repeat_interleave" and node.kwargs.get("output_size") is None \
                        and target._overloadname == "Tensor":  # fmt: skip
                    return (f"node {node.name} calls {target} without output_size (a CPU "
                            "synchronization)")  # fmt: skip
                if unsafe_tag is not None and unsafe_tag in target.tags:
                    return f"node {node.name} calls {target}, which torch tags cudagraph_unsafe"
            elif isinstance(target, torch._ops.HigherOrderOperator) and target.name() == "cond":
                return f"node {node.name} is torch.cond (its branch is chosen on the CPU)"
            for value in node.kwargs.values():
                if isinstance(value, torch.device) and value.type == "cpu":
                    return f"node {node.name} ({target}) makes a tensor on the CPU"
    return None


def _attr(module: torch.nn.Module, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), module)


def written(module: Any, input_names: Sequence[str]) -> tuple[list[torch.Tensor], list[int]]:
    """What ``module`` writes in place: its tensors (parameters, buffers, constants: the
    loaded state) and the positions, among the call's leaves, of the inputs it writes."""
    from .program.state import written_nodes

    state: dict[int, torch.Tensor] = {}
    inputs: set[int] = set()
    position = {name: i for i, name in enumerate(input_names)}
    for node in written_nodes(module.graph):
        if node.op == "get_attr":
            t = _attr(module, str(node.target))
            if isinstance(t, torch.Tensor):
                state[id(t)] = t
        elif node.name in position:
            inputs.add(position[node.name])
        else:
            raise ValueError(f"the program writes its input {node.name!r}, which the "
                             "manifest's inputs do not name")  # fmt: skip
    return list(state.values()), sorted(inputs)


class GraphPool:
    """What a pack's entry points share: the memory pool of their graphs, one lock around
    every capture and replay, and the stream of the last replay."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.lock = threading.RLock()
        self.last_stream: Any = None
        self._handle: Any = None
        self._capture_stream: Any = None

    def capture_args(self) -> tuple[Any, Any]:
        """The pool's handle and the one stream its graphs are captured on (made on first
        use, on the pack's device: torch.cuda.graph's own side stream is made on whichever
        device is current; a pool shared by captures wants the same stream for each)."""
        if self._handle is None:
            with torch.cuda.device(self.device):
                self._handle = torch.cuda.graph_pool_handle()
                self._capture_stream = torch.cuda.Stream(self.device)
        return self._handle, self._capture_stream


class _Captured:
    __slots__ = ("graph", "outputs", "spec", "static", "tensors")

    def __init__(self, graph: Any, static: list[Any], outputs: list[Any], spec: Any) -> None:
        self.graph = graph
        self.static = static
        self.tensors = [i for i, v in enumerate(static) if isinstance(v, torch.Tensor)]
        self.outputs = outputs
        self.spec = spec


class CudaGraphs:
    """The captured graphs of one entry point (``pack[name].cuda_graphs``).

    ``reason``: None while graphs replay, else why this entry point runs uncaptured.
    ``captures``, ``replays``, ``uncaptured``: counts of calls so far. ``signatures``: the
    captured signatures, least recently used first. ``clone_outputs``: see the module."""

    def __init__(
        self,
        module: Any,
        pool: GraphPool,
        *,
        input_names: Sequence[str],
        where: str,
        reason: str | None = None,
        max_signatures: int | None = None,
    ) -> None:
        self.pool = pool
        self.where = where
        self.max_signatures = MAX_SIGNATURES if max_signatures is None else max_signatures
        self.clone_outputs = True
        self.captures = self.replays = self.uncaptured = 0
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._state: list[torch.Tensor] = []
        self._written_inputs: list[int] = []
        self.reason = reason or unsafe_reason(module)
        if self.reason is None:
            try:
                self._state, self._written_inputs = written(module, input_names)
            except ValueError as e:
                self.reason = str(e)
        if self.reason is not None:
            warnings.warn(f"trtpack: {where}: no CUDA graphs: {self.reason}", stacklevel=4)

    @property
    def signatures(self) -> list[tuple]:
        return list(self._graphs)

    def run(
        self,
        leaves: list[Any],
        args: tuple,
        kwargs: dict[str, Any],
        module: Any,
        call_of: Callable[[Sequence[Any]], tuple],
    ) -> Any:
        """One checked call (``args``/``kwargs``; ``leaves``: its inputs in manifest order):
        replayed, captured first if its signature is new, or run on ``module`` where it
        cannot be. ``call_of``: leaves -> (args, kwargs), for the static inputs."""
        key = self._key(leaves)
        if key is None:
            self.uncaptured += 1
            return module(*args, **kwargs)
        with self.pool.lock:
            try:
                captured = self._graphs.get(key)
            except TypeError:  # a non-tensor input that cannot be hashed: no signature
                self.uncaptured += 1
                return module(*args, **kwargs)
            if captured is None:
                captured = self._capture(key, leaves, module, call_of)
                if captured is None:  # the capture failed: this entry point runs uncaptured
                    self.uncaptured += 1
                    return module(*args, **kwargs)
            else:
                self._graphs.move_to_end(key)
            return self._replay(captured, leaves)

    def _key(self, leaves: list[Any]) -> tuple | None:
        if self.reason is not None:
            return None
        key: list[Any] = []
        grad = torch.is_grad_enabled()
        for v in leaves:
            if isinstance(v, torch.Tensor):
                if grad and v.requires_grad:
                    return None  # autograd through a replay is not possible
                key.append((v.dtype, v.shape, v.stride(), v.device))
            else:
                key.append((type(v), v))
        return tuple(key)

    def _replay(self, captured: _Captured, leaves: list[Any]) -> Any:
        stream = torch.cuda.current_stream(self.pool.device)
        last = self.pool.last_stream
        if last is not None and last != stream:
            stream.wait_stream(last)  # the previous replay's outputs and state are written
        static = captured.static
        grad = torch.is_grad_enabled()
        if grad:  # (a function call, not a context: this is the per-call path)
            torch.set_grad_enabled(False)
        try:
            for i in captured.tensors:
                static[i].copy_(leaves[i])
            captured.graph.replay()
            for i in self._written_inputs:
                leaves[i].copy_(static[i])
            outputs = [o.clone() if self.clone_outputs and isinstance(o, torch.Tensor) else o
                       for o in captured.outputs]  # fmt: skip
        finally:
            if grad:
                torch.set_grad_enabled(True)
        self.pool.last_stream = stream
        self.replays += 1
        return torch.utils._pytree.tree_unflatten(outputs, captured.spec)

    def _capture(
        self, key: tuple, leaves: list[Any], module: Any, call_of: Callable[[Sequence[Any]], tuple]
    ) -> _Captured | None:
        device = self.pool.device
        handle, capture_stream = self.pool.capture_args()
        # normal tensors even inside inference mode: every later call copies into them
        with torch.inference_mode(False), torch.no_grad(), _CAPTURE_LOCK, \
                torch.cuda.device(device):  # fmt: skip
            static = [torch.empty_like(v).copy_(v) if isinstance(v, torch.Tensor) else v
                      for v in leaves]  # fmt: skip
            args, kwargs = call_of(static)
            saved = [t.clone() for t in self._state]
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                module(*args, **kwargs)  # warm-up: lazy initialisation happens off the graph
            current.wait_stream(side)
            for t, s in zip(self._state, saved):  # the warm-up's writes undone
                t.copy_(s)
            del saved
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=handle, stream=capture_stream,
                                      capture_error_mode="thread_local"):  # fmt: skip
                    out = module(*args, **kwargs)
            except Exception as e:
                # torch.cuda.graph leaves its capture stream current when capture_end raises
                torch.cuda.set_stream(current)
                first = (str(e).strip().splitlines() or [""])[0]
                self.reason = f"the capture failed: {type(e).__name__}: {first}"
                self._graphs.clear()
                warnings.warn(f"trtpack: {self.where}: no CUDA graphs: {self.reason}",
                              stacklevel=5)  # fmt: skip
                return None
            outputs, spec = torch.utils._pytree.tree_flatten(out)
        captured = _Captured(graph, static, outputs, spec)
        self._graphs[key] = captured
        self.captures += 1
        while len(self._graphs) > self.max_signatures:
            # the capture synchronized the device: nothing of the dropped graph is in flight
            self._graphs.popitem(last=False)
        return captured
