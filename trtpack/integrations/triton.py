"""A pack's engines as a Triton model repository (TensorRT backend). No torch.

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.plan                    one target, or
    REPO/NAME/1/model_sm80.plan ...           one plan per compute capability, picked by
                                              Triton through cc_model_filenames

The config is built as Triton's own ``ModelConfig`` protobuf (from the ``tritonclient``
package) and printed in its text format, so a field Triton does not know cannot be written.
Input and output names are the engine's binding names. Only a model that is one whole-graph
engine qualifies: Triton's TensorRT backend runs a plan, not PyTorch-fallback subgraphs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependencyError, OutputExistsError, RegistryError
from ..format.container import PathLike
from ..format.manifest import Binding, Manifest, Variant, parse_dim
from ..info import open_pack

_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int16": "TYPE_INT16",
    "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
}  # fmt: skip


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
    plans: dict[str, str]  # compute capability (or "default") -> file name


def _qualifying(manifest: Manifest, where: str) -> list[Variant]:
    if not manifest.engines:
        raise RegistryError(
            f"{where} holds no TensorRT engine; Triton's TensorRT backend serves engines. "
            "Compile the model (trtpack.compile) or add one (trtpack add-engine)"
        )
    whole = [v for v in manifest.engines if v.whole_graph]
    if not whole:
        names = ", ".join(f"{v.name} ({len(v.engines)} engines)" for v in manifest.engines)
        raise RegistryError(
            f"{where} has no whole-graph engine ({names}): its variants need PyTorch-fallback "
            "subgraphs or several engines, which Triton's TensorRT backend cannot run. "
            "Compile without torch_executed_ops so that one engine covers the whole graph"
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
    max_batch_size: int = 0,
    overwrite: bool = False,
) -> TritonModel:
    """Write ``repository/name`` for Triton's TensorRT backend, atomically: built in a temporary
    directory beside it and moved into place; an existing model directory is replaced only
    with ``overwrite``."""
    pb2 = _model_config_pb2()
    from google.protobuf import text_format

    repo = Path(repository)
    with open_pack(pack) as (reader, info):
        where = str(info.path)
        name = name or info.path.name.split(".")[0]
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"{name!r} is not a usable Triton model name")
        target = repo / name
        if target.exists() and not overwrite:
            raise OutputExistsError(target)
        variants = _qualifying(info.manifest, where)
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
                stacklevel=2,
            )
        batch = (
            _batch_symbol(first, info.manifest, max_batch_size, where) if max_batch_size else None
        )

        config = pb2.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=max_batch_size)
        for b in engine.inputs:
            config.input.add(
                name=b.name, data_type=_dtype(pb2, b, where), dims=_dims(b, batch, where)
            )
        for b in engine.outputs:
            config.output.add(
                name=b.name, data_type=_dtype(pb2, b, where), dims=_dims(b, batch, where)
            )
        plans: dict[str, str] = {}
        files: dict[str, str] = {}  # file name -> member
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
        text = text_format.MessageToString(config)

        repo.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
        try:
            (staging / "1").mkdir()
            (staging / "config.pbtxt").write_text(text)
            for fname, member in files.items():
                m = info.manifest.members[member]
                reader.verify(member, m.sha256, m.size)
                with open(staging / "1" / fname, "wb") as f:
                    f.write(reader.view(member))
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return TritonModel(target, text, plans)


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
