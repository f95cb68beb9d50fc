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


def producer() -> Producer:
    """The versions recorded in every pack this process writes."""
    tt = sys.modules.get("torch_tensorrt")
    trt = sys.modules.get("tensorrt") or sys.modules.get("tensorrt_rtx")
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
        producer=producer(),
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
) -> PackInfo:
    """Save an ExportedProgram, or a module from ``trtpack.compile``, as a .trtpack file.

    No input description is needed: it is derived from the program. ``ranges`` narrows a
    symbol's range or sets its opt (``{"batch": (1, 32, 8)}``); widening is refused.
    ``metadata`` is a free-form str -> str map stored in the manifest.
    """
    if isinstance(obj, ExportedProgram):
        return _save_program(obj, path, metadata=metadata, ranges=ranges, overwrite=overwrite)
    raise TrtpackError(
        f"cannot save a {type(obj).__name__}: trtpack.save takes a torch.export.ExportedProgram"
    )


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
