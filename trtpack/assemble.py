"""Members and their digests -> a manifest -> a pack on disk. No torch.

Used by every writer: ``save`` (a program or compiled module), ``add_engine``, ``migrate``.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Mapping

from ._version import __version__
from .container import MemberDigest, PathLike, Source, write_pack
from .errors import TrtpackError
from .info import PackInfo, inspect
from .manifest import FORMAT_VERSION, Interface, Manifest, Member, Producer, ProgramRef, Variant


def producer(*, with_engines: bool = False) -> Producer:
    """The versions that wrote a pack. torch_tensorrt and TensorRT are recorded only for a
    pack with engines (they made them); a program-only pack does not depend on them, and
    recording them would make its bytes depend on what else the process had imported."""
    tt = sys.modules.get("torch_tensorrt") if with_engines else None
    trt = (sys.modules.get("tensorrt") or sys.modules.get("tensorrt_rtx")) if with_engines else None
    return Producer(
        trtpack=__version__,
        python=platform.python_version(),
        torch=getattr(sys.modules.get("torch"), "__version__", None),
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
    made_by: Producer | None = None,
) -> Manifest:
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TrtpackError(f"metadata must map str to str; {k!r}: {v!r} is {type(v).__name__}")
    return Manifest(
        format_version=FORMAT_VERSION,
        producer=made_by or producer(with_engines=bool(engines)),
        inputs=iface.inputs,
        outputs=iface.outputs,
        symbols=iface.symbols,
        input_tree=iface.input_tree,
        output_tree=iface.output_tree,
        members={name: Member(d.sha256, d.size) for name, d in sorted(members.items())},
        program=program,
        engines=engines,
        metadata=meta,
        guards=iface.guards,
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
