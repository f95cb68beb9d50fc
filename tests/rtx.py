"""Real TensorRT-RTX engines, built on the CPU (no GPU needed to build, only to run).

``build(inputs, outputs=..., targets=...)`` makes a network with the network-definition API:
each output is an elementwise combination of the inputs, with an optimization profile per
dynamic input, for the named compute capabilities. Used by the tests and by
``tools/make_fixtures.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_DTYPES = {
    "float32": "FLOAT",
    "float16": "HALF",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
}


def trt():
    import tensorrt_rtx

    return tensorrt_rtx


#: compute capabilities TensorRT-RTX runs engines on
RUNS_ON = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


#: where the live engine tests run: named in every reason they skip with (docs/testing.md)
LIVE = "live engine test: runs with tools/live_tests.sh on a GPU TensorRT-RTX supports"


def gpu_problem(*, torch_tensorrt: bool = False) -> str | None:
    """Why live TensorRT-RTX engines cannot run here (None: they can): the reason a live test
    (marked ``engine``) skips with. ``torch_tensorrt``: the test also needs it importable."""
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA GPU on this machine ({LIVE})"
    cc = "{}.{}".format(*torch.cuda.get_device_capability())
    if cc not in RUNS_ON:
        return f"TensorRT-RTX does not run engines on compute capability {cc} ({LIVE})"
    if torch_tensorrt:
        try:
            import torch_tensorrt as _  # noqa: F401  (runs the engines)
        except Exception as e:
            return f"torch_tensorrt cannot be imported here: {type(e).__name__}: {e} ({LIVE})"
    return None


def build(
    inputs: Sequence[tuple[str, str, Sequence[int | tuple[int, int, int]]]],
    *,
    targets: Sequence[str] | None = ("8.0",),
    weights_mb: float = 0.0,
    outputs: Sequence[str] = ("output0",),
) -> bytes:
    """inputs: (name, dtype, dims) where a dim is an int or a (min, opt, max) profile.
    The first output sums every input (broadcast over the last input's shape); further
    outputs scale it. ``weights_mb`` adds a constant of that size (a multi-MB engine)."""
    t = trt()
    logger = t.Logger(t.Logger.ERROR)
    builder = t.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    tensors = []
    dynamic = False
    for name, dtype, dims in inputs:
        shape = [-1 if isinstance(d, tuple) else d for d in dims]
        tensor = network.add_input(name, getattr(t.DataType, _DTYPES[dtype]), shape)
        tensors.append(tensor)
        if any(isinstance(d, tuple) for d in dims):
            dynamic = True
            lo = [d[0] if isinstance(d, tuple) else d for d in dims]
            opt = [d[1] if isinstance(d, tuple) else d for d in dims]
            hi = [d[2] if isinstance(d, tuple) else d for d in dims]
            profile.set_shape(name, lo, opt, hi)
    if dynamic:
        config.add_optimization_profile(profile)
    acc = tensors[0]
    rank = len(inputs[0][2])
    for (_, _, dims), other in zip(inputs[1:], tensors[1:]):
        if len(dims) < rank:  # broadcast a lower-rank input: prepend dims of size 1
            shuffle = network.add_shuffle(other)
            shuffle.reshape_dims = [1] * (rank - len(dims)) + list(dims)
            other = shuffle.get_output(0)
        acc = network.add_elementwise(acc, other, t.ElementWiseOperation.SUM).get_output(0)
    if weights_mb:
        n = int(weights_mb * 2**20 / 4)
        const = np.arange(n, dtype=np.float32) / n
        layer = network.add_constant([1] * (len(inputs[0][2]) - 1) + [n], t.Weights(const))
        reduced = network.add_reduce(layer.get_output(0), t.ReduceOperation.SUM,
                                     1 << (len(inputs[0][2]) - 1), True)  # fmt: skip
        acc = network.add_elementwise(
            acc, reduced.get_output(0), t.ElementWiseOperation.SUM
        ).get_output(0)
    for i, name in enumerate(outputs):
        out = network.add_identity(acc).get_output(0)  # an output cannot also be an input
        if i:
            scale = network.add_constant(
                [1] * len(inputs[0][2]), t.Weights(np.full(1, i + 1, np.float32))
            )
            out = network.add_elementwise(
                acc, scale.get_output(0), t.ElementWiseOperation.PROD
            ).get_output(0)
        out.name = name
        network.mark_output(out)
    if targets is not None:
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(
                getattr(t.ComputeCapability, "SM" + cc.replace(".", "")), i
            )
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT-RTX could not build the test network")
    return bytes(memoryview(plan))


def keywords_plan(targets: Sequence[str] | None = ("8.0",), batch=(1, 4, 64)) -> bytes:
    """A whole-graph engine with the bindings of tests/models.py's ``keywords`` model:
    x[batch, 6], mask[batch, 6], bias[6] -> output0[batch, 6]."""
    return build(
        [("x", "float32", (batch, 6)), ("mask", "float32", (batch, 6)), ("bias", "float32", (6,))],
        targets=targets,
    )
