"""The only module that imports ``tensorrt_rtx`` and ``torch.onnx``: a whole-graph
TensorRT-RTX plan built from an ExportedProgram on this machine, GPU or not.

The route is the one TensorRT-RTX supports for ahead-of-time builds on a CPU:

1. ``torch.onnx.export(ep, dynamo=True)``: the dynamo exporter takes the ExportedProgram as
   it is (no re-trace, so no second chance for tracing to differ from the stored program),
   and its dynamic dims are the program's own symbols, the ones the manifest names. The
   TorchScript exporter would re-trace ``ep.module()`` with ``torch.jit.trace`` and need the
   dynamic axes spelled out again; it is deprecated in torch 2.9+.
2. ``tensorrt_rtx.OnnxParser`` into a network whose inputs and outputs are then checked
   against the bindings asked for (names, dtypes, which dims are dynamic).
3. One optimization profile (each binding's min/opt/max), ``set_compute_capability`` for
   each named GPU, ``build_serialized_network_to_stream`` into a file.

Memory (issue 23.7): the weights exist once in the exporter's side file, and TensorRT-RTX's
builder makes one copy of its own. The parser is handed the side file's weights from a
read-only map of trtpack's (``load_initializer``), whose clean pages a thread drops from this
process's memory every 10 ms while the builder runs (the builder maps them again from the page
cache as it reads); the plan streams to a file, never held as one buffer. Peak resident memory
over the weights: 3.0x at the margin before, 1.0x now (docs/performance.md).

Everything else (which bindings, which profile, the variant, the pack) is decided by the
caller (``writing.build``) from the manifest; this module only carries it out and reports what
TensorRT-RTX or the exporter refused.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import mmap
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.export import ExportedProgram

from ..errors import EngineError, MissingDependencyError
from ..format.manifest import Binding
from ..format.progress import Progress
from .plan import TRT_DTYPES as PLAN_DTYPES

_RTX_HINT = "pip install 'trtpack[rtx]'"

#: manifest dtype -> TensorRT-RTX DataType name, for engine inputs and outputs (plan.py's
#: table, read the other way)
TRT_DTYPES = {dtype: trt_name for trt_name, dtype in PLAN_DTYPES.items()}


#: how often the builder's view of the weights is dropped from memory while it runs
_DROP_PAGES_S = 0.01


@dataclass(frozen=True)
class BuiltPlan:
    path: Path  # the serialized plan, a file in the caller's working folder
    size: int  # its bytes
    export_s: float  # torch.onnx.export
    parse_s: float  # OnnxParser
    build_s: float  # build_serialized_network, all targets together
    #: how it was built, as plain data (the engine's ``settings["build"]`` in the manifest)
    settings: dict[str, Any]


def import_rtx() -> Any:
    try:
        import tensorrt_rtx
    except ImportError as e:
        raise MissingDependencyError(
            f"building a TensorRT-RTX engine needs tensorrt_rtx ({e}); {_RTX_HINT}"
        ) from e
    return tensorrt_rtx


def _import_onnx_exporter() -> None:
    """torch.onnx's dynamo exporter needs onnx and onnxscript (not torch dependencies)."""
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError as e:
            raise MissingDependencyError(
                f"building an engine from the program exports it to ONNX, which needs {name} "
                f"({e}); {_RTX_HINT}"
            ) from e


def compute_capabilities() -> dict[str, Any]:
    """The GPUs this tensorrt_rtx can build for: ``{"8.6": ComputeCapability.SM86, ...}``."""
    trt = import_rtx()
    out = {}
    for name, value in trt.ComputeCapability.__members__.items():
        digits = name.removeprefix("SM")
        if name.startswith("SM") and digits.isdigit():
            out[f"{digits[:-1]}.{digits[-1]}"] = value
    return out


def check_targets(targets: Sequence[str]) -> dict[str, Any]:
    """Refuse what cannot be built here before anything is loaded: no tensorrt_rtx, onnx or
    onnxscript, or a compute capability this tensorrt_rtx does not build for."""
    trt = import_rtx()
    _import_onnx_exporter()
    known = compute_capabilities()
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise EngineError(
            f"tensorrt_rtx {trt.__version__} cannot build for compute capability "
            f"{', '.join(unknown)} (it builds for {', '.join(known)})",
            field="targets",
            got=unknown,
        )
    return known


def build_plan(
    ep: ExportedProgram,
    inputs: Sequence[Binding],
    outputs: Sequence[Binding],
    targets: Sequence[str],
    *,
    where: str,
    workdir: Path,
    progress: Progress | None = None,
    exported: Callable[[], None] | None = None,
) -> BuiltPlan:
    """A serialized TensorRT-RTX plan of ``ep`` whose input bindings are ``inputs`` (in the
    program's tensor-input order, each with its profile) and whose outputs are ``outputs``,
    with kernels for each compute capability in ``targets`` ("8.6", ...), written to a file in
    ``workdir`` (an empty folder the caller removes; the ONNX export passes through it too).
    Its steps are named on ``progress``. ``exported`` is called once the ONNX file is written:
    ``ep``'s weights are not read again, and the caller may release their memory before the
    builder runs."""
    step = progress.step if progress is not None else (lambda _name: None)
    trt = import_rtx()
    known = check_targets(targets)
    for kind, b in [("input", b) for b in inputs] + [("output", b) for b in outputs]:
        if b.dtype not in TRT_DTYPES:
            raise EngineError(
                f"{where}: {kind} {b.name!r} is {b.dtype}, which TensorRT-RTX has no type for "
                f"(engine inputs and outputs can be {', '.join(TRT_DTYPES)}); cast it inside "
                "the model and export again",
                field="dtype",
                got=b.dtype,
            )
    onnx_path, plan_path = workdir / "model.onnx", workdir / "model.plan"
    t0 = time.perf_counter()
    step("export ONNX")
    opset = _export_onnx(ep, onnx_path, [b.name for b in inputs], [b.name for b in outputs],
                         where)  # fmt: skip
    if exported is not None:
        exported()
    t1 = time.perf_counter()
    step("parse ONNX")
    log = _logger_class(trt)()
    builder = trt.Builder(log)
    network = builder.create_network(0)  # TensorRT-RTX networks are strongly typed
    parser = trt.OnnxParser(network, log)
    with _mapped_weights(onnx_path) as weights:
        if not _parse(parser, onnx_path, weights):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineError(
                f"{where}: TensorRT-RTX's ONNX parser cannot take the program: "
                + "; ".join(errors or log.errors or ["(no error given)"]),
                field="onnx",
                got=errors,
            )
        t2 = time.perf_counter()
        _check_network(trt, network, inputs, outputs, where)
        config = builder.create_builder_config()
        if any(lo != hi for b in inputs for lo, _, hi in b.profile or ()):
            profile = builder.create_optimization_profile()
            for b in inputs:
                rows = b.profile or ()
                profile.set_shape(b.name, [r[0] for r in rows], [r[1] for r in rows],
                                  [r[2] for r in rows])  # fmt: skip
            config.add_optimization_profile(profile)
        config.num_compute_capabilities = len(targets)
        for i, cc in enumerate(targets):
            config.set_compute_capability(known[cc], i)
        step(f"build the engine for compute capability {', '.join(targets)}")
        with open(plan_path, "wb") as f, _dropping_pages(weights.maps):
            writer = _writer_class(trt)(f)
            ok = builder.build_serialized_network_to_stream(network, config, writer)
        del parser, network, builder  # the network refers to the mapped weights
    for name in os.listdir(workdir):  # the export's files: only the plan stays
        if name != plan_path.name:
            (workdir / name).unlink()
    t3 = time.perf_counter()
    if writer.error is not None:
        raise EngineError(f"{where}: writing the built engine to {plan_path} failed: "
                          f"{writer.error}") from writer.error  # fmt: skip
    if not ok:
        raise EngineError(
            f"{where}: TensorRT-RTX could not build the engine: "
            + ("; ".join(log.errors) or "(no error given)"),
            got=log.errors,
        )
    import torch

    settings = {
        "route": "torch.onnx.export(dynamo=True) -> tensorrt_rtx.OnnxParser",
        "compute_capabilities": list(targets),
        "onnx_opset": opset,
        "torch": torch.__version__,
    }
    return BuiltPlan(plan_path, plan_path.stat().st_size, t1 - t0, t2 - t1, t3 - t2, settings)


@contextlib.contextmanager
def plan_view(built: BuiltPlan) -> Iterator[memoryview]:
    """The built plan's bytes, from a read-only map of its file (only the pages read, such as
    the header's, come into memory); the map is closed on leaving."""
    with open(built.path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        yield view
    finally:
        view.release()
        with contextlib.suppress(BufferError):  # a view still held (by an error's traceback):
            mapped.close()  # the map closes when that is freed


@dataclass
class _Weights:
    """The ONNX export's external weights: a read-only map of each side file, and each
    initializer's place in them (name, address, bytes), as the parser is handed them."""

    maps: list[mmap.mmap]
    initializers: list[tuple[str, int, int]]
    _arrays: list[Any]  # the numpy views the addresses come from (they hold the maps' buffers)


@contextlib.contextmanager
def _mapped_weights(onnx_path: Path) -> Iterator[_Weights]:
    """A read-only map of each side file the ONNX file's initializers are stored in (the
    exporter writes one, ``model.onnx.data``), closed on leaving."""
    import numpy
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = _Weights([], [], [])
    address: dict[str, int] = {}
    size: dict[str, int] = {}
    try:
        for init in model.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue  # in the graph itself: the parser reads it
            info = {e.key: e.value for e in init.external_data}
            location, length = info.get("location", ""), int(info.get("length", 0))
            if not length or Path(location).name != location:
                continue  # the parser reads it from the file itself
            if location not in address:
                with open(onnx_path.parent / location, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                weights.maps.append(mapped)
                weights._arrays.append(numpy.frombuffer(mapped, dtype=numpy.uint8))
                address[location] = weights._arrays[-1].ctypes.data
                size[location] = len(mapped)
            offset = int(info.get("offset", 0))
            if offset < 0 or offset + length > size[location]:
                continue  # past the file's end: the parser reads it, and says so
            weights.initializers.append((init.name, address[location] + offset, length))
        yield weights
    finally:
        weights._arrays.clear()
        for mapped in weights.maps:
            with contextlib.suppress(BufferError):  # as in plan_view
                mapped.close()


def _parse(parser: Any, onnx_path: Path, weights: _Weights) -> bool:
    """Parse the ONNX file (its graph: kilobytes, the weights being in side files), each
    external initializer handed over from ``weights``' maps rather than read by the parser,
    so that trtpack can drop their pages while the builder runs (``_dropping_pages``)."""
    if not parser.load_model_proto(onnx_path.read_bytes(), str(onnx_path)):
        return False
    for name, address, length in weights.initializers:
        if not parser.load_initializer(name, address, length):
            return False
    return bool(parser.parse_model_proto())


@contextlib.contextmanager
def _dropping_pages(maps: Sequence[mmap.mmap]) -> Iterator[None]:
    """While the builder runs (it releases the GIL), a thread drops the weights' pages from
    this process's memory every ``_DROP_PAGES_S``: they are clean pages of read-only file
    maps, so a page the builder reads again is mapped again from the page cache, the same
    bytes. What stays resident is the builder's own copy of the weights, not the file's too."""
    if not maps or not hasattr(mmap, "MADV_DONTNEED"):  # not on Windows
        yield
        return
    stop = threading.Event()

    def drop() -> None:
        for mapped in maps:
            mapped.madvise(mmap.MADV_DONTNEED)

    def run() -> None:
        while not stop.wait(_DROP_PAGES_S):
            drop()

    thread = threading.Thread(target=run, name="trtpack-drop-weight-pages", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        drop()


def _export_onnx(
    ep: ExportedProgram, path: Path, inputs: list[str], outputs: list[str], where: str
) -> int | None:
    """Export to ``path``; the ONNX opset used."""
    import torch

    _drop_derived_ranges(ep)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                ep, (), dynamo=True, input_names=inputs, output_names=outputs, report=False
            )
            if program is None:  # only the TorchScript exporter returns None
                raise RuntimeError("torch.onnx.export returned no ONNX program")
            # weights in a side file: saved embedded, the protobuf holds a copy of every
            # weight and is serialized whole in memory again (peak 5.4x the weights, measured)
            program.save(str(path), external_data=True)
            del program
    except Exception as e:
        raise EngineError(
            f"{where}: the program cannot be exported to ONNX (torch.onnx, dynamo exporter): "
            + _root_cause(e),
            field="onnx",
        ) from e
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != inputs or got_out != outputs:
        raise EngineError(
            f"{where}: the ONNX export has inputs {got_in} and outputs {got_out}; the engine "
            f"needs the manifest's tensor inputs {inputs} and outputs {outputs} (an input the "
            "program does not use is dropped by the exporter)",
            field="bindings",
            expected=(inputs, outputs),
            got=(got_in, got_out),
        )
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _drop_derived_ranges(ep: ExportedProgram) -> None:
    """A program read back by torch's deserializer (``torch.export.load``, and so a pack's)
    with a derived dim (``2*n``, ``n+1``) has a range for each such expression in its shape
    env, where only symbols belong, and ``run_decompositions`` — which the ONNX exporter runs —
    then fails with "AssertionError: expected sympy.Symbol" (torch 2.13). Those ranges follow
    from the symbols' own, so they are dropped (``ep`` is the copy loaded for this build)."""
    import sympy
    from torch._export.utils import _get_shape_env_from_gm

    shape_env = _get_shape_env_from_gm(ep.graph_module)
    if shape_env is None:
        return
    for key in [k for k in shape_env.var_to_range if not isinstance(k, sympy.Symbol)]:
        del shape_env.var_to_range[key]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register and prints progress;
    neither concerns the user of ``trtpack build``."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_network(trt: Any, network: Any, inputs: Sequence[Binding],
                   outputs: Sequence[Binding], where: str) -> None:  # fmt: skip
    """The parsed network's inputs and outputs are the bindings asked for: names, dtypes,
    and the dims the manifest makes dynamic are dynamic (-1), the others as given."""
    got_in = [network.get_input(i) for i in range(network.num_inputs)]
    got_out = [network.get_output(i) for i in range(network.num_outputs)]
    if [t.name for t in got_in] != [b.name for b in inputs] or [t.name for t in got_out] != [
        b.name for b in outputs
    ]:
        raise EngineError(
            f"{where}: the parsed network has inputs {[t.name for t in got_in]} and outputs "
            f"{[t.name for t in got_out]}, expected {[b.name for b in inputs]} and "
            f"{[b.name for b in outputs]}",
            field="bindings",
        )
    for kind, tensors, bindings in (("input", got_in, inputs), ("output", got_out, outputs)):
        for t, b in zip(tensors, bindings):
            want = getattr(trt.DataType, TRT_DTYPES[b.dtype])
            if t.dtype != want:
                raise EngineError(
                    f"{where}: engine {kind} {b.name!r} would be {t.dtype.name}, the manifest "
                    f"says {b.dtype}",
                    field="dtype",
                    expected=b.dtype,
                    got=t.dtype.name,
                )
            if len(t.shape) != len(b.shape):
                raise EngineError(
                    f"{where}: engine {kind} {b.name!r} has rank {len(t.shape)}, the manifest "
                    f"says {len(b.shape)} ({list(b.shape)})",
                    field="shape",
                )
            if kind == "output":
                continue
            for i, (got, dim) in enumerate(zip(t.shape, b.shape)):
                expected = dim if isinstance(dim, int) else -1
                if got != expected:
                    raise EngineError(
                        f"{where}: ONNX input {b.name!r} dim {i} is {got}, the manifest says "
                        f"{dim} (the exporter {'specialized' if expected == -1 else 'changed'} "
                        "it)",
                        field="shape",
                        expected=dim,
                        got=got,
                    )


def _root_cause(e: BaseException) -> str:
    """The exporter wraps what failed (``DispatchError: No ONNX function found for
    <OpOverload(op='aten.linalg_cholesky_ex' ...)>``) in errors of advice: the innermost."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _parser_error(err: Any) -> str:
    """``node n0 (Det): UNSUPPORTED_NODE``, with the parser's text where it says more than
    the failed assertion (``false``)."""
    name = err.node_name() or (f"n{err.node()}" if err.node() >= 0 else "")
    op = err.node_operator()
    at = f"node {name}" + (f" ({op})" if op else "") if name or op else "the model"
    code = getattr(err.code(), "name", str(err.code()))
    desc = err.desc().strip()
    return f"{at}: {code}" + (f": {desc}" if desc and desc != "false" else "")


@functools.cache
def _writer_class(trt: Any) -> type:
    class Writer(trt.IStreamWriter):
        """The serialized plan, written to a file as the builder hands it over (in pieces
        of 64 MiB), never held whole; a failed write is kept and raised after the build."""

        def __init__(self, file: io.BufferedWriter) -> None:
            trt.IStreamWriter.__init__(self)
            self.file = file
            self.error: OSError | None = None

        def write(self, data: bytes) -> int:
            try:
                return self.file.write(data)
            except OSError as e:
                self.error = e
                return 0

    return Writer


@functools.cache
def _logger_class(trt: Any) -> type:
    class Logger(trt.ILogger):
        """Keeps the errors TensorRT-RTX logs, for the message of the error trtpack raises."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg.strip())

    return Logger
