"""``save``: an ExportedProgram (or a compiled module) -> a .trtpack file.

The steps, in order: derive the interface from the program, serialize the program into
members, hash every member, build and validate the manifest, write the zip atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.export import ExportedProgram

from .assemble import build_manifest, write
from .container import PathLike
from .derive import RangeLike, derive_interface
from .errors import TrtpackError
from .info import PackInfo
from .program import program_members


def save(
    obj: Any,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    ranges: Mapping[str, RangeLike] | None = None,
    overwrite: bool = True,
    variant: str | None = None,
    source: ExportedProgram | None = None,
    output_names: Sequence[str] | Mapping[str, str] | None = None,
) -> PackInfo:
    """Save a model as a .trtpack file. No input description is needed: it is derived.

    ``obj`` is a ``torch.export`` ExportedProgram, a module from ``trtpack.compile`` (its
    engines become a variant, its source program the portable fallback), a module from
    ``torch_tensorrt.dynamo.compile`` (pass ``source=`` the ExportedProgram it was compiled
    from, for the fallback), or a torch_tensorrt ExportedProgram with embedded engines.

    ``ranges`` narrows a symbol's range or sets its opt (``{"batch": (1, 32, 8)}``); widening
    is refused. ``metadata`` is a free-form str -> str map. ``variant`` names the engine set.
    ``output_names`` renames outputs (a list in flat order, or ``{derived name or path: new}``);
    by default they are named by their pytree key path (``logits``, ``hidden_states.0``).
    """
    if isinstance(obj, ExportedProgram) and not _has_engines(obj):
        if source is not None or variant is not None:
            raise TrtpackError("source= and variant= apply to compiled modules, not to a program")
        return _save_program(obj, path, metadata=metadata, ranges=ranges, overwrite=overwrite,
                             output_names=output_names)  # fmt: skip
    if not isinstance(obj, (ExportedProgram, torch.nn.Module)):
        raise TrtpackError(
            f"cannot save a {type(obj).__name__}: trtpack.save takes a torch.export."
            "ExportedProgram or a compiled module"
        )
    from .engines.saving import save_compiled

    return save_compiled(obj, path, metadata=metadata, ranges=ranges, overwrite=overwrite,
                         variant=variant, source=source, output_names=output_names)  # fmt: skip


def _has_engines(ep: ExportedProgram) -> bool:
    if all(isinstance(v, torch.Tensor) for v in ep.constants.values()):
        return False
    from .engines.torchtrt import engine_constant_names  # imports no torch_tensorrt

    return bool(engine_constant_names(ep))


def _save_program(
    ep: ExportedProgram,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None,
    ranges: Mapping[str, RangeLike] | None,
    overwrite: bool,
    output_names: Sequence[str] | Mapping[str, str] | None = None,
) -> PackInfo:
    members, ref = program_members(ep)
    graph = members[ref.graph]
    assert isinstance(graph, bytes)
    iface = derive_interface(ep, ranges=ranges, graph=graph)  # from the bytes it stores
    if output_names is not None:
        iface = iface.with_output_names(output_names)
    return write(
        path,
        members,
        lambda digests: build_manifest(iface, digests, program=ref, metadata=metadata),
        overwrite=overwrite,
    )
