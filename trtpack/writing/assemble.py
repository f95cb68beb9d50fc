"""The one pack writer: the pieces of a pack -> its manifest -> the zip. No torch.

Every writer builds a :class:`PackParts` and hands it here — ``save`` (a program, plus
variants from a compiled module), ``add_engine`` (a pack's parts plus new variants) and
``migrate`` (a legacy file's parts) — so a pack is assembled in one place. The zip itself is
written by ``format/container.py``.
"""

from __future__ import annotations

import dataclasses
import platform
import struct
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
    read_head,
    source_size,
    write_pack,
)
from ..format.manifest import (
    DEFAULT_ENTRY_POINT,
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
from ..format.progress import Progress, human_size
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
    #: graph members that already passed :func:`check_loadable`'s graph check (``describe``
    #: runs it as it parses the graph): member name -> the very bytes object checked. That
    #: object is not checked again (bytes do not change); any other graph is.
    checked: dict[str, Source] = field(default_factory=dict)

    def with_variants(
        self,
        variants: Sequence[Variant],
        members: Mapping[str, Source],
        *,
        where: str,
        entry_point: str | None = None,
    ) -> PackParts:
        """These parts with more engine variants (their names and members must be new), of
        the default entry point, or of ``entry_point`` (format 1.4: another one's)."""
        other = None
        if entry_point is not None and entry_point != (self.entry_point or DEFAULT_ENTRY_POINT):
            other = (self.entry_points or {}).get(entry_point)
            if other is None:
                raise EngineError(
                    f"{where} has no entry point {entry_point!r}", field="entry_point",
                    got=entry_point,
                )  # fmt: skip
        taken = {v.name for v in (self.engines if other is None else other.engines)}
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
        if other is not None:
            assert entry_point is not None and self.entry_points is not None
            entry = dataclasses.replace(other, engines=other.engines + tuple(variants))
            return dataclasses.replace(
                self, entry_points={**self.entry_points, entry_point: entry},
                members={**self.members, **members},
            )  # fmt: skip
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


def write(parts: PackParts, path: PathLike, *, overwrite: bool = True,
          progress: Progress | None = None) -> PackInfo:  # fmt: skip
    """Write ``parts`` as a pack at ``path``, atomically; return what was written. Every
    check a reader runs on the manifest and the programs' members runs first
    (:func:`check_loadable`): what is written, loads. The bytes written are counted on
    ``progress``, which is closed with a summary once the pack is in place."""
    check_loadable(parts)

    def manifest(digests: Mapping[str, MemberDigest]) -> bytes:
        raw = parts.manifest(digests).to_json()  # the schema and the cross-field rules
        Manifest.from_json(raw)  # and the reader's own path: size and count limits
        return raw

    write_pack(path, parts.members, manifest, overwrite=overwrite, progress=progress)
    info = inspect(path)
    if progress is not None:
        progress.close(f"{path}  {human_size(info.file_size)} written")
    return info


def check_loadable(parts: PackParts) -> None:
    """The checks a reader runs on each program's members before torch sees them: graph
    safety (``graph_check``; custom operators pass, they are recorded and the loader gates
    them) and the weights' header and layout (``format/weights.py``). Raises their errors."""
    from ..format.weights import parse_layout, parse_safetensors
    from ..program.graph_check import check_graph

    refs = [parts.program, *(v.program for v in parts.engines)]
    for entry in (parts.entry_points or {}).values():  # format 1.4: every entry point's too
        refs += [entry.program, *(v.program for v in entry.engines)]
    for ref in refs:
        if ref is None:
            continue
        graph = parts.members[ref.graph]
        if parts.checked.get(ref.graph) is not graph or not isinstance(graph, bytes):
            check_graph(read_head(graph, source_size(graph)), ref.graph, allow_ops=("*",))
        weights = parts.members[ref.weights]
        (header_len,) = struct.unpack("<Q", read_head(weights, 8).ljust(8, b"\0"))
        head = read_head(weights, 8 + min(header_len, 100 << 20))
        stored, metadata = parse_safetensors(head, ref.weights, size=source_size(weights))
        parse_layout(metadata, stored, ref.weights)


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
