"""The standard TensorRT lean runtime (``tensorrt_lean``) running one whole-graph,
version-compatible engine without torch_tensorrt — the runtime a deployment of such engines
may have instead of the full TensorRT. The only module that imports ``tensorrt_lean``.

It needs a CUDA GPU and an engine built by the full TensorRT builder: no machine this
project has offers both, so this code has not run against a live engine (its test is marked
``engine`` and says why it skips). Everything before it — choosing it, the host-code gate —
is decided in ``select.py`` and tested everywhere.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ..errors import EngineError
from ..format.manifest import EngineSpec
from .plan import bindings_mismatch, io_tensors


def lean_runtime_version() -> str | None:
    """The installed lean runtime's version, or None (not installed, or not loadable)."""
    if importlib.util.find_spec("tensorrt_lean") is None:
        return None
    try:
        import tensorrt_lean
    except Exception:  # its native library is missing or does not load here
        return None
    return str(tensorrt_lean.__version__)


class LeanEngineRunner:
    """One engine on the lean runtime: inputs by binding order, outputs as a list. TensorRT
    may run host code embedded in the plan only when ``host_code_allowed`` (the manifest
    says the plan carries the lean runtime, and the pack is signed-and-verified or trusted);
    otherwise TensorRT itself refuses such a plan."""

    def __init__(
        self, plan: bytes, spec: EngineSpec, device: torch.device, *, host_code_allowed: bool
    ) -> None:
        import tensorrt_lean as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._runtime.engine_host_code_allowed = host_code_allowed
        with torch.cuda.device(device):
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError(
                f"the TensorRT lean runtime {trt.__version__} could not deserialize engine "
                f"{spec.member} (host code allowed: {host_code_allowed}; see TensorRT's log)",
                member=spec.member,
            )
        engine = self._engine
        problem = bindings_mismatch(spec, io_tensors(engine, trt))
        if problem is not None:
            raise EngineError(f"engine {spec.member}: {problem}", member=spec.member,
                              field="bindings")  # fmt: skip
        self._context = engine.create_execution_context()
        self.device = device
        self.inputs = [b.name for b in spec.inputs]
        self.outputs = [(b.name, getattr(torch, b.dtype)) for b in spec.outputs]

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        context: Any = self._context
        # copies made here are freed before the engine reads them, which is safe: the caching
        # allocator reuses their memory only for work queued later on the same stream
        for name, t in zip(self.inputs, inputs, strict=True):
            t = t.to(self.device).contiguous()
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name, dtype in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(
                    f"output {name!r} has a data-dependent shape {shape}; the lean runner "
                    "needs shapes known from the inputs",
                    field=name,
                )
            out = torch.empty(shape, dtype=dtype, device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineError("the TensorRT lean runtime failed to run the engine")
        return outputs
