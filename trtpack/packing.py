"""``save``: an ExportedProgram (or a compiled module) -> a .trtpack file.

The steps, in order: derive the interface from the program, serialize the program into
members, hash every member, build and validate the manifest, write the zip atomically.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.export import ExportedProgram

from ._version import __version__
from .container import MemberDigest, PathLike, Source, write_pack
from .derive import Interface, RangeLike, derive_interface
from .errors import TrtpackError
from .info import PackInfo, inspect
from .manifest import FORMAT_VERSION, Manifest, Member, Producer, ProgramRef, Variant
from .program import program_members


def producer(*, with_engines: bool = False) -> Producer:
    """The versions that wrote a pack. torch_tensorrt and TensorRT are recorded only for a
    pack with engines (they made them); a program-only pack does not depend on them, and
    recording them would make its bytes depend on what else the process had imported."""
    tt = sys.modules.get("torch_tensorrt") if with_engines else None
    trt = (sys.modules.get("tensorrt") or sys.modules.get("tensorrt_rtx")) if with_engines else None
    return Producer(
        trtpack=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        torch_tensorrt=getattr(tt, "__version__", None),
        tensorrt=getattr(trt, "__version__", None),
    )


def build_manifest(
    iface: Interface,
    members: Mapping[str, MemberDigest],
    *,
    program: ProgramRef | None,
    engines: tuple[Variant, ...] = (),
    metadata: Mapping[str, str] | None = None,
) -> Manifest:
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TrtpackError(f"metadata must map str to str; {k!r}: {v!r} is {type(v).__name__}")
    return Manifest(
        format_version=FORMAT_VERSION,
        producer=producer(with_engines=bool(engines)),
        inputs=iface.inputs,
        outputs=iface.outputs,
        symbols=iface.symbols,
        input_tree=iface.input_tree,
        output_tree=iface.output_tree,
        members={name: Member(d.sha256, d.size) for name, d in sorted(members.items())},
        program=program,
        engines=engines,
        metadata=meta,
    )


def write(
    path: PathLike,
    members: Mapping[str, Source],
    make_manifest: Callable[[Mapping[str, MemberDigest]], Manifest],
    *,
    overwrite: bool = True,
) -> PackInfo:
    """Write members and the manifest built from their digests; return what was written."""
    write_pack(path, members, lambda d: make_manifest(d).to_json(), overwrite=overwrite)
    return inspect(path)


def save(
    obj: Any,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    ranges: Mapping[str, RangeLike] | None = None,
    overwrite: bool = True,
    variant: str | None = None,
    source: ExportedProgram | None = None,
) -> PackInfo:
    """Save a model as a .trtpack file. No input description is needed: it is derived.

    ``obj`` is a ``torch.export`` ExportedProgram, a module from ``trtpack.compile`` (its
    engines become a variant, its source program the portable fallback), a module from
    ``torch_tensorrt.dynamo.compile`` (pass ``source=`` the ExportedProgram it was compiled
    from, for the fallback), or a torch_tensorrt ExportedProgram with embedded engines.

    ``ranges`` narrows a symbol's range or sets its opt (``{"batch": (1, 32, 8)}``); widening
    is refused. ``metadata`` is a free-form str -> str map. ``variant`` names the engine set.
    """
    if isinstance(obj, ExportedProgram) and not _has_engines(obj):
        if source is not None or variant is not None:
            raise TrtpackError("source= and variant= apply to compiled modules, not to a program")
        return _save_program(obj, path, metadata=metadata, ranges=ranges, overwrite=overwrite)
    if not isinstance(obj, (ExportedProgram, torch.nn.Module)):
        raise TrtpackError(
            f"cannot save a {type(obj).__name__}: trtpack.save takes a torch.export."
            "ExportedProgram or a compiled module"
        )
    from .engines.saving import save_compiled

    return save_compiled(obj, path, metadata=metadata, ranges=ranges, overwrite=overwrite,
                         variant=variant, source=source)  # fmt: skip


def _has_engines(ep: ExportedProgram) -> bool:
    return any(not isinstance(v, torch.Tensor) for v in ep.constants.values()) and any(
        "tensorrt" in type(v).__module__.lower() or "Engine" in type(v).__name__
        or (isinstance(v, torch._C.ScriptObject) and "tensorrt" in str(v._type()).lower())
        for v in ep.constants.values()
    )  # fmt: skip


def _save_program(
    ep: ExportedProgram,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None,
    ranges: Mapping[str, RangeLike] | None,
    overwrite: bool,
) -> PackInfo:
    iface = derive_interface(ep, ranges=ranges)
    members, ref = program_members(ep)
    return write(
        path,
        members,
        lambda digests: build_manifest(iface, digests, program=ref, metadata=metadata),
        overwrite=overwrite,
    )
