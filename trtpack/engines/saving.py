"""Engines into a pack: a compiled module (or torch_tensorrt ExportedProgram) becomes a
variant — raw plan members, plain-data engine facts, and the program that wires them.

Also ``add_engine``: a variant added to an existing pack, its other members copied byte for
byte (same SHA-256), from another pack, a compiled module, or a bare plan file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..container import PathLike, Source
from ..errors import DeriveError, EngineError, TrtpackError
from ..info import PackInfo, open_pack
from ..manifest import (
    Binding,
    EngineSpec,
    Interface,
    IOSpec,
    Manifest,
    Member,
    Symbol,
    Target,
    Variant,
    parse_dim,
    whole_graph_mismatch,
)
from .packed_info import PackedEngine
from .plan import PlanInfo, parse_plan

# --- facts -> manifest entries ---------------------------------------------------------------


def target_of(plans: list[PlanInfo], packed: list[PackedEngine] | None = None) -> Target:
    """The target of a set of engines; they must all agree."""
    flavors = {p.flavor for p in plans}
    versions = {p.trt_version for p in plans}
    if len(flavors) != 1 or len(versions) != 1:
        raise EngineError(
            f"the engines of one variant were built differently: {sorted(flavors)} "
            f"{sorted(versions)}; save them as separate variants"
        )
    plan = plans[0]
    packed = packed or []
    hw = any(p.hardware_compatible for p in packed)
    settings = [p.settings for p in packed]
    version_compatible = any(bool(s.get("version_compatible")) for s in settings)
    if plan.flavor == "tensorrt_rtx":
        ccs = plan.compute_capabilities
        hardware = "none"  # TensorRT-RTX ignores hardware-compatibility levels
    else:
        ccs = tuple(sorted({c for c in (p.compute_capability for p in packed) if c}))
        hardware = "ampere_plus" if hw else "none"
    platforms = {p.platform for p in packed if p.platform}
    return Target(
        flavor=plan.flavor,
        trt_version=plan.trt_version,
        compute_capabilities=tuple(ccs),
        future_gpus=plan.future_gpus or None,
        hardware_compatibility=hardware,
        version_compatible=version_compatible,
        platform=platforms.pop() if len(platforms) == 1 else None,
        cuda_runtime=plan.cuda_runtime,
    )


def default_variant_name(target: Target) -> str:
    prefix = "rtx" if target.flavor == "tensorrt_rtx" else "trt"
    if target.hardware_compatibility == "ampere_plus":
        return f"{prefix}_ampere_plus"
    sms = ["sm" + c.replace(".", "") for c in target.compute_capabilities]
    if target.future_gpus and sms:  # TensorRT-RTX's default target: these and newer GPUs
        return f"{prefix}_{sms[0]}_plus"
    return f"{prefix}_{'_'.join(sms) or 'any'}"


def _member_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "engine"


def narrowed_ranges(
    engines: list[EngineSpec], inputs: tuple[IOSpec, ...], symbols: Mapping[str, Symbol]
) -> dict[str, tuple[int, int | None]]:
    """Symbols whose exported range the engines' profiles only partly cover: the contract
    checks calls against these when the engines run (three ways: manifest, program, profiles)."""
    by_name = {i.name: i for i in inputs if i.is_tensor}
    out: dict[str, tuple[int, int | None]] = {}
    for engine in engines:
        for binding in engine.inputs:
            spec = by_name.get(binding.name)
            if spec is None or binding.profile is None:
                continue
            for dim, (pmin, _, pmax) in zip(spec.shape or (), binding.profile):
                if not isinstance(dim, str):
                    continue
                expr = parse_dim(dim)
                sym = symbols[expr.symbol]
                lo = -(-(pmin - expr.offset) // expr.coef)  # ceil: the smallest root it accepts
                hi = None if pmax < 0 else (pmax - expr.offset) // expr.coef
                cur_lo, cur_hi = out.get(expr.symbol, (sym.min, sym.max))
                new_lo = max(cur_lo, lo)
                new_hi = cur_hi if hi is None else (hi if cur_hi is None else min(cur_hi, hi))
                if (new_lo, new_hi) != (sym.min, sym.max):
                    out[expr.symbol] = (new_lo, new_hi)
    return dict(sorted(out.items()))


def check_against_manifest(variant: Variant, manifest: Manifest) -> None:
    """A whole-graph engine's bindings must be the manifest's tensor inputs and outputs."""
    if variant.whole_graph:
        problem = whole_graph_mismatch(variant, manifest.inputs, manifest.outputs)
        if problem is not None:
            raise EngineError(problem)


def engine_settings(packed: PackedEngine) -> dict[str, Any]:
    """What rebuild, refit and the runtime need, as plain data (never the pickle itself)."""
    return {
        "compilation": packed.settings,
        "module": {
            "hardware_compatible": packed.hardware_compatible,
            "requires_output_allocator": packed.requires_output_allocator,
            "platform": packed.platform,
            "build_device": list(packed.device) if packed.device else None,
        },
    }


# --- a compiled module -> pack -----------------------------------------------------------


def compiled_variant(
    obj: Any,
    *,
    inputs: tuple[IOSpec, ...],
    symbols: Mapping[str, Symbol],
    bounds: Mapping[str, tuple[int, int]] | None,
    name: str | None,
) -> tuple[Variant, dict[str, Source]]:
    """The variant (and its members) for a compiled module or a torch_tensorrt program."""
    from ..program import program_members
    from .torchtrt import extract, wired_program

    wired = wired_program(obj)
    ex = extract(wired, manifest_inputs=inputs, bounds=dict(bounds) if bounds else None)
    records = list(ex.engines.items())
    plans = [parse_plan(r.packed.engine, where=f"engine {fqn}") for fqn, r in records]
    target = target_of(plans, [r.packed for _, r in records])
    vname = name or default_variant_name(target)
    folder = f"engines/{vname}"
    members: dict[str, Source] = {}
    specs = []
    for fqn, rec in records:
        member = f"{folder}/{_member_stem(fqn)}.plan"
        members[member] = rec.packed.engine
        specs.append(
            EngineSpec(
                name=fqn,
                member=member,
                inputs=rec.inputs,
                outputs=rec.outputs,
                abi_version=rec.packed.abi,
                settings=engine_settings(rec.packed),
            )
        )
    program = None
    if not ex.whole_graph:
        blobs, program = program_members(ex.program, folder=folder, engines=frozenset(ex.engines))
        members.update(blobs)
    variant = Variant(
        name=vname,
        target=target,
        engines=tuple(specs),
        program=program,
        whole_graph=ex.whole_graph,
        ranges=narrowed_ranges(specs, inputs, symbols),
    )
    return variant, members


def save_compiled(
    obj: Any,
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None,
    ranges: Mapping[str, Any] | None,
    overwrite: bool,
    variant: str | None = None,
    source: Any = None,
    output_names: Any = None,
) -> PackInfo:
    """``trtpack.save`` for a module from ``trtpack.compile`` / ``torch_tensorrt.dynamo.compile``
    or a torch_tensorrt ExportedProgram with embedded engines."""
    from torch.export import ExportedProgram

    from ..assemble import build_manifest, write
    from ..derive import apply_ranges, derive_interface, dim_aliases
    from ..program import program_members
    from .torchtrt import engine_constant_names, wired_program

    compiled = getattr(obj, "_trtpack", None)
    bounds = None
    if compiled is not None:  # from trtpack.compile: the manifest came along
        iface = compiled.interface
        source = source if source is not None else compiled.source
        bounds = {n: (s.min, s.max) for n, s in iface.symbols.items() if s.max is not None}
    else:  # compiled elsewhere: the manifest comes from the source program, or the wired one
        obj = wired_program(obj)
        iface = derive_interface(source if source is not None else obj)
    if ranges:
        program = source if source is not None else obj
        aliases = dim_aliases(program) if isinstance(program, ExportedProgram) else {}
        iface = apply_ranges(iface, ranges, aliases)
    if output_names is not None:
        iface = iface.with_output_names(output_names)
    if source is not None and engine_constant_names(source):
        raise DeriveError("source= must be the ExportedProgram before compilation, without engines")
    var, members = compiled_variant(
        obj, inputs=iface.inputs, symbols=iface.symbols, bounds=bounds, name=variant
    )
    program_ref = None
    if source is not None:
        blobs, program_ref = program_members(source)
        members.update(blobs)
    return write(
        path,
        members,
        lambda d: build_manifest(iface, d, program=program_ref, engines=(var,), metadata=metadata),
        overwrite=overwrite,
    )


# --- add-engine ----------------------------------------------------------------------------


def plan_variant(
    plan: bytes,
    manifest: Manifest | Interface,
    *,
    name: str | None,
    where: str,
    output_names: list[str] | None = None,
) -> tuple[Variant, dict[str, Source]]:
    """A bare plan as a whole-graph variant: its bindings are the tensor inputs and outputs,
    in order (outputs named ``output<i>`` unless named), and its profile the symbols' ranges
    (a plan's own profile cannot be read without a GPU)."""
    info = parse_plan(plan, where=where)
    target = target_of([info])
    vname = name or default_variant_name(target)
    inputs = []
    for spec in manifest.inputs:
        if not spec.is_tensor:
            continue
        profile = []
        for d in spec.shape or ():
            if isinstance(d, int):
                profile.append((d, d, d))
            else:
                expr = parse_dim(d)
                sym = manifest.symbols[expr.symbol]
                if sym.max is None:
                    raise EngineError(
                        f"{where}: symbol {expr.symbol!r} is unbounded; give the engine's range"
                    )
                profile.append((expr.value(sym.min), expr.value(sym.opt), expr.value(sym.max)))
        inputs.append(Binding(spec.name, spec.dtype or "", tuple(spec.shape or ()), tuple(profile)))
    names = output_names or [f"output{i}" for i in range(len(manifest.outputs))]
    outputs = [
        Binding(n, o.dtype or "", tuple(o.shape or ())) for n, o in zip(names, manifest.outputs)
    ]
    member = f"engines/{vname}/engine.plan"
    engine = EngineSpec(name="engine", member=member, inputs=tuple(inputs), outputs=tuple(outputs))
    variant = Variant(name=vname, target=target, engines=(engine,), program=None, whole_graph=True)
    return variant, {member: plan}


def add_engine(
    pack: PathLike,
    source: Any,
    *,
    variant: str | None = None,
    out: PathLike | None = None,
) -> PackInfo:
    """Add an engine variant to ``pack`` (written atomically to ``out``, default: in place).

    ``source`` is another .trtpack of the same model (its variants are taken), a bare plan
    file (a whole-graph engine whose bindings are the manifest's inputs and outputs), or a
    module from ``trtpack.compile``. The pack's other members are copied byte for byte.
    """
    from ..assemble import write
    from ..atomic import pack_lock

    target_path = Path(out) if out is not None else Path(pack)
    # held from before the read until after the rename: a second add_engine waits, never
    # writes a pack built from the old content (which would drop the first one's variant)
    with pack_lock(target_path), open_pack(pack) as (reader, info):
        manifest = info.manifest
        members: dict[str, Source] = {n: reader.slice(n) for n in manifest.members}
        new_variants, new_members = _variants_from(source, manifest, variant)
        taken = {v.name for v in manifest.engines}
        for v in new_variants:
            if v.name in taken:
                raise EngineError(
                    f"{info.path} already has an engine variant named {v.name!r}; pick another "
                    "name with variant=... (--variant)"
                )
            check_against_manifest(v, manifest)
        clash = set(new_members) & set(members)
        if clash:
            raise EngineError(f"members {sorted(clash)} already exist in {info.path}")
        members.update(new_members)
        engines = manifest.engines + tuple(new_variants)
        # written while the source is open; members are copied from it as they are written
        return write(
            target_path,
            members,
            lambda d: manifest.replace(
                engines=engines,
                members={n: Member(d[n].sha256, d[n].size) for n in sorted(d)},
            ),
            overwrite=True,
        )


def _variants_from(
    source: Any, manifest: Manifest, name: str | None
) -> tuple[list[Variant], dict[str, Source]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            return _variants_from_pack(path, manifest, name)
        data = path.read_bytes()
        v, m = plan_variant(data, manifest, name=name, where=str(path))
        return [v], m
    if isinstance(source, (bytes, bytearray, memoryview)):
        v, m = plan_variant(bytes(source), manifest, name=name, where="engine")
        return [v], m
    compiled = getattr(source, "_trtpack", None)
    if compiled is None:
        raise TrtpackError(
            f"cannot add an engine from a {type(source).__name__}: give a .trtpack, a .plan file "
            "or a module from trtpack.compile"
        )
    iface = compiled.interface
    if iface.inputs != manifest.inputs or iface.outputs != manifest.outputs:
        raise EngineError("the compiled module's inputs/outputs differ from the pack's manifest")
    bounds = {n: (s.min, s.max) for n, s in iface.symbols.items() if s.max is not None}
    v, m = compiled_variant(source, inputs=manifest.inputs, symbols=manifest.symbols,
                            bounds=bounds, name=name)  # fmt: skip
    return [v], m


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
                reader.verify(n, member.sha256, member.size)
                members[n] = reader.slice(n)
            variants.append(v if name is None else _renamed(v, name, members))
        return variants, members


def _renamed(v: Variant, name: str, members: dict[str, Source]) -> Variant:
    """``v`` under another name: its members move to ``engines/<name>/``."""
    old, new = f"engines/{v.name}/", f"engines/{name}/"

    def move(member: str) -> str:
        if not member.startswith(old):
            return member
        moved = new + member[len(old) :]
        members[moved] = members.pop(member)
        return moved

    engines = tuple(e.__class__(**{**e.__dict__, "member": move(e.member)}) for e in v.engines)
    program = None
    if v.program is not None:
        program = v.program.__class__(
            graph=move(v.program.graph), weights=move(v.program.weights),
            serde_schema=v.program.serde_schema,
        )  # fmt: skip
    return Variant(name, v.target, engines, program, v.whole_graph, v.ranges)
