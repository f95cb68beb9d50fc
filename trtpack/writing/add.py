"""``add_engine``: an engine variant added to an existing pack. The pack's other members are
copied byte for byte (same SHA-256) and everything is written by the one writer
(``assemble.py``). A variant comes from another pack of the same model, a bare plan file, or
a compiled module; the facts of each go through ``engines/variants.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engines.variants import build_variant, facts_from_plan
from ..errors import ArgumentTypeError, EngineError, OutputExistsError
from ..format.atomic import pack_lock
from ..format.container import PackReader, PathLike, Source
from ..format.manifest import Manifest, Variant
from ..format.progress import Progress, ProgressArg
from ..reading import PackInfo, open_pack
from .assemble import PackParts, write
from .entry_points import moved, relocated


def add_engine(
    pack: PathLike,
    source: Any,
    *,
    variant: str | None = None,
    out: PathLike | None = None,
    version_compatible: str | None = None,
    overwrite: bool = False,
    progress: ProgressArg = None,
    entry_point: str | None = None,
) -> PackInfo:
    """Add an engine variant to ``pack`` (written atomically to ``out``, default: in place; an
    existing ``out`` other than ``pack`` is replaced only with ``overwrite=True``).
    ``entry_point``: a multi-entry pack's entry point the variant belongs to (default: the
    default one); an entry point that writes state in place is refused (see ``add_variants``).

    ``source`` is another .trtpack of the same model (its variants are taken), a bare plan
    file (a whole-graph engine whose bindings are the manifest's inputs and outputs), or a
    module from ``trtpack.compile``. The pack's other members are copied byte for byte.
    ``version_compatible`` (a bare TensorRT plan): ``"lean_embedded"`` or ``"lean_excluded"``,
    as the plan was built (its header does not say; an embedded lean runtime is host code).
    ``progress``: as for ``save`` (``trtpack.format.progress``).
    """

    def make(
        _reader: PackReader, m: Manifest, _whole: Manifest
    ) -> tuple[list[Variant], dict[str, Source]]:
        variants, members = _variants_from(source, m, variant)
        if version_compatible is not None:
            from ..engines.variants import declare_version_compatible

            if not all(v.described for v in variants):  # described: exactly the bare plans
                raise EngineError(f"version_compatible describes a bare plan; {source!r} is not "
                                  "one", field="version_compatible")  # fmt: skip
            where = str(source) if isinstance(source, (str, Path)) else "engine"
            variants = [declare_version_compatible(v, version_compatible, where=where)
                        for v in variants]  # fmt: skip
        return variants, members

    return add_variants(pack, make, out=out, overwrite=overwrite, entry_point=entry_point,
                        progress=Progress("add-engine", progress))  # fmt: skip


#: (the pack's reader, the entry point's manifest, the whole manifest) -> the new variants
#: and their members
MakeVariants = Callable[[PackReader, Manifest, Manifest], tuple[list[Variant], dict[str, Source]]]


def add_variants(
    pack: PathLike,
    make: MakeVariants,
    *,
    out: PathLike | None,
    overwrite: bool = False,
    progress: Progress | None = None,
    entry_point: str | None = None,
) -> PackInfo:
    """``pack`` with the variants ``make`` gives, written atomically to ``out`` (default: in
    place); the other members copied byte for byte. What ``add_engine`` and ``build`` share.
    An existing ``out`` that is not ``pack`` is replaced only with ``overwrite``.

    ``entry_point`` (format 1.4): the entry point the variants belong to (default: the default
    one). ``make`` gets that entry point's manifest; the variants of another entry point keep
    their members under ``entry_points/<name>/``. An entry point the manifest declares as
    writing state in place is refused: its state lives in tensors the other entry points'
    programs read, which an engine cannot share, so the loader would never run the engine."""
    target_path = Path(out) if out is not None else Path(pack)
    refuse_existing(pack, out, overwrite)
    # held from before the read until after the rename: a second add_engine waits, never
    # writes a pack built from the old content (which would drop the first one's variant)
    bar = progress or Progress("add-engine", False)
    with bar, pack_lock(target_path), open_pack(pack) as (reader, info):
        m = info.manifest
        name = m.default_entry_point if entry_point is None else entry_point
        entry = m.entry(name)  # an unknown name: ManifestError naming the entry points
        refused = m.state.engine_refusal(name) if m.state is not None else None
        if refused is not None:
            raise EngineError(
                f"{info.path}: {refused}, so the pack runs this entry point's ExportedProgram. "
                "Engines fit its stateless entry points only",
                field="entry_point", got=name,
            )  # fmt: skip
        # every entry point and the state carried over: an edit of one keeps the others
        parts = PackParts(m.interface, {n: reader.slice(n) for n in m.members}, m.program,
                          m.engines, dict(m.metadata), m.producer, samples=m.samples,
                          entry_point=m.entry_point, entry_points=m.entry_points,
                          state=m.state)  # fmt: skip
        new_variants, new_members = make(reader, entry, m)
        if name != m.default_entry_point:
            new_variants = [relocated(v, name, new_members)
                            for v in new_variants]  # fmt: skip
        parts = parts.with_variants(new_variants, new_members, where=str(info.path),
                                    entry_point=name)  # fmt: skip
        # written while the source is open; members are copied from it as they are written
        return write(parts, target_path, overwrite=True, progress=bar)


def refuse_existing(pack: PathLike, out: PathLike | None, overwrite: bool) -> None:
    """The writers' rule for an edit written elsewhere: ``out`` may not replace another file
    unless ``overwrite``; editing ``pack`` itself (``out`` None or ``pack``) is what the edit
    is for."""
    if out is None or overwrite or not Path(out).exists():
        return
    if Path(out).resolve() == Path(pack).resolve():
        return
    raise OutputExistsError(out)


def _variants_from(
    source: Any, manifest: Manifest, name: str | None
) -> tuple[list[Variant], dict[str, Source]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            return _variants_from_pack(path, manifest, name)
        v, m = _plan_variant(path.read_bytes(), manifest, name, where=str(path))
        return [v], m
    if isinstance(source, (bytes, bytearray, memoryview)):
        v, m = _plan_variant(bytes(source), manifest, name, where="engine")
        return [v], m
    compiled = getattr(source, "_trtpack", None)
    if compiled is None:
        raise ArgumentTypeError(
            "source",
            "a .trtpack or .plan path, plan bytes, or a module from trtpack.compile",
            source,
        )
    iface = compiled.interface
    if iface.inputs != manifest.inputs or iface.outputs != manifest.outputs:
        raise EngineError("the compiled module's inputs/outputs differ from the pack's manifest")
    from .save import variant_of_compiled

    # profiles from the compiled module's symbols: the ranges its engines were built for
    v, m = variant_of_compiled(
        source, dataclasses.replace(manifest.interface, symbols=iface.symbols), name
    )
    return [v], m


def _plan_variant(
    plan: bytes, manifest: Manifest, name: str | None, *, where: str
) -> tuple[Variant, dict[str, Source]]:
    """A bare plan for this pack: its inputs must be the pack's tensor inputs, by name (what can
    be checked without a GPU: the names occur in the plan); its outputs take the pack's output
    names, or ``output<i>``, whichever the plan holds. The variant is marked ``described``:
    a GPU runtime confirms the bindings when it loads the engine."""
    from ..engines.plan import check_described_names, missing_names, parse_plan

    parse_plan(plan, where=where)  # the header first: not a plan, truncated, unknown version
    tensor_inputs = [i.name for i in manifest.inputs if i.is_tensor]
    check_described_names(plan, tensor_inputs, [], where=where)
    names = [o.name for o in manifest.outputs]
    generic = [f"output{i}" for i in range(len(names))]
    output_names = next((c for c in (names, generic) if not missing_names(plan, c)), None)
    if output_names is None:
        raise EngineError(
            f"{where}: the plan holds neither the pack's output names {names} nor {generic}; "
            "pack it with a description of its outputs (trtpack pack --output-spec)",
            member=where, expected=names, got=missing_names(plan, names),
        )  # fmt: skip
    facts = facts_from_plan(plan, manifest.interface, where=where, output_names=output_names)
    v, members = build_variant([facts], manifest.interface, wiring=None, name=name)
    return dataclasses.replace(v, described=True), members


def _variants_from_pack(
    path: Path, manifest: Manifest, name: str | None
) -> tuple[list[Variant], dict[str, Source]]:
    with open_pack(path) as (reader, info):
        other = info.manifest
        if other.inputs != manifest.inputs or other.outputs != manifest.outputs:
            raise EngineError(
                f"{path} describes another model: its inputs/outputs differ from the pack's"
            )
        if not other.engines:
            raise EngineError(f"{path} holds no engine variant")
        if name is not None and len(other.engines) != 1:
            raise EngineError(f"{path} has {len(other.engines)} variants; a name fits only one")
        variants, members = [], {}
        for v in other.engines:
            names = [e.member for e in v.engines]
            if v.program is not None:
                names += [v.program.graph, v.program.weights]
            for n in names:
                member = other.members[n]
                reader.verify(n, member)
                members[n] = reader.slice(n)
            variants.append(v if name is None else _renamed(v, name, members))
        return variants, members


def _renamed(v: Variant, name: str, members: dict[str, Source]) -> Variant:
    """``v`` under another name: its members move to ``engines/<name>/``."""
    return moved(v, name, f"engines/{v.name}/", f"engines/{name}/", members)
