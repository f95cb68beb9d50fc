"""The one variant builder: engine facts from any source -> a manifest ``Variant`` and its
members. No torch.

Every route into a pack ends here with the same facts — the engines torch_tensorrt packed
(``PackedEngine``) and the serialized program that wires them:

- a module from ``trtpack.compile`` / ``torch_tensorrt.dynamo.compile``, or a torch_tensorrt
  ExportedProgram: ``torchtrt.wire`` serializes it, as ``torch_tensorrt.save`` would;
- a torch_tensorrt ``.ep`` file: its graph JSON and engine pickles (``migrations/pt2.py``);
- a bare plan: no program, its bindings are the manifest's tensor inputs and outputs.

So the whole-graph rule, the bindings and profiles, member names, the target and the
narrowed ranges are written once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError
from ..format.container import Source
from ..format.manifest import (
    Binding,
    EngineSpec,
    Interface,
    ProgramRef,
    Symbol,
    Target,
    Variant,
    input_profile,
    narrowed_ranges,
    whole_graph_mismatch,
)
from ..program.derive import SerializedProgram, recorded_names
from .packed_info import PackedEngine
from .plan import PlanInfo, parse_plan


@dataclass(frozen=True)
class EngineFacts:
    """One engine as every source describes it: its name in the program, its plan bytes, its
    bindings (inputs with their profiles), and what torch_tensorrt packed with it (None for a
    bare plan)."""

    name: str
    plan: bytes | memoryview  # a memoryview: of a map of the plan file (a build)
    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]
    packed: PackedEngine | None = None


@dataclass(frozen=True)
class WiredProgram:
    """The serialized program that wires a variant's engines (``execute_engine`` calls on
    engine constants, and any PyTorch subgraphs): what a compiled module (``torchtrt.wire``)
    or a torch_tensorrt ``.ep`` file holds."""

    program: SerializedProgram  # the graph JSON, parsed
    graph: Source  # the same JSON, as the member to store
    weights: Source  # its weights, engines left out
    engines: Mapping[str, PackedEngine]  # by engine constant name


def variant_from_wired(
    wired: WiredProgram,
    iface: Interface,
    *,
    name: str | None,
    profiles: Sequence[Mapping[str, Symbol]] | None = None,
) -> tuple[Variant, dict[str, Source]]:
    """A wired program's variant. A whole-graph one keeps no program: its engine runs
    directly. ``profiles``: the symbols of each optimization profile the engines were built
    with, when there are several (``trtpack.compile(..., profiles=)``)."""
    facts, whole = facts_from_program(wired.program, iface, wired.engines, profiles)
    return build_variant(facts, iface, wiring=None if whole else wired, name=name)


def build_variant(
    engines: Sequence[EngineFacts],
    iface: Interface,
    *,
    wiring: WiredProgram | None,
    name: str | None,
) -> tuple[Variant, dict[str, Source]]:
    """The variant and its members. ``wiring`` None: one whole-graph engine, run directly."""
    if not engines:
        raise EngineError("an engine variant needs at least one engine")
    plans = [parse_plan(e.plan, where=f"engine {e.name}") for e in engines]
    target = target_of(plans, [e.packed for e in engines if e.packed is not None])
    vname = name or default_variant_name(target)
    folder = f"engines/{vname}"
    members: dict[str, Source] = {}
    specs = []
    for e in engines:
        member = f"{folder}/{member_stem(e.name)}.plan"
        if member in members:
            raise EngineError(f"two engines of variant {vname!r} map to member {member}")
        members[member] = e.plan
        specs.append(
            EngineSpec(
                name=e.name,
                member=member,
                inputs=e.inputs,
                outputs=e.outputs,
                abi_version=e.packed.abi if e.packed else None,
                settings=engine_settings(e.packed) if e.packed else None,
            )
        )
    ref = None
    if wiring is not None:
        ref = ProgramRef(f"{folder}/graph.json", f"{folder}/weights.safetensors",
                         wiring.program.schema)  # fmt: skip
        members[ref.graph] = wiring.graph
        members[ref.weights] = wiring.weights
    variant = Variant(
        name=vname,
        target=target,
        engines=tuple(specs),
        program=ref,
        ranges=narrowed_ranges(specs, iface.inputs, iface.symbols),
    )
    if variant.whole_graph:
        problem = whole_graph_mismatch(variant, iface.inputs, iface.outputs)
        if problem is not None:
            raise EngineError(problem)
    return variant, members


# --- engine facts from a serialized wired program ---------------------------------------------


def facts_from_program(
    program: SerializedProgram,
    iface: Interface,
    engines: Mapping[str, PackedEngine],
    profiles: Sequence[Mapping[str, Symbol]] | None = None,
) -> tuple[list[EngineFacts], bool]:
    """The engines a wired program calls, in call order, with bindings and profiles read from
    its tensor metadata, and whether it is whole-graph: one engine fed by the user's tensor
    inputs in order, whose outputs are the user outputs in order, and nothing else computed.
    Profiles come from ``iface``'s symbols (the ranges the engines were built for), or from
    each of ``profiles`` (profile 0, 1, ...)."""
    wired_iface, names = program.interface()
    # the wired program's JSON keeps no Dim names: name its symbols as the pack's manifest
    # does (the user's names at save and compile), matched by input and dim
    aligned = recorded_names(wired_iface, names, iface)
    if aligned:
        wired_iface, names = program.interface(aligned)
    values = [
        {s: symbols[n] for s, n in names.items() if n in symbols}
        for symbols in (profiles or [iface.symbols])
    ]
    placeholders = program.custom_objects()
    calls = []
    for node in program.graph.get("nodes", []):
        if "execute_engine" not in str(node.get("target")):
            continue
        args = {i["name"]: i["arg"] for i in node["inputs"]}
        engine_arg = args.get("engine", {}).get("as_custom_obj", {}).get("name")
        fqn = placeholders.get(engine_arg, engine_arg)
        if fqn not in engines:
            raise EngineError(
                f"{program.where}: an execute_engine call uses unknown engine {fqn!r}"
            )
        ins = [t["name"] for t in args.get("input_tensors", {}).get("as_tensors", [])]
        outs = [t["name"] for o in node.get("outputs", []) for t in o.get("as_tensors", [])]
        calls.append((fqn, ins, outs))
    if not calls:
        raise EngineError(f"{program.where}: engine constants but no execute_engine call")
    facts = []
    for fqn, ins, outs in calls:
        packed = engines[fqn]
        facts.append(
            EngineFacts(
                name=fqn,
                plan=packed.engine,
                inputs=tuple(_binding(program, b, t, names, values, True)
                             for b, t in zip(packed.input_names, ins)),
                outputs=tuple(_binding(program, b, t, names, values, False)
                              for b, t in zip(packed.output_names, outs)),
                packed=packed,
            )
        )  # fmt: skip
    tensor_inputs = [i.name for i in wired_iface.inputs if i.is_tensor]
    # the graph's own names of the user outputs (the manifest names them by key path)
    user_outputs = [
        spec["user_output"]["arg"].get("as_tensor", {}).get("name")
        for spec in program.signature["output_specs"]
        if "user_output" in spec
    ]
    compute = [n for n in program.graph.get("nodes", []) if "getitem" not in str(n.get("target"))]
    whole = (
        len(calls) == 1
        and calls[0][1] == tensor_inputs
        and calls[0][2] == user_outputs
        and len(compute) == 1
    )
    return facts, whole


def _binding(program: SerializedProgram, name: str, tensor: str, names: dict[str, str],
             values: Sequence[Mapping[str, Symbol]], is_input: bool) -> Binding:  # fmt: skip
    meta = program.tensors.get(tensor)
    if meta is None:
        raise EngineError(f"engine binding {name!r} ({tensor}) has no tensor metadata")
    sizes = meta["sizes"]
    shape = tuple(program.dim_text(s, names) for s in sizes)
    profiles: list[tuple[tuple[int, int, int], ...]] = []
    for symbols in values if is_input else ():
        rows: list[tuple[int, int, int]] = []
        lows = {k: v.min for k, v in symbols.items()}
        opts = {k: v.opt for k, v in symbols.items()}
        highs = {k: -1 if v.max is None else v.max for k, v in symbols.items()}
        for s in sizes:
            lo, opt, hi = (program.evaluate(s, at) for at in (lows, opts, highs))
            if lo is None or opt is None or hi is None:
                break
            rows.append((lo, opt, hi))
        else:
            profiles.append(tuple(rows))
    return Binding(name, program.dtype(meta, tensor), shape,
                   profiles[0] if profiles else None,
                   tuple(profiles[1:]) if len(profiles) > 1 else None)  # fmt: skip


# --- engine facts of a bare plan --------------------------------------------------------------


def facts_from_plan(
    plan: bytes, iface: Interface, *, where: str, output_names: Sequence[str] | None = None
) -> EngineFacts:
    """A bare plan as one whole-graph engine: its bindings are the tensor inputs and outputs,
    in order (outputs named ``output<i>`` unless named), and its profile the symbols' ranges
    (a plan's own profile cannot be read without a GPU)."""
    inputs, outputs = whole_graph_bindings(iface, where=where, output_names=output_names)
    return EngineFacts("engine", plan, inputs, outputs)


def whole_graph_bindings(
    iface: Interface, *, where: str, output_names: Sequence[str] | None = None
) -> tuple[tuple[Binding, ...], tuple[Binding, ...]]:
    """The bindings of a whole-graph engine of ``iface``: its tensor inputs, in order, each
    with the profile its symbols' ranges give (min, opt, max per dim), and its outputs (named
    ``output<i>`` unless named). What a bare plan is taken to be, and what ``trtpack.build``
    builds."""
    inputs = []
    for spec in iface.inputs:
        if not spec.is_tensor:
            continue
        profile, unbounded = input_profile(spec, iface.symbols)
        if unbounded is not None:
            raise EngineError(
                f"{where}: symbol {unbounded!r} is unbounded; give the engine's range"
            )
        inputs.append(Binding(spec.name, spec.dtype or "", tuple(spec.shape or ()), profile))
    names = list(output_names or [f"output{i}" for i in range(len(iface.outputs))])
    outputs = [
        Binding(n, o.dtype or "", tuple(o.shape or ())) for n, o in zip(names, iface.outputs)
    ]
    return tuple(inputs), tuple(outputs)


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
        # torch_tensorrt sets EXCLUDE_LEAN_RUNTIME with VERSION_COMPATIBLE (_TRTInterpreter):
        # its version-compatible plans carry no host code; a bare plan's is not recorded
        embeds_lean_runtime=False if version_compatible and packed else None,
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


def member_stem(name: str) -> str:
    """An engine's name as a member file name (an FQN may hold any character)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "engine"


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


#: how a bare standard-TensorRT plan was built version-compatible, which its header does not
#: say: with TensorRT's lean runtime embedded (the builder's default; host code) or with
#: BuilderFlag.EXCLUDE_LEAN_RUNTIME
VERSION_COMPATIBLE_BUILDS: dict[str, bool] = {"lean_embedded": True, "lean_excluded": False}


def declare_version_compatible(v: Variant, how: str | None, *, where: str) -> Variant:
    """A bare plan's variant, marked version-compatible as its builder made it (``how``: a
    key of VERSION_COMPATIBLE_BUILDS; None leaves the variant as it is)."""
    if how is None:
        return v
    if how not in VERSION_COMPATIBLE_BUILDS:
        raise EngineError(
            f"version_compatible must be one of {sorted(VERSION_COMPATIBLE_BUILDS)}, not {how!r}",
            field="version_compatible", expected=sorted(VERSION_COMPATIBLE_BUILDS), got=how,
        )  # fmt: skip
    if v.target.flavor != "tensorrt":
        raise EngineError(
            f"{where} is a {v.target.flavor} plan; only standard TensorRT builds "
            "version-compatible engines",
            member=where, field="version_compatible", expected="tensorrt", got=v.target.flavor,
        )  # fmt: skip
    target = dataclasses.replace(
        v.target, version_compatible=True, embeds_lean_runtime=VERSION_COMPATIBLE_BUILDS[how]
    )
    return dataclasses.replace(v, target=target)
