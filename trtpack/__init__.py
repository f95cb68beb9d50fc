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

from ._version import __version__
from .errors import (
    ArgumentTypeError,
    DeriveError,
    EngineError,
    InputMismatchError,
    IntegrityError,
    ManifestError,
    MigrationError,
    MissingDependencyError,
    MissingMemberError,
    NotAPackError,
    NoUsableEngineError,
    OutputExistsError,
    OutsideEngineProfile,
    PackLockedError,
    PackWriteError,
    ProgramError,
    RangeOverrideError,
    RegistryError,
    SampleMismatchError,
    SampleTooLargeError,
    SignatureError,
    TrtpackError,
    UnregisteredPytreeError,
    UnsafePackError,
    UnsignedPackError,
    UnsupportedVersionError,
)
from .format.manifest import FORMAT_VERSION, Manifest

if TYPE_CHECKING:
    from .adding import add_engine
    from .building import build
    from .derive import Range
    from .engines.torchtrt import compile
    from .info import PackInfo, inspect, verify
    from .migrations.legacy import migrate
    from .runtime import LoadedPack, load
    from .saving import save
    from .signing import sign

# name -> module that defines it; imported on first access (save, load, compile, add_engine
# and migrate import torch)
_LAZY = {
    "save": "saving",
    "load": "runtime",
    "LoadedPack": "runtime",
    "Range": "derive",
    "compile": "engines.torchtrt",
    "add_engine": "adding",
    "build": "building",
    "migrate": "migrations.legacy",
    # torch-free, but imported on first use too, so that ``import trtpack.format`` loads nothing
    # above the format package
    "PackInfo": "info",
    "inspect": "info",
    "verify": "info",
    "sign": "signing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trtpack' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "torch":
            raise
        raise MissingDependencyError(
            f"trtpack.{name} needs PyTorch, which is not installed: pip install 'trtpack[torch]' "
            "(inspect, verify, migrate, pack, add-engine, push and pull run without it)"
        ) from e
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
    # errors
    "TrtpackError",
    "ArgumentTypeError",
    "NotAPackError",
    "IntegrityError",
    "UnsafePackError",
    "MissingMemberError",
    "ManifestError",
    "UnsupportedVersionError",
    "DeriveError",
    "RangeOverrideError",
    "ProgramError",
    "UnregisteredPytreeError",
    "InputMismatchError",
    "OutsideEngineProfile",
    "EngineError",
    "NoUsableEngineError",
    "MissingDependencyError",
    "MigrationError",
    "RegistryError",
    "SampleMismatchError",
    "SampleTooLargeError",
    "OutputExistsError",
    "SignatureError",
    "UnsignedPackError",
    "PackLockedError",
    "PackWriteError",
]
