"""Driving the real torch_tensorrt (the -rtx build) on a machine without a GPU, for tests.

What is patched, and nothing else:
- device *queries*: ``torch.cuda.get_device_capability`` / ``current_device`` /
  ``get_device_properties`` (torch_tensorrt asks them at import and when it packs an engine;
  the answers only fill the "build device" field of torch_tensorrt's packed engine info);
- the GPU-side *deserialization* of an engine that was really built: TensorRT-RTX's
  ``Runtime.deserialize_cuda_engine`` (inside torch_tensorrt's interpreter) hands back an
  object holding the real serialized bytes, and ``TorchTensorRTModule.setup_engine`` is
  skipped, so the module keeps its real ``serialized_engine`` with ``engine = None``.

Everything that is built — engine bytes, binding names, the partitioned graph, settings —
comes from torch_tensorrt and TensorRT-RTX themselves; no test asserts on a patched value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from unittest import mock

#: the build GPU the packed info records (a device query answer): an RTX 4090-class sm_89
BUILD_GPU = SimpleNamespace(major=8, minor=9, name="no GPU (tests)", total_memory=0)


@contextlib.contextmanager
def device_queries() -> Iterator[None]:
    with mock.patch("torch.cuda.get_device_capability", return_value=(8, 9)), \
         mock.patch("torch.cuda.current_device", return_value=0), \
         mock.patch("torch.cuda.get_device_properties", return_value=BUILD_GPU):  # fmt: skip
        yield


def import_torch_tensorrt():
    with device_queries():
        import torch_tensorrt
    return torch_tensorrt


class _HostBuiltEngine:
    """Returned in place of a deserialized engine: serialize() gives back the real bytes."""

    def __init__(self, host_memory) -> None:
        self._host_memory = host_memory

    def serialize(self):
        return self._host_memory

    def get_aliased_input_tensor(self, name):  # only KV-cache layers alias; none in tests
        return None

    def __getattr__(self, item):
        raise RuntimeError(f"'{item}' needs a deserialized engine, that is a GPU")


@contextlib.contextmanager
def cpu_compile() -> Iterator[None]:
    """Inside: torch_tensorrt.dynamo.compile builds real engines and returns a real module."""
    import tensorrt_rtx
    from torch_tensorrt.dynamo.runtime import TorchTensorRTModule

    def deserialize(runtime, serialized):
        return _HostBuiltEngine(serialized)

    with device_queries(), \
         mock.patch.object(tensorrt_rtx.Runtime, "deserialize_cuda_engine", deserialize), \
         mock.patch.object(TorchTensorRTModule, "setup_engine", lambda self: None), \
         mock.patch.object(TorchTensorRTModule, "set_output_tensors_as_unowned",
                           lambda self, enabled: None):  # fmt: skip
        yield
