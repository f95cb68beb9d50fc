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

from dataclasses import dataclass, field
from typing import Any

from ..container import PackReader, Source
from ..engines.packed_info import PackedEngine, read_engine_pickle
from ..engines.plan import parse_plan
from ..engines.saving import default_variant_name, engine_settings, narrowed_ranges, target_of
from ..errors import EngineError, MigrationError
from ..limits import loads
from ..manifest import Binding, EngineSpec, Interface, Producer, ProgramRef, Variant
from ..tensorfile import DTYPES, RawTensor, layout_metadata, safetensors_source
from .serde_json import SCALAR_TYPES, SerializedProgram


@dataclass
class Converted:
    """A legacy artifact, as the pieces of a pack."""

    kind: str
    iface: Interface
    members: dict[str, Source]
    program: ProgramRef | None
    engines: tuple[Variant, ...] = ()
    producer: Producer | None = None
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def archive_root(reader: PackReader) -> str | None:
    """The folder a PT2 archive keeps its members in (``<name>/``), or None if not one."""
    for name in reader.members:
        if name.endswith("archive_format") and name.count("/") <= 1:
            root = name[: -len("archive_format")]
            if reader.read(name).strip() == b"pt2":
                return root
    return None


def model_json(reader: PackReader, root: str) -> tuple[str, dict[str, Any]]:
    models = sorted(
        n for n in reader.members if n.startswith(f"{root}models/") and n.endswith(".json")
    )
    if not models:
        raise MigrationError(f"{reader.path}: a PT2 archive without a model under {root}models/")
    if len(models) > 1 and f"{root}models/model.json" not in models:
        raise MigrationError(
            f"{reader.path} holds {len(models)} programs ({', '.join(models)}); trtpack migrates "
            "one program per pack"
        )
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


def convert_pt2(reader: PackReader, *, torch_tensorrt_variant: str | None = None) -> Converted:
    where = str(reader.path)
    root = archive_root(reader)
    if root is None:
        raise MigrationError(f"{where} is not a PT2 archive")
    if f"{root}byteorder" in reader and reader.read(f"{root}byteorder").strip() != b"little":
        raise MigrationError(
            f"{where} was written on a big-endian machine; trtpack reads little-endian"
        )
    graph_member, data = model_json(reader, root)
    from ..graph_check import check_graph

    check_graph(data, f"{where}:{graph_member}")
    program = SerializedProgram(data, where=f"{where}:{graph_member}")
    iface, names = program.interface()

    tensors: list[tuple[str, str, dict[str, Any]]] = []  # (group, fqn, payload meta)
    engines: dict[str, PackedEngine] = {}
    for group, folder in (("state_dict", "weights"), ("constants", "constants")):
        config = _config(reader, f"{root}data/{folder}/model_{folder}_config.json")
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
    weights = _weights(reader, tensors, where)
    producer = Producer(trtpack="-", python="-", torch=program.torch_version)
    if not engines:
        ref = ProgramRef("program/graph.json", "program/weights.safetensors", program.schema)
        members: dict[str, Source] = {ref.graph: reader.slice(graph_member), ref.weights: weights}
        return Converted("torch.export program (PT2 archive)", iface, members, ref,
                         producer=producer)  # fmt: skip
    variant, members = _engine_variant(program, names, iface, engines, weights, reader,
                                       graph_member, torch_tensorrt_variant)  # fmt: skip
    abis = sorted({e.abi for e in engines.values()})
    producer = Producer(trtpack="-", python="-", torch=program.torch_version)
    return Converted(
        f"torch_tensorrt ExportedProgram with {len(engines)} engine(s), ABI {', '.join(abis)}",
        iface, members, None, (variant,), producer=producer,
        notes=["no portable program: the file holds only the engines' wiring"],
    )  # fmt: skip


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


def _weights(reader: PackReader, tensors: list[tuple[str, str, dict]], where: str) -> Source:
    """The archive's storages -> one safetensors member; tensors sharing a storage stay views."""
    by_storage: dict[str, list[tuple[str, str, dict]]] = {}
    for group, fqn, meta in tensors:
        by_storage.setdefault(meta["member"], []).append((group, fqn, meta))
    stored: list[RawTensor] = []
    layout: dict[str, dict[str, Any]] = {}
    for member, entries in sorted(by_storage.items()):
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
            entry: dict[str, Any] = {"group": group}
            if meta.get("is_param"):
                entry["param"] = True
                entry["requires_grad"] = bool(tm.get("requires_grad", False))
            if fqn != base[0]:
                entry.update(
                    view_of=base[0], dtype=dtype, shape=sizes, stride=strides, offset=offset
                )
            layout[fqn] = entry
    return safetensors_source(stored, layout_metadata(layout))


def _engine_variant(
    program: SerializedProgram,
    names: dict[str, str],
    iface: Interface,
    engines: dict[str, PackedEngine],
    weights: Source,
    reader: PackReader,
    graph_member: str,
    name: str | None,
) -> tuple[Variant, dict[str, Source]]:
    placeholders = program.custom_objects()
    values = {s: iface.symbols[n] for s, n in names.items()}
    calls = []
    for node in program.graph.get("nodes", []):
        if "execute_engine" not in str(node.get("target")):
            continue
        args = {i["name"]: i["arg"] for i in node["inputs"]}
        engine_arg = args.get("engine", {}).get("as_custom_obj", {}).get("name")
        fqn = placeholders.get(engine_arg, engine_arg)
        if fqn not in engines:
            raise EngineError(f"{reader.path}: an execute_engine call uses unknown engine {fqn!r}")
        ins = [t["name"] for t in args.get("input_tensors", {}).get("as_tensors", [])]
        outs = [t["name"] for o in node.get("outputs", []) for t in o.get("as_tensors", [])]
        calls.append((fqn, ins, outs))
    if not calls:
        raise EngineError(f"{reader.path}: engine constants but no execute_engine call")
    plans = [parse_plan(engines[fqn].engine, where=f"engine {fqn}") for fqn, _, _ in calls]
    target = target_of(plans, [engines[fqn] for fqn, _, _ in calls])
    vname = name or default_variant_name(target)
    folder = f"engines/{vname}"
    members: dict[str, Source] = {}
    specs = []
    for fqn, ins, outs in calls:
        packed = engines[fqn]
        member = f"{folder}/{fqn}.plan"
        members[member] = packed.engine
        inputs = tuple(
            _binding(program, b, t, names, values, True) for b, t in zip(packed.input_names, ins)
        )
        outputs = tuple(
            _binding(program, b, t, names, values, False) for b, t in zip(packed.output_names, outs)
        )
        specs.append(EngineSpec(fqn, member, inputs, outputs, packed.abi, engine_settings(packed)))
    tensor_inputs = [i.name for i in iface.inputs if i.is_tensor]
    # the graph's own names of the user outputs (the manifest names them by key path)
    user_outputs = [
        spec["user_output"]["arg"].get("as_tensor", {}).get("name")
        for spec in program.signature["output_specs"]
        if "user_output" in spec
    ]
    compute = [n for n in program.graph.get("nodes", []) if "getitem" not in str(n.get("target"))]
    whole = len(calls) == 1 and calls[0][1] == tensor_inputs and calls[0][2] == user_outputs
    whole = whole and len(compute) == 1
    ref = None
    if not whole:
        ref = ProgramRef(f"{folder}/graph.json", f"{folder}/weights.safetensors", program.schema)
        members[ref.graph] = reader.slice(graph_member)
        members[ref.weights] = weights
    variant = Variant(vname, target, tuple(specs), ref, whole,
                      narrowed_ranges(specs, iface.inputs, iface.symbols))  # fmt: skip
    return variant, members


def _binding(program: SerializedProgram, name: str, tensor: str, names: dict[str, str],
             values: dict[str, Any], is_input: bool) -> Binding:  # fmt: skip
    meta = program.tensors.get(tensor)
    if meta is None:
        raise EngineError(f"engine binding {name!r} ({tensor}) has no tensor metadata")
    sizes = meta["sizes"]
    shape = tuple(program.dim_text(s, names) for s in sizes)
    profile = None
    if is_input:
        rows: list[tuple[int, int, int]] | None = []
        for s in sizes:
            lo = program.evaluate(s, {k: v.min for k, v in values.items()})
            opt = program.evaluate(s, {k: v.opt for k, v in values.items()})
            hi = program.evaluate(s, {k: -1 if v.max is None else v.max for k, v in values.items()})
            if None in (lo, opt, hi):
                rows = None
                break
            assert rows is not None and lo is not None and opt is not None and hi is not None
            rows.append((lo, opt, hi))
        profile = tuple(rows) if rows is not None else None
    return Binding(name, program.dtype(meta, tensor), shape, profile)
