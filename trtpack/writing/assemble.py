"""The one pack writer: the pieces of a pack -> its manifest -> the zip. No torch.

Every writer builds a :class:`PackParts` and hands it here — ``save`` (a program, plus
variants from a compiled module), ``add_engine`` (a pack's parts plus new variants) and
``migrate`` (a legacy file's parts) — so a pack is assembled in one place. The zip itself is
written by ``format/container.py``.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .._version import __version__
from ..errors import EngineError, TrtpackError
from ..format.container import (
    DIGEST_CHUNK,
    MemberDigest,
    PathLike,
    Source,
    write_pack,
)
from ..format.manifest import (
    FORMAT_VERSION,
    EntryPoint,
    Interface,
    Manifest,
    Member,
    MemberChunks,
    Producer,
    ProgramRef,
    Samples,
    State,
    Variant,
)
from ..reading import PackInfo, inspect


@dataclass
class PackParts:
    """Everything a pack holds, before it is written: the interface, the member bytes (or
    where to copy them from), the program and engine variants that reference them.
    ``producer`` None: this process wrote it. ``kind`` and ``notes`` describe a migrated
    artifact (what it was, what changed)."""

    interface: Interface
    members: dict[str, Source]
    program: ProgramRef | None
    engines: tuple[Variant, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    producer: Producer | None = None
    kind: str = "trtpack pack"
    notes: list[str] = field(default_factory=list)
    samples: Samples | None = None
    #: format 1.4: the default entry point's name, the other entry points, the shared state
    entry_point: str | None = None
    entry_points: dict[str, EntryPoint] | None = None
    state: State | None = None

    def with_variants(
        self, variants: Sequence[Variant], members: Mapping[str, Source], *, where: str
    ) -> PackParts:
        """These parts with more engine variants (their names and members must be new)."""
        taken = {v.name for v in self.engines}
        for v in variants:
            if v.name in taken:
                raise EngineError(
                    f"{where} already has an engine variant named {v.name!r}; pick another "
                    "name with variant=... (--variant)"
                )
            taken.add(v.name)
        clash = sorted(set(members) & set(self.members))
        if clash:
            raise EngineError(f"members {clash} already exist in {where}")
        return dataclasses.replace(
            self, engines=self.engines + tuple(variants), members={**self.members, **members}
        )

    def manifest(self, digests: Mapping[str, MemberDigest]) -> Manifest:
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TrtpackError(
                    f"metadata must map str to str; {k!r}: {v!r} is {type(v).__name__}"
                )
        return Manifest(
            format_version=FORMAT_VERSION,
            producer=self.producer or producer(with_engines=bool(self.engines)),
            interface=self.interface,
            members={name: _member(d) for name, d in sorted(digests.items())},
            program=self.program,
            engines=self.engines,
            metadata=dict(self.metadata),
            samples=self.samples,
            entry_point=self.entry_point,
            entry_points=self.entry_points,
            state=self.state,
        )


def _member(d: MemberDigest) -> Member:
    chunks = None if d.chunks is None else MemberChunks(DIGEST_CHUNK, d.chunks)
    return Member(d.sha256, d.size, chunks)


def write(parts: PackParts, path: PathLike, *, overwrite: bool = True) -> PackInfo:
    """Write ``parts`` as a pack at ``path``, atomically; return what was written."""
    write_pack(path, parts.members, lambda d: parts.manifest(d).to_json(), overwrite=overwrite)
    return inspect(path)


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
