"""trtpack: one self-describing file for an ExportedProgram and its TensorRT engines.

    trt_gm = trtpack.compile(ep)               # torch_tensorrt, inputs derived from ep
    trtpack.save(trt_gm, "model.trtpack")      # the input manifest is derived from ep
    pack = trtpack.load("model.trtpack")       # engines where they run, else the program
    y = pack(x, mask=m)                        # checked against the manifest first
    trtpack.inspect("model.trtpack")           # manifest + digest; never imports torch
    trtpack.build("model.trtpack", ("8.6", "8.9"))  # + a TensorRT-RTX engine, built on a CPU

Importing trtpack does not import torch: ``save``, ``load``, ``compile``, ``add_engine`` and
``build`` import it when first used, so ``inspect``/``verify`` and the CLI stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__
from .errors import *  # noqa: F403  (the error classes: errors.__all__ is their one list)
from .format.manifest import FORMAT_VERSION, Manifest

if TYPE_CHECKING:
    from .checks.audit import AuditReport, audit
    from .checks.preflight import TargetReport, preflight
    from .engines.torchtrt import compile
    from .integrations.kserve import request_contract
    from .integrations.oci import pull, push
    from .integrations.triton import export_triton
    from .migrations.legacy import migrate
    from .program.derive import Range
    from .reading import PackInfo, inspect
    from .runtime import LoadedPack, load
    from .signing import sign, verify
    from .writing.add import add_engine
    from .writing.build import build
    from .writing.remove import engine_variants, remove_engine
    from .writing.save import save

# name -> module that defines it; imported on first access (save, load, compile, add_engine
# and migrate import torch)
_LAZY = {
    "save": "writing.save",
    "load": "runtime",
    "LoadedPack": "runtime",
    "Range": "program.derive",
    "compile": "engines.torchtrt",
    "add_engine": "writing.add",
    "build": "writing.build",
    "migrate": "migrations.legacy",
    # torch-free, but imported on first use too, so that ``import trtpack.format`` loads nothing
    # above the format package
    "PackInfo": "reading",
    "inspect": "reading",
    "verify": "signing",
    "sign": "signing",
    "audit": "checks.audit",
    "AuditReport": "checks.audit",
    "preflight": "checks.preflight",
    "TargetReport": "checks.preflight",
    "request_contract": "integrations.kserve",
    "engine_variants": "writing.remove",
    "remove_engine": "writing.remove",
    # integrations: push/pull need trtpack[oci], export_triton trtpack[triton] (when called)
    "export_triton": "integrations.triton",
    "push": "integrations.oci",
    "pull": "integrations.oci",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trtpack' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as e:
        from .errors import missing_dependency

        missing = missing_dependency(e, f"trtpack.{name}")
        if missing is None:
            raise
        raise missing from e
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "FORMAT_VERSION",
    "Manifest",
    "PackInfo",
    "LoadedPack",
    "Range",
    "save",
    "load",
    "compile",
    "add_engine",
    "build",
    "migrate",
    "inspect",
    "verify",
    "sign",
    "audit",
    "AuditReport",
    "preflight",
    "TargetReport",
    "request_contract",
    "engine_variants",
    "remove_engine",
    "export_triton",
    "push",
    "pull",
]
__all__ += errors.__all__
