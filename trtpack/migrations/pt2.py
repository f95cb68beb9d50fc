"""torch.export's PT2 archive (``torch.export.save``, and ``torch_tensorrt.save`` with
``output_format="exported_program"``) -> pack members. No torch, no pickle.

The archive keeps the program as JSON and plain tensors as raw storage bytes with JSON
metadata, so it converts without unpickling anything: the graph JSON becomes the program
member as it is, the storages become the safetensors weights member (views kept). What is
pickled: sample inputs (not needed: the manifest takes opt from the size hints), tensor
subclasses (refused), and torch_tensorrt's engines, which go through a restricted unpickler
that reads the packed engine info and allows nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..engines.packed_info import PackedEngine, read_engine_pickle
from ..engines.variants import WiredProgram, variant_from_wired
from ..errors import MigrationError
from ..format.container import PackReader, Source
from ..format.limits import loads
from ..format.manifest import Producer, ProgramRef
from ..format.weights import DTYPES, RawTensor, layout_metadata, safetensors_source
from ..program.derive import SerializedProgram
from ..program.serde import SCALAR_TYPES
from ..writing.assemble import PackParts


def archive_root(reader: PackReader) -> str | None:
    """The folder a PT2 archive keeps its members in (``<name>/``), or None if not one."""
    for name in reader.members:
        if name.endswith("archive_format") and name.count("/") <= 1:
            root = name[: -len("archive_format")]
            if reader.read(name).strip() == b"pt2":
                return root
    return None


def _models(reader: PackReader, root: str) -> list[str]:
    return sorted(
        n for n in reader.members if n.startswith(f"{root}models/") and n.endswith(".json")
    )


def model_json(reader: PackReader, root: str) -> tuple[str, dict[str, Any]]:
    models = _models(reader, root)
    if not models:
        raise MigrationError(f"{reader.path}: a PT2 archive without a model under {root}models/")
    name = f"{root}models/model.json" if f"{root}models/model.json" in models else models[0]
    return name, loads(reader.read(name), f"{reader.path}: {name}", MigrationError)


def _config(reader: PackReader, member: str) -> dict[str, Any]:
    if member not in reader:
        return {}
    data = loads(reader.read(member), f"{reader.path}: {member}", MigrationError)
    config = data.get("config", {}) if isinstance(data, dict) else None
    if not isinstance(config, dict) or not all(
        isinstance(meta, dict) and isinstance(meta.get("path_name"), str)
        for meta in config.values()
    ):
        raise MigrationError(
            f"{reader.path}: {member} is not a payload config ({{'config': {{name: "
            "{'path_name': str, ...}}}} as torch.export writes it)"
        )
    return config


#: the PT2 archive layouts this reader knows (``<root>/archive_version``, torch's
#: ``ARCHIVE_VERSION_VALUE``): torch 2.13.0 and 2.14.1 write "0", and an archive without the
#: file is version 0 as torch reads it (``PT2ArchiveReader.archive_version``)
KNOWN_ARCHIVE_VERSIONS = frozenset({0})


def _check_archive_version(reader: PackReader, root: str, where: str) -> None:
    """Refuse a PT2 archive whose layout version this reader does not know: a newer layout
    may move or re-encode members, which read as version 0 would convert wrongly."""
    member = f"{root}archive_version"
    if member not in reader:
        return
    raw = reader.read(member)[:32].strip()
    try:
        version = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise MigrationError(
            f"{where}: {member} is {raw!r}, not a PT2 archive version number"
        ) from None
    if version not in KNOWN_ARCHIVE_VERSIONS:
        known = ", ".join(str(v) for v in sorted(KNOWN_ARCHIVE_VERSIONS))
        raise MigrationError(
            f"{where}: PT2 archive version {version}; trtpack reads archive version {known} "
            "(what torch.export.save writes up to torch 2.14.1 at least). Load it with the "
            "torch that wrote it and save it with trtpack.save, or upgrade trtpack"
        )


def convert_pt2(reader: PackReader, *, torch_tensorrt_variant: str | None = None) -> PackParts:
    where = str(reader.path)
    root = archive_root(reader)
    if root is None:
        raise MigrationError(f"{where} is not a PT2 archive")
    if f"{root}byteorder" in reader and reader.read(f"{root}byteorder").strip() != b"little":
        raise MigrationError(
            f"{where} was written on a big-endian machine; trtpack reads little-endian"
        )
    _check_archive_version(reader, root, where)
    if len(_models(reader, root)) > 1:
        return _convert_entry_points(reader, root)
    graph_member, data = model_json(reader, root)
    from ..program.graph_check import check_graph, custom_ops

    # custom operators pass here: migrating runs nothing, and the pack records them; loading
    # the pack gates them (graph safety, allow_ops)
    check_graph(data, f"{where}:{graph_member}", allow_ops=("*",))
    program = SerializedProgram(data, where=f"{where}:{graph_member}")
    iface, _ = program.interface()
    tensors, engines = _payloads(reader, root, "model")
    weights = _weights(reader, tensors, where)
    producer = Producer(trtpack="-", python="-", torch=program.torch_version)
    if not engines:
        ref = ProgramRef("program/graph.json", "program/weights.safetensors", program.schema,
                         tuple(custom_ops(data)) or None)  # fmt: skip
        members: dict[str, Source] = {ref.graph: reader.slice(graph_member), ref.weights: weights}
        return PackParts(iface, members, ref, producer=producer,
                         kind="torch.export program (PT2 archive)")  # fmt: skip
    wired = WiredProgram(program, reader.slice(graph_member), weights, engines)
    variant, members = variant_from_wired(wired, iface, name=torch_tensorrt_variant)
    abis = sorted({e.abi for e in engines.values()})
    producer = Producer(trtpack="-", python="-", torch=program.torch_version)
    return PackParts(
        iface, members, None, (variant,), producer=producer,
        kind=f"torch_tensorrt ExportedProgram with {len(engines)} engine(s), ABI {', '.join(abis)}",
        notes=["no portable program: the file holds only the engines' wiring"],
    )  # fmt: skip


def _convert_entry_points(reader: PackReader, root: str) -> PackParts:
    """A PT2 archive of several programs (``package_pt2(f, exported_programs={...})``) -> one
    multi-entry pack (format 1.4): the program named ``model`` (else the first by name) is
    the default entry point, the others reference its tensors of the same name and bytes.
    The archive cannot say which tensors were one object in the exporting process; the
    programs of one archive came from one model, so equal tensors, the state they write
    included, become one tensor (as ``trtpack.save`` of the same programs shares them)."""
    from ..format.manifest import EntryPoint
    from ..program.graph_check import check_graph, custom_ops

    where = str(reader.path)
    members_json = {m[len(f"{root}models/") : -len(".json")]: m for m in _models(reader, root)}
    default = "model" if "model" in members_json else sorted(members_json)[0]
    names = [default, *sorted(n for n in members_json if n != default)]
    parts: PackParts | None = None
    shared: dict[str, tuple[str, dict[str, Any]]] = {}
    others: dict[str, EntryPoint] = {}
    torch_version = None
    for name in names:
        if not _IDENTIFIER.match(name):
            raise MigrationError(f"{where}: program {name!r} is not a valid entry point name")
        member = members_json[name]
        data = loads(reader.read(member), f"{where}: {member}", MigrationError)
        # custom operators pass, as for one program: the pack records them, load gates them
        check_graph(data, f"{where}:{member}", allow_ops=("*",))
        program = SerializedProgram(data, where=f"{where}:{member}")
        ops = tuple(custom_ops(data)) or None
        torch_version = torch_version or program.torch_version
        iface, _ = program.interface()
        tensors, engines = _payloads(reader, root, name)
        if engines:
            raise MigrationError(
                f"{where}: program {name!r} holds torch_tensorrt engines; an archive of several "
                "programs is migrated from programs only"
            )
        if parts is None:
            ref = ProgramRef("program/graph.json", "program/weights.safetensors", program.schema,
                             ops)  # fmt: skip
            first = {ref.graph: reader.slice(member), ref.weights: _weights(reader, tensors, where)}
            kind = f"torch.export archive of {len(names)} programs (PT2)"
            parts = PackParts(iface, dict(first), ref, kind=kind)
            shared = {fqn: (group, meta) for group, fqn, meta in tensors}
            continue
        folder = f"entry_points/{name}"
        ref = ProgramRef(f"{folder}/graph.json", f"{folder}/weights.safetensors", program.schema,
                         ops)  # fmt: skip
        weights = _weights(reader, tensors, where, shared=(shared, "program/weights.safetensors"))
        parts.members.update({ref.graph: reader.slice(member), ref.weights: weights})
        others[name] = EntryPoint(iface, ref)
    assert parts is not None
    parts.producer = Producer(trtpack="-", python="-", torch=torch_version)
    parts.entry_point = default
    parts.entry_points = others or None
    parts.notes = [f"{len(names)} programs as entry points ({', '.join(names)}), {default!r} "
                   "the default; tensors of one name and bytes stored once and shared"]  # fmt: skip
    return parts


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _payloads(
    reader: PackReader, root: str, model: str
) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, PackedEngine]]:
    """One program's tensors (group, fqn, payload meta with its member) and engines."""
    where = str(reader.path)
    tensors: list[tuple[str, str, dict[str, Any]]] = []  # (group, fqn, payload meta)
    engines: dict[str, PackedEngine] = {}
    for group, folder in (("state_dict", "weights"), ("constants", "constants")):
        config = _config(reader, f"{root}data/{folder}/{model}_{folder}_config.json")
        for fqn, meta in config.items():
            member = f"{root}data/{folder}/{meta['path_name']}"
            if meta["path_name"].startswith("opaque_obj"):
                engines[fqn] = read_engine_pickle(reader.read(member), where=f"{where}:{member}")
            elif meta["path_name"].startswith("custom_obj"):
                raise MigrationError(
                    f"{where}: constant {fqn!r} is a TorchScript custom object ({member}), as "
                    "torch_tensorrt before 2.9 stored engines; trtpack reads the engines of "
                    "torch_tensorrt >= 2.9 .ep files. Re-save it with a current torch_tensorrt."
                )
            elif meta.get("use_pickle"):
                raise MigrationError(
                    f"{where}: tensor {fqn!r} is stored pickled (a tensor subclass); trtpack "
                    "does not unpickle tensors"
                )
            else:
                tensors.append((group, fqn, {**meta, "member": member}))
    return tensors, engines


def _contiguous_strides(sizes: list[int]) -> list[int]:
    out, step = [], 1
    for s in reversed(sizes):
        out.append(step)
        step *= max(s, 1)
    return list(reversed(out))


def _ints(values: list[dict], what: str) -> list[int]:
    out = []
    for v in values:
        if "as_int" not in v:
            raise MigrationError(f"{what} has a symbolic size; stored tensors must be static")
        out.append(int(v["as_int"]))
    return out


def _same_tensor(reader: PackReader, mine: tuple[str, dict], group: str, meta: dict) -> bool:
    """The default program's tensor ``mine`` is this one: group, parameter flag, metadata
    and payload bytes equal."""
    their_group, their = mine
    keys = ("dtype", "sizes", "strides", "storage_offset", "requires_grad")
    a, b = their.get("tensor_meta") or {}, meta.get("tensor_meta") or {}
    return (
        their_group == group
        and bool(their.get("is_param")) == bool(meta.get("is_param"))
        and all(a.get(k) == b.get(k) for k in keys)
        and (their["member"] == meta["member"] or
             reader.view(their["member"]) == reader.view(meta["member"]))
    )  # fmt: skip


def _weights(
    reader: PackReader,
    tensors: list[tuple[str, str, dict]],
    where: str,
    *,
    shared: tuple[Mapping[str, tuple[str, dict]], str] | None = None,
) -> Source:
    """The archive's storages -> one safetensors member; tensors sharing a storage stay views.
    ``shared``: the default program's tensors and weights member (format 1.4): a storage all
    of whose tensors it holds, equal, is referenced (``from``) instead of stored."""
    by_storage: dict[str, list[tuple[str, str, dict]]] = {}
    for group, fqn, meta in tensors:
        by_storage.setdefault(meta["member"], []).append((group, fqn, meta))
    stored: list[RawTensor] = []
    layout: dict[str, dict[str, Any]] = {}
    for member, entries in sorted(by_storage.items()):
        if shared is not None and all(
            fqn in shared[0] and _same_tensor(reader, shared[0][fqn], group, meta)
            for group, fqn, meta in entries
        ):
            for group, fqn, meta in entries:
                entry: dict[str, Any] = {"group": group, "from": shared[1]}
                if meta.get("is_param"):
                    entry["param"] = True
                    tm = meta.get("tensor_meta") or {}
                    entry["requires_grad"] = bool(tm.get("requires_grad", False))
                layout[fqn] = entry
            continue
        data = reader.view(member)
        described = []
        for group, fqn, meta in entries:
            tm = meta.get("tensor_meta") or {}
            code = tm.get("dtype")
            dtype = SCALAR_TYPES.get(code) if isinstance(code, int) else None
            if dtype is None or dtype not in DTYPES:
                raise MigrationError(f"{where}: tensor {fqn!r} has dtype code {tm.get('dtype')}")
            sizes = _ints(tm["sizes"], f"{where}: tensor {fqn!r}")
            strides = _ints(tm["strides"], f"{where}: tensor {fqn!r}")
            offset = int(tm.get("storage_offset", {}).get("as_int", 0))
            described.append((group, fqn, meta, dtype, sizes, strides, offset, tm))
        base = None
        for _, fqn, _, dtype, sizes, strides, offset, _ in described:
            n = DTYPES[dtype][1]
            for s in sizes:
                n *= s
            if offset == 0 and strides == _contiguous_strides(sizes) and n == len(data):
                base = (fqn, dtype, sizes)
                break
        if base is None:
            base = (f"__storage__.{len(stored)}", "uint8", [len(data)])
        stored.append(RawTensor(base[0], base[1], tuple(base[2]), data))
        for group, fqn, meta, dtype, sizes, strides, offset, tm in described:
            entry = {"group": group}
            if meta.get("is_param"):
                entry["param"] = True
                entry["requires_grad"] = bool(tm.get("requires_grad", False))
            if fqn != base[0]:
                entry.update(
                    view_of=base[0], dtype=dtype, shape=sizes, stride=strides, offset=offset
                )
            layout[fqn] = entry
    return safetensors_source(stored, layout_metadata(layout))
