"""A pack as an MLflow model: logged, registered, served through ``mlflow.pyfunc``.

    info = trtpack.mlflow.log_model("model.trtpack", name="detector",
                                    registered_model_name="detector")
    mlflow.pyfunc.load_model("models:/detector/1").predict({"x": batch})
    pack = trtpack.mlflow.load_model("models:/detector/1")     # the LoadedPack itself

The ``.trtpack`` file is the model's one artifact. The MLflow signature is derived from the
manifest (``TensorSpec``, -1 for dynamic dims); what a signature cannot hold — each symbol's
min/opt/max, the pack's digest, the engine variants — goes in the model's metadata under
``trtpack``. ``predict`` runs through ``trtpack.load`` (engines where they can run, else the
ExportedProgram). The model is logged "from code" (``pyfunc_model.py``), so MLflow pickles
nothing of it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, RegistryError
from ..format.manifest import Manifest
from ..reading import PackInfo, inspect

#: MLflow cannot describe bfloat16: such inputs are given as float32 and cast by predict
_NUMPY = {"bfloat16": "float32"}
_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise MissingDependencyError(
            f"this needs MLflow ({e}); pip install 'trtpack[mlflow]'"
        ) from e
    return mlflow


def signature(manifest: Manifest) -> Any:
    """The MLflow signature of a pack's tensor inputs and outputs."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(io: Any, shape: list[int]) -> Any:
        return TensorSpec(np.dtype(_NUMPY.get(io.dtype, io.dtype)), shape, io.name)

    def merged(ios: list[Any]) -> list[Any]:
        # entry points (format 1.4) that name one input alike: a dim they disagree on is -1
        shapes: dict[str, list[int]] = {}
        first: dict[str, Any] = {}
        for io in ios:
            shape = [d if isinstance(d, int) else -1 for d in io.shape or ()]
            if io.name not in first:
                first[io.name], shapes[io.name] = io, shape
            elif len(shape) == len(shapes[io.name]):
                shapes[io.name] = [a if a == b else -1 for a, b in zip(shapes[io.name], shape)]
        return [spec(first[n], shapes[n]) for n in first]

    entries = [manifest.entry(n) for n in manifest.entry_point_names]
    inputs = merged([i for m in entries for i in m.inputs if i.is_tensor])
    outputs = merged([o for m in entries for o in m.outputs
                      if o.is_tensor and "?" not in (o.shape or ())])  # fmt: skip
    extra: dict[str, Any] = {}
    if manifest.entry_points:  # predict(..., params={"entry_point": "decode"})
        from mlflow.types.schema import ParamSchema, ParamSpec

        default = manifest.default_entry_point
        extra["params"] = ParamSchema([ParamSpec("entry_point", "string", default)])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs) if outputs else None,
                          **extra)  # fmt: skip


def model_metadata(info: PackInfo) -> dict[str, Any]:
    """What an MLflow signature cannot say: ranges, opt, digest, variants."""
    m = info.manifest
    inputs = []
    for i in m.inputs:
        entry: dict[str, Any] = {"name": i.name, "path": i.path, "kind": i.kind}
        if i.is_tensor:
            entry.update(dtype=i.dtype, shape=list(i.shape or ()))
        else:
            entry["value"] = i.value
        inputs.append(entry)
    symbols = {n: {"min": s.min, "max": s.max, "opt": s.opt} for n, s in m.symbols.items()}
    return {
        "trtpack": {
            "digest": info.digest,
            "format_version": list(m.format_version),
            "inputs": inputs,
            "symbols": symbols,
            "engines": [v.name for v in m.engines],
            "entry_points": list(m.entry_point_names),
            "metadata": dict(m.metadata),
        }
    }


def log_model(
    pack_or_path: Any,
    name: str,
    registered_model_name: str | None = None,
    *,
    pip_requirements: list[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Log a .trtpack (a path, or a LoadedPack) as a pyfunc model, registered under
    ``registered_model_name`` if given. Other keyword arguments go to
    ``mlflow.pyfunc.log_model``. Returns MLflow's ModelInfo."""
    mlflow = _mlflow()
    path = Path(getattr(getattr(pack_or_path, "info", None), "path", pack_or_path))
    info = inspect(path)
    if pip_requirements is None:
        pip_requirements = requirements(info.manifest)
    with tempfile.TemporaryDirectory() as staging:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(_MODEL_CODE),
            artifacts={"pack": str(path)},
            signature=signature(info.manifest),
            metadata=model_metadata(info),
            registered_model_name=registered_model_name,
            code_paths=[str(_staged_package(Path(staging)))],  # trtpack travels with it
            pip_requirements=pip_requirements,
            **kwargs,
        )


def _staged_package(folder: Path) -> Path:
    """A copy of the trtpack package that works from MLflow's ``artifacts/code``: with the
    manifest schema inside it (an installed wheel has ``trtpack/_schema``; a source checkout
    keeps the schema in ``schema/`` beside the package, which MLflow would not copy)."""
    from ..format.manifest import schema_path

    package = Path(__file__).resolve().parent.parent
    staged = folder / "trtpack"
    shutil.copytree(package, staged, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    schema = schema_path()
    (staged / "_schema").mkdir(exist_ok=True)
    shutil.copy(schema, staged / "_schema" / schema.name)
    return staged


#: TensorRT-RTX minor -> the torch-tensorrt-rtx release series built for it, which is also the
#: torch series that release requires (PyPI metadata: torch-tensorrt-rtx 2.14.0 requires
#: tensorrt_rtx>=1.6.1.120,<1.7 and torch>=2.14,<2.15; 2.13.0: tensorrt_rtx>=1.5.0.114,<1.6 and
#: torch 2.13; 2.12.1: tensorrt_rtx>=1.4.0.76,<1.5 and torch 2.12; 2.11.0: tensorrt_rtx>=1.3)
RTX_SERIES = {"1.3": "2.11", "1.4": "2.12", "1.5": "2.13", "1.6": "2.14"}


def _public(version: str) -> str:
    """A version without its local label (``2.13.0+cpu`` -> ``2.13.0``): PyPI has no local
    versions, and ``==2.13.0`` still matches a local ``2.13.0+cpu`` wheel."""
    return version.split("+", 1)[0]


def _minor(version: str) -> str:
    return ".".join(_public(version).split(".")[:2])


def requirements(manifest: Manifest) -> list[str]:
    """What serving the pack needs, as requirements pip can install together: torch (the
    program) and numpy at this environment's versions; for TensorRT-RTX engine variants, the
    engines' ``tensorrt-rtx`` exactly, the ``torch-tensorrt-rtx`` series built for that
    TensorRT-RTX (``RTX_SERIES``) and torch in the series it requires (a program loads across
    torch versions, an engine only with its TensorRT); for standard TensorRT variants,
    ``torch-tensorrt`` at the version that compiled them and torch in its series."""
    import importlib.metadata as md
    import warnings

    def installed(dist: str) -> str | None:
        try:
            return _public(md.version(dist))
        except md.PackageNotFoundError:
            return None

    torch_req = f"torch=={v}" if (v := installed("torch")) else "torch"
    out: list[str] = []
    made = manifest.producer
    rtx = sorted((v.target.trt_version for v in manifest.engines
                  if v.target.flavor == "tensorrt_rtx"),
                 key=lambda s: tuple(int(p) for p in s.split(".") if p.isdigit()))  # fmt: skip
    trt = [v.target.trt_version for v in manifest.engines if v.target.flavor == "tensorrt"]
    if rtx:
        # one tensorrt-rtx per environment: the newest variant's (older ones cannot run beside it)
        version = rtx[-1]
        series = RTX_SERIES.get(_minor(version))
        if series is None:  # a release this table does not know: let pip choose, unpinned
            warnings.warn(
                f"trtpack: no torch-tensorrt-rtx release known for TensorRT-RTX {version}; "
                "torch and torch-tensorrt-rtx are left unpinned",
                stacklevel=2,
            )
            torch_req, tt_req = "torch", "torch-tensorrt-rtx"
        else:
            tt = made.torch_tensorrt
            tt_req = (f"torch-tensorrt-rtx=={_public(tt)}" if tt and _minor(tt) == series
                      else f"torch-tensorrt-rtx=={series}.*")  # fmt: skip
            torch_req = f"torch=={series}.*"
        out += [tt_req, f"tensorrt-rtx=={version}"]
    elif trt:
        tt = made.torch_tensorrt
        if tt:
            out.append(f"torch-tensorrt=={_public(tt)}")
            torch_req = f"torch=={_minor(tt)}.*"
        else:
            out.append("torch-tensorrt")
            torch_req = "torch"
        out.append(f"tensorrt=={trt[-1]}")
    numpy = installed("numpy")
    return [torch_req, f"numpy=={numpy}" if numpy else "numpy", *out]


def load_model(model_uri: str, **load_kwargs: Any) -> Any:
    """The LoadedPack of a trtpack model logged with ``log_model`` (full manifest, engines
    where they can run). ``load_kwargs`` go to ``trtpack.load``."""
    mlflow = _mlflow()
    from ..runtime import load

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as e:
        raise RegistryError(f"cannot fetch {model_uri} from MLflow: {type(e).__name__}: {e}") from e
    packs = sorted(local.glob("artifacts/*.trtpack")) or sorted(local.glob("**/*.trtpack"))
    mlmodel = local / "MLmodel"
    if not packs or not mlmodel.is_file() or "trtpack:" not in mlmodel.read_text():
        raise RegistryError(
            f"{model_uri} is not a trtpack model (no .trtpack artifact and no trtpack metadata "
            "in its MLmodel); log it with trtpack.mlflow.log_model"
        )
    return load(packs[0], **load_kwargs)
