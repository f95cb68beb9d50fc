"""A pack as a Triton model repository, for Triton's TensorRT backend or its Python backend.
No torch.

TensorRT backend (``backend="tensorrt"``, the default for a pack with a whole-graph engine)::

    REPO/NAME/config.pbtxt                    platform: "tensorrt_plan"
    REPO/NAME/1/model.plan                    one target, or
    REPO/NAME/1/model_sm80.plan ...           one plan per compute capability, picked by
                                              Triton through cc_model_filenames

Input and output names are the engine's binding names. Only a model that is one whole-graph
engine qualifies: Triton's TensorRT backend runs a plan, not PyTorch-fallback subgraphs.

Python backend (``backend="python"``, the default otherwise)::

    REPO/NAME/config.pbtxt                    backend: "python"
    REPO/NAME/1/model.py                      a copy of triton_model.py
    REPO/NAME/1/model.trtpack                 the pack, byte for byte

``model.py`` runs the pack with ``trtpack.load`` (engines where a variant can run, else the
ExportedProgram). Its inputs and outputs are the manifest's, by name: every tensor input
(and dynamic int), not the constants torch.export specialized; every tensor output.

Either config is built as Triton's own ``ModelConfig`` protobuf (from the ``tritonclient``
package) and printed in its text format, so a field Triton does not know cannot be written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependencyError, OutputExistsError, RegistryError
from ..format.container import PathLike
from ..format.manifest import Binding, IOSpec, Manifest, Variant, parse_dim
from ..reading import open_pack

_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16",
    "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
}  # fmt: skip
BACKENDS = ("tensorrt", "python")
INSTANCE_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
#: the pack's file name inside the python-backend model's version folder
PACK_FILE = "model.trtpack"
#: config.pbtxt parameters read by model.py
PACK_PARAMETER = "trtpack_pack"
#: the config parameter naming the entry point a model serves (a multi-entry pack, format 1.4)
ENTRY_POINT_PARAMETER = "trtpack_entry_point"
#: the line of triton_model.py that export_triton writes the site dirs into
SITE_DIRS_LINE = (
    "SITE_DIRS: list[str] = []  # export-triton --site-dir: the folders, written here\n"
)
_MODEL_CODE = Path(__file__).with_name("triton_model.py")
#: the types of a dynamic scalar input (a Triton input of dims [1])
_SCALAR_DTYPES = {"int": "int64", "float": "float64", "bool": "bool"}


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise MissingDependencyError(
            f"exporting to Triton needs tritonclient ({e}); pip install 'trtpack[triton]'"
        ) from e
    return model_config_pb2


@dataclass(frozen=True)
class TritonModel:
    path: Path
    config: str
    plans: dict[str, str]  # compute capability (or "default") -> file name; python: empty
    backend: str = "tensorrt"
    #: python backend: the folders model.py imports trtpack, torch and numpy from
    site_dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TritonTensor:
    """One input or output of the python-backend model, as Triton sees it."""

    name: str
    dtype: str  # the manifest's dtype name ("float32"; "int64" for a dynamic int)
    dims: tuple[int, ...]  # Triton's dims: -1 where dynamic, the batch dim left out
    #: a 0-d tensor or a dynamic scalar: dims [1] in Triton, 0-d (or a Python value) for the model
    scalar: bool = False
    #: a dynamic scalar input (not a tensor): the model is given ``.item()``
    python_scalar: bool = False
    #: batched with no dim but the batch dim: dims [1] and ``reshape { shape: [] }`` (Triton
    #: refuses empty dims), so the model sees [batch] and Triton reshapes it
    reshape: bool = False


@dataclass(frozen=True)
class PythonInterface:
    """The python-backend model's Triton inputs and outputs, derived from the manifest (by
    export_triton for config.pbtxt and by model.py in the server, the same function)."""

    inputs: tuple[TritonTensor, ...]
    outputs: tuple[TritonTensor, ...]
    batch_symbol: str | None = None  # with max_batch_size > 0: the shared first dim


def default_backend(manifest: Manifest) -> str:
    """``tensorrt`` when the pack has a whole-graph engine variant, else ``python``."""
    return "tensorrt" if any(v.whole_graph for v in manifest.engines) else "python"


def python_interface(
    manifest: Manifest, max_batch_size: int = 0, where: str = "the pack"
) -> PythonInterface:
    """Triton's view of the manifest: every tensor input and dynamic scalar, by name; not the
    inputs torch.export specialized to a constant (model.py passes their exported values);
    every tensor output. With ``max_batch_size`` > 0 every input and output must start with
    the same dynamic symbol, whose range covers 1..max_batch_size; dims then leave it out."""
    fed = [i for i in manifest.inputs if i.is_tensor or i.symbol is not None]
    outs = [o for o in manifest.outputs if o.is_tensor]
    if not outs:
        raise RegistryError(f"{where} returns no tensor, so Triton has no output to serve")
    batch = (
        _python_batch(manifest, [*fed, *outs], max_batch_size, where) if max_batch_size else None
    )
    return PythonInterface(
        tuple(_tensor(i, batch, where) for i in fed),
        tuple(_tensor(o, batch, where) for o in outs),
        batch,
    )


def _tensor(spec: IOSpec, batch: str | None, where: str) -> TritonTensor:
    dtype = spec.dtype if spec.is_tensor else _SCALAR_DTYPES.get(spec.kind)
    if dtype is None or dtype not in _TYPES:
        what = spec.dtype if spec.is_tensor else f"a dynamic {spec.kind}"
        raise RegistryError(f"{where}: Triton has no data type for {spec.name!r} ({what})")
    if not spec.is_tensor:
        return TritonTensor(spec.name, dtype, (1,), scalar=True, python_scalar=True)
    shape = spec.shape or ()
    if not shape:
        return TritonTensor(spec.name, dtype, (1,), scalar=True)
    dims = [d if isinstance(d, int) else -1 for d in shape[1 if batch else 0 :]]
    if not dims:
        return TritonTensor(spec.name, dtype, (1,), reshape=True)
    return TritonTensor(spec.name, dtype, tuple(dims))


def _python_batch(manifest: Manifest, specs: list[IOSpec], max_batch_size: int, where: str) -> str:
    firsts = set()
    for spec in specs:
        if not spec.is_tensor:
            raise RegistryError(
                f"{where}: --max-batch-size needs every input to be a tensor with a dynamic "
                f"first dim; {spec.name!r} is a dynamic {spec.kind} (use max_batch_size 0)"
            )
        shape = spec.shape or ()
        first = shape[0] if shape else None
        if not isinstance(first, str) or first == "?" or not parse_dim(first).plain:
            raise RegistryError(
                f"{where}: --max-batch-size needs a dynamic first dim on every input and output; "
                f"{spec.name!r} is {list(shape)}"
            )
        firsts.add(first)
    if len(firsts) != 1:
        raise RegistryError(
            f"{where}: --max-batch-size needs one batch dim shared by all inputs and outputs, "
            f"found {sorted(firsts)}"
        )
    sym = firsts.pop()
    lo, hi = manifest.symbols[sym].min, manifest.symbols[sym].max
    if lo > 1 or (hi is not None and hi < max_batch_size):
        raise RegistryError(
            f"{where}: the pack takes {sym} in [{lo}, {hi}], which does not cover batches "
            f"1..{max_batch_size}"
        )
    return sym


def _qualifying(manifest: Manifest, where: str) -> list[Variant]:
    if not manifest.engines:
        raise RegistryError(
            f"{where} holds no TensorRT engine; Triton's TensorRT backend serves engines. "
            "Compile the model (trtpack.compile) or add one (trtpack add-engine), or use "
            "the python backend, which runs the pack itself"
        )
    whole = [v for v in manifest.engines if v.whole_graph]
    if not whole:
        names = ", ".join(f"{v.name} ({len(v.engines)} engines)" for v in manifest.engines)
        raise RegistryError(
            f"{where} has no whole-graph engine ({names}): its variants need PyTorch-fallback "
            "subgraphs or several engines, which Triton's TensorRT backend cannot run. "
            "Compile without torch_executed_ops so that one engine covers the whole graph, "
            "or use the python backend, which runs the pack itself"
        )
    return whole


def _dims(binding: Binding, batch: str | None, where: str) -> list[int]:
    dims = []
    for i, d in enumerate(binding.shape):
        if i == 0 and batch is not None:
            continue  # Triton adds the batch dim itself
        if isinstance(d, int):
            dims.append(d)
        elif d == "?":
            raise RegistryError(f"{where}: {binding.name!r} has an unknown shape; describe it")
        else:
            dims.append(-1)
    return dims


def _batch_symbol(variant: Variant, manifest: Manifest, max_batch_size: int, where: str) -> str:
    """With max_batch_size > 0, every binding's first dim must be the same dynamic symbol
    whose range covers 1..max_batch_size."""
    (engine,) = variant.engines
    firsts = set()
    for b in (*engine.inputs, *engine.outputs):
        if not b.shape or isinstance(b.shape[0], int):
            raise RegistryError(
                f"{where}: --max-batch-size needs a dynamic first dim on every input and output; "
                f"{b.name!r} is {list(b.shape)}"
            )
        firsts.add(parse_dim(str(b.shape[0])).symbol if b.shape[0] != "?" else "?")
    if len(firsts) != 1 or "?" in firsts:
        raise RegistryError(
            f"{where}: --max-batch-size needs one batch dim shared by all bindings, "
            f"found {sorted(firsts)}"
        )
    sym = firsts.pop()
    lo, hi = variant.ranges.get(sym, (manifest.symbols[sym].min, manifest.symbols[sym].max))
    if lo > 1 or (hi is not None and hi < max_batch_size):
        raise RegistryError(
            f"{where}: the engines take {sym} in [{lo}, {hi}], which does not cover batches "
            f"1..{max_batch_size}"
        )
    return sym


def export_triton(
    pack: PathLike,
    repository: PathLike,
    *,
    name: str | None = None,
    backend: str | None = None,
    max_batch_size: int = 0,
    dynamic_batching: bool = False,
    max_queue_delay_us: int | None = None,
    instances: int | None = None,
    instance_kind: str | None = None,
    site_dirs: Sequence[PathLike] | None = None,
    overwrite: bool = False,
    entry_point: str | None = None,
) -> TritonModel:
    """Write ``repository/name`` for Triton, atomically: built in a temporary directory beside
    it and moved into place; an existing model directory is replaced only with ``overwrite``.

    ``backend``: ``"tensorrt"`` (the whole-graph engine as ``model.plan``) or ``"python"``
    (the pack itself, run by ``trtpack.load`` in Triton's Python backend); default: tensorrt
    when the pack has a whole-graph engine variant, else python.
    ``max_batch_size`` > 0: Triton batches along the first dim, which every input and output
    must share (a dynamic symbol covering 1..max_batch_size); 0: dims are the full shapes.
    ``dynamic_batching`` / ``max_queue_delay_us``: Triton's dynamic batcher (needs
    max_batch_size > 0). ``instances`` / ``instance_kind`` (KIND_AUTO, KIND_CPU, KIND_GPU):
    an ``instance_group``. ``site_dirs`` (python backend): folders the model's Python imports
    trtpack, torch and numpy from, recorded in model.py's ``SITE_DIRS`` (made absolute); the
    model reads them as site-packages (``.pth`` files too) and puts them first on
    ``sys.path``, because Triton's stub runs an isolated interpreter that ignores PYTHONPATH.
    Default (None): the folders this process imports them from (see ``environment_site_dirs``),
    so that a server on this machine, with a stub for this Python, loads the model as
    exported; MissingDependencyError where this environment lacks one of them. ``()``: none
    recorded (the server's ``TRTPACK_SITE_DIRS`` must name them).
    ``TRTPACK_SITE_DIRS`` in the server's environment comes before them.
    ``entry_point`` (a multi-entry pack, format 1.4; default: its default entry point): the
    one this model serves, one model per entry point (name default ``<pack>_<entry point>``).
    An entry point that shares state with another is refused: a Triton model cannot read
    what another model wrote.
    """
    pb2 = _model_config_pb2()
    from google.protobuf import text_format

    repo = Path(repository)
    with open_pack(pack) as (reader, info):
        where = str(info.path)
        whole = info.manifest
        entry = entry_point or whole.default_entry_point
        refuse_shared_state(whole, entry, where)
        if whole.entry_points or entry_point is not None:
            info = dataclasses.replace(info, manifest=whole.entry(entry))
        default_name = info.path.name.split(".")[0]
        name = name or (f"{default_name}_{entry}" if whole.entry_points else default_name)
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"{name!r} is not a usable Triton model name")
        target = repo / name
        if target.exists() and not overwrite:
            raise OutputExistsError(target)
        backend = backend or default_backend(info.manifest)
        if backend not in BACKENDS:
            raise RegistryError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if max_batch_size < 0:
            raise RegistryError(f"max_batch_size must be >= 0, not {max_batch_size}")
        plans: dict[str, str] = {}
        files: dict[str, str] = {}  # file name in 1/ -> member (tensorrt)
        code = ""  # model.py (python)
        if backend == "tensorrt":
            if site_dirs:
                raise RegistryError("site_dirs are for the python backend; TensorRT runs no Python")
            site_dirs = ()
            if instance_kind == "KIND_CPU":
                raise RegistryError("Triton's TensorRT backend runs on GPUs, not KIND_CPU")
            config = _tensorrt_config(pb2, info.manifest, name, max_batch_size, where, files, plans)
        else:
            if info.manifest.program is None:
                warnings.warn(
                    f"trtpack: {where} holds no ExportedProgram, so the Python model runs only "
                    "where one of its engine variants can run",
                    stacklevel=2,
                )
            config = _python_config(pb2, info.manifest, name, max_batch_size, where)
            if whole.entry_points:
                config.parameters[ENTRY_POINT_PARAMETER].string_value = entry
            if site_dirs is None:
                site_dirs = environment_site_dirs()
            code = model_code(site_dirs)
        _scheduling(pb2, config, max_batch_size, dynamic_batching, max_queue_delay_us,
                    instances, instance_kind)  # fmt: skip
        if backend == "tensorrt":
            _profiles(pb2, config, info.manifest)
        text = text_format.MessageToString(config)

        repo.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            (staging / "1").mkdir()
            (staging / "config.pbtxt").write_text(text)
            for fname, member in files.items():
                m = info.manifest.members[member]
                reader.verify(member, m)
                with open(staging / "1" / fname, "wb") as f:
                    f.write(reader.view(member))
            if backend == "python":
                for member, m in info.manifest.members.items():
                    reader.verify(member, m)  # a corrupt pack is not published
                shutil.copyfile(info.path, staging / "1" / PACK_FILE)
                (staging / "1" / "model.py").write_text(code)
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    dirs = tuple(str(Path(d).absolute()) for d in site_dirs or ())
    return TritonModel(target, text, plans, backend, dirs)


def _tensorrt_config(pb2, manifest: Manifest, name: str, max_batch_size: int, where: str,
                     files: dict[str, str], plans: dict[str, str]):  # fmt: skip
    variants = _qualifying(manifest, where)
    first = variants[0]
    (engine,) = first.engines
    for v in variants[1:]:
        other = v.engines[0]
        if [b.name for b in other.inputs] != [b.name for b in engine.inputs] or [
            b.name for b in other.outputs
        ] != [b.name for b in engine.outputs]:
            raise RegistryError(f"{where}: variants {first.name} and {v.name} bind differently")
    if any(v.target.flavor == "tensorrt_rtx" for v in variants):
        warnings.warn(
            "trtpack: these are TensorRT-RTX plans; Triton's tensorrt_plan backend runs "
            "standard TensorRT plans, so the server needs a TensorRT-RTX build to load them",
            stacklevel=3,
        )
    batch = _batch_symbol(first, manifest, max_batch_size, where) if max_batch_size else None

    config = pb2.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=max_batch_size)
    for b in engine.inputs:
        config.input.add(name=b.name, data_type=_dtype(pb2, b, where), dims=_dims(b, batch, where))
    for b in engine.outputs:
        config.output.add(name=b.name, data_type=_dtype(pb2, b, where), dims=_dims(b, batch, where))
    if len(variants) == 1 and len(first.target.compute_capabilities) <= 1:
        config.default_model_filename = "model.plan"
        files["model.plan"] = engine.member
        plans["default"] = "model.plan"
    else:
        for v in variants:
            fname = f"model_{v.name}.plan"
            files[fname] = v.engines[0].member
            for cc in v.target.compute_capabilities:
                if cc in plans:
                    continue  # the first variant listed for a GPU wins, as load() ranks them
                plans[cc] = fname
                config.cc_model_filenames[cc] = fname
        if not plans:
            raise RegistryError(f"{where}: the variants name no compute capability to map")
    return config


#: what the python-backend model imports (numpy: Triton's own triton_python_backend_utils)
MODEL_IMPORTS = ("trtpack", "torch", "numpy")


def environment_site_dirs() -> list[str]:
    """The folders this process imports trtpack, torch and numpy from (each package's parent,
    in that order, without repeats): what model.py needs on ``sys.path`` to run in Triton's
    stub as it runs here. Found without importing torch. Raises MissingDependencyError, naming
    ``site_dirs=`` / ``--site-dir``, where one of them is not installed here."""
    import importlib.util

    dirs: list[str] = []
    for module in MODEL_IMPORTS:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # ValueError: sys.modules holds None (import blocked)
            spec = None
        if spec is None or spec.origin is None:
            raise MissingDependencyError(
                f"the python-backend model imports {', '.join(MODEL_IMPORTS)}, and {module} is "
                "not installed in this environment, so there is no folder to record: name the "
                "site-packages folder of the server's Python that holds them with "
                "site_dirs=[...] (--site-dir DIR), or site_dirs=() (--no-site-dirs) and "
                "TRTPACK_SITE_DIRS in the server's environment"
            )
        home = str(Path(spec.origin).resolve().parent.parent)
        if home not in dirs:
            dirs.append(home)
    return dirs


def model_code(site_dirs: Sequence[PathLike] = ()) -> str:
    """``model.py``: triton_model.py, with ``site_dirs`` (made absolute) in its SITE_DIRS."""
    code = _MODEL_CODE.read_text()
    if code.count(SITE_DIRS_LINE) != 1:
        raise RegistryError(f"{_MODEL_CODE} lost its SITE_DIRS line; reinstall trtpack")
    dirs = [str(Path(d).absolute()) for d in site_dirs]  # TritonModel.site_dirs: the same
    return code.replace(
        SITE_DIRS_LINE, f"SITE_DIRS: list[str] = {dirs!r}  # export-triton --site-dir\n"
    )


def refuse_shared_state(manifest: Manifest, entry: str, where: str) -> None:
    """Refuse to serve an entry point that shares mutable state with another: each Triton
    model loads its own copy, so what prefill writes decode would never read. (Triton's
    sequence batcher keeps implicit state, but only for tensors a model takes and returns as
    inputs and outputs; these programs keep their cache inside.)"""
    if entry not in manifest.entry_point_names:
        raise RegistryError(
            f"{where} has no entry point {entry!r} (entry points: "
            f"{list(manifest.entry_point_names)})"
        )
    state = manifest.state
    use = state.entry_points.get(entry) if state else None
    if state is None or use is None:
        return
    others = {n: set(u.reads) & set(use.reads) for n, u in state.entry_points.items()
              if n != entry}  # fmt: skip
    shared = sorted({t for ts in others.values() for t in ts})
    if shared and (use.mutates or any(set(state.entry_points[n].mutates) & set(use.reads)
                                      for n in others)):  # fmt: skip
        with_whom = sorted(n for n, ts in others.items() if ts)
        raise RegistryError(
            f"{where}: entry point {entry!r} shares state that is written in place with "
            f"{', '.join(with_whom)} ({len(shared)} tensor(s), e.g. {shared[0]}); a Triton "
            "model cannot read what another model wrote, and sequence batching's implicit "
            "state needs the state as the model's own inputs and outputs, which this program "
            "keeps inside. Serve it with trtpack.load or MLflow (params={'entry_point': ...})"
        )


def _python_config(pb2, manifest: Manifest, name: str, max_batch_size: int, where: str):
    iface = python_interface(manifest, max_batch_size, where)
    config = pb2.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for side, tensors in ((config.input, iface.inputs), (config.output, iface.outputs)):
        for t in tensors:
            entry = side.add(
                name=t.name, data_type=pb2.DataType.Value(_TYPES[t.dtype]), dims=t.dims
            )
            if t.reshape:
                entry.reshape.SetInParent()  # shape: [] (the model sees [batch])
    config.parameters[PACK_PARAMETER].string_value = PACK_FILE
    return config


def _profiles(pb2, config, manifest: Manifest) -> None:
    """Engines with several optimization profiles: every instance group may use them all, and
    Triton picks the one that fits each request's shapes (with none listed, it uses profile 0
    only)."""
    count = max((len(b.profiles) for v in manifest.engines if v.whole_graph
                 for e in v.engines for b in e.inputs), default=0)  # fmt: skip
    if count < 2:
        return
    if not config.instance_group:
        config.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_GPU"))
    for group in config.instance_group:
        group.profile.extend(str(i) for i in range(count))


def _scheduling(pb2, config, max_batch_size: int, dynamic_batching: bool,
                max_queue_delay_us: int | None, instances: int | None,
                instance_kind: str | None) -> None:  # fmt: skip
    if dynamic_batching or max_queue_delay_us is not None:
        if not max_batch_size:
            raise RegistryError(
                "dynamic batching needs max_batch_size > 0 (Triton batches along the first dim)"
            )
        config.dynamic_batching.SetInParent()
        if max_queue_delay_us is not None:
            if max_queue_delay_us < 0:
                raise RegistryError(f"max_queue_delay_us must be >= 0, not {max_queue_delay_us}")
            config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if instances is not None or instance_kind is not None:
        if instances is not None and instances < 1:
            raise RegistryError(f"instances must be >= 1, not {instances}")
        kind = instance_kind or "KIND_AUTO"
        if kind not in INSTANCE_KINDS:
            raise RegistryError(
                f"instance_kind must be one of {', '.join(INSTANCE_KINDS)}, not {kind!r}"
            )
        config.instance_group.add(
            count=instances or 1, kind=pb2.ModelInstanceGroup.Kind.Value(kind)
        )


def _dtype(pb2, binding: Binding, where: str) -> int:
    name = _TYPES.get(binding.dtype)
    if name is None:
        raise RegistryError(
            f"{where}: Triton has no data type for {binding.name!r} ({binding.dtype})"
        )
    return pb2.DataType.Value(name)


def _move_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
