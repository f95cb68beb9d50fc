"""``save``: an ExportedProgram (or a compiled module) -> a .trtpack file. The one save
pipeline:

1. the program members and the interface derived from those same bytes, in one call
   (``program.describe``);
3. the engine variants a compiled module contributes (``engines/variants.py``);
4. all of it written once, by the one writer (``assemble.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.export import ExportedProgram

from ..engines.variants import variant_from_wired
from ..errors import ArgumentTypeError, DeriveError, EngineError, TrtpackError
from ..format.container import PathLike, Source
from ..format.manifest import Interface, ProgramRef, Tolerance, Variant
from ..format.progress import Progress, ProgressArg
from ..program.derive import RangeLike, apply_ranges
from ..program.describe import describe
from ..reading import PackInfo
from .assemble import PackParts, write


def save(
    obj: ExportedProgram | torch.nn.Module | Mapping[str, ExportedProgram | torch.nn.Module],
    path: PathLike,
    *,
    metadata: Mapping[str, str] | None = None,
    ranges: Mapping[str, RangeLike] | None = None,
    overwrite: bool = False,
    variant: str | Mapping[str, str] | None = None,
    source: ExportedProgram | Mapping[str, ExportedProgram] | None = None,
    output_names: Sequence[str] | Mapping[str, Any] | None = None,
    samples: int | Sequence[Any] | Mapping[str, int | Sequence[Any]] | None = None,
    tolerances: Mapping[str, Tolerance | tuple[float, float]] | None = None,
    max_sample_bytes: int | None = None,
    progress: ProgressArg = None,
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
    ``samples`` stores reference samples (a count of random calls inside the ranges, or a list
    of ``(args, kwargs)`` calls) with the program's outputs for them, checked later by
    ``trtpack check`` / ``load(check=True)``; ``tolerances`` maps ``"program"`` or a variant
    name to ``(atol, rtol)`` (defaults: 1e-5 for the program; by the engines' precisions).
    ``overwrite``: replace an existing ``path`` (default: refuse with OutputExistsError, as
    every trtpack writer does; trtpack before 0.2 replaced it silently).
    ``max_sample_bytes``: the most memory drawn samples' inputs may take together (default
    256 MiB, ``trtpack.samples.MAX_SAMPLE_BYTES``): sizes beyond it are refused before anything is
    allocated (SampleTooLargeError naming the symbols and the size).
    ``progress``: None, a line on stderr while it is a terminal; True/False, always/never; a
    callable, ``ProgressEvent``s with the bytes written (``trtpack.format.progress``).

    ``obj`` may be a dict ``{name: ExportedProgram}`` (format 1.4, docs/multi-entry.md): one
    pack of several entry points over one copy of the weights, the first the default; the
    tensors they write in place (a KV cache) are declared and shared after load. There
    ``samples`` is a count for every entry point, or ``{name: count or calls}`` for the entry
    points named; each entry point's samples run from the saved state (an entry point that
    writes state in place has it reset before each call, as ``check`` does after load);
    ``tolerances`` ``{"program": ...}`` applies to every entry point (a variant name, to the
    entry point that has it); ``output_names`` is ``{name: a list or a {derived: new} map}``
    for the entry points named (the others keep their derived names). A value may be a
    compiled module (mixed with programs): its engines become a variant of that entry point
    and its source program the entry point's program; ``source={name: ep}`` gives the
    program of a module from ``torch_tensorrt.dynamo.compile``; ``variant`` is one name for
    every compiled entry point's engine set, or ``{name: variant name}``. An entry point that
    writes state in place, or reads state another writes, cannot be a compiled module
    (EngineError: the loader would never run its engines). ``ranges`` applies to every entry
    point, or per entry point as ``{name: {symbol: range}}``.
    """
    bar = Progress("save", progress)  # checks its type before any work
    if isinstance(obj, Mapping):
        return _save_entry_points(obj, path, metadata=metadata, ranges=ranges,
                                  overwrite=overwrite, bar=bar, variant=variant, source=source,
                                  output_names=output_names, samples=samples,
                                  tolerances=tolerances,
                                  max_sample_bytes=max_sample_bytes)  # fmt: skip
    if not isinstance(obj, (ExportedProgram, torch.nn.Module)):
        raise ArgumentTypeError(
            "obj", "a torch.export.ExportedProgram or a compiled module (trtpack.compile, "
            "torch_tensorrt.dynamo.compile)", obj,
        )  # fmt: skip
    if source is not None and not isinstance(source, ExportedProgram):
        raise ArgumentTypeError("source", "a torch.export.ExportedProgram", source)
    if variant is not None and not isinstance(variant, str):
        raise ArgumentTypeError("variant", "a str (a dict is for a multi-entry save)", variant)
    compiled = not isinstance(obj, ExportedProgram) or has_engines(obj)
    if not compiled and (source is not None or variant is not None):
        raise TrtpackError("source= and variant= apply to compiled modules, not to a program")
    bar.step("describe the program")
    parts = _parts_of_compiled(obj, source, ranges, variant) if compiled else None
    if parts is None:
        assert isinstance(obj, ExportedProgram)
        described = describe(obj, ranges=ranges)  # the interface of the bytes it stores
        parts = PackParts(described.interface, described.members, described.ref,
                          checked=described.checked)  # fmt: skip
    if output_names is not None:
        parts.interface = parts.interface.with_output_names(output_names)
    parts.metadata = dict(metadata or {})
    if samples is not None:
        program = obj if not compiled else (source or getattr(getattr(obj, "_trtpack", None),
                                                              "source", None))  # fmt: skip
        if not isinstance(program, ExportedProgram):
            raise TrtpackError(
                "samples= needs the ExportedProgram to compute the reference outputs: pass "
                "source= (the program the module was compiled from)"
            )
        if isinstance(samples, Mapping):  # {entry point: ...} is for a dict of programs
            raise ArgumentTypeError("samples", "a count or a list of (args, kwargs) calls", samples)
        bar.step("compute the reference samples")
        parts = _with_samples(parts, program, samples, tolerances or {}, max_sample_bytes)
    elif tolerances is not None:
        raise TrtpackError("tolerances= applies to samples=; give samples too")
    with bar:
        return write(parts, path, overwrite=overwrite, progress=bar)


def _save_entry_points(
    values: Mapping[str, Any], path: PathLike, *, metadata: Any, ranges: Any,
    overwrite: bool, bar: Progress, variant: Any, source: Any, output_names: Any, samples: Any,
    tolerances: Any, max_sample_bytes: int | None,
) -> PackInfo:  # fmt: skip
    from ..engines.torchtrt import per_entry_point, wire
    from .entry_points import check_programs, parts_of_programs, relocated

    programs, compiled = _entry_programs(values, source)
    checked = check_programs(programs)
    names = _variant_names(variant, compiled, checked)
    renames = _per_entry("output_names", output_names, checked)
    per_entry = _samples_per_entry(checked, samples)
    if tolerances is not None and not per_entry:
        raise TrtpackError("tolerances= applies to samples=; give samples too")
    bar.step("describe the programs")
    attached = {n: getattr(m, "_trtpack", None) for n, m in compiled.items()}
    given = {n: a.interface for n, a in attached.items() if a is not None}
    per_ranges = per_entry_point("ranges", ranges, list(checked))
    parts, others = parts_of_programs(checked, interfaces=given, entry_ranges=per_ranges)
    for name in compiled:  # refused before any engine is read
        refused = parts.state.engine_refusal(name) if parts.state is not None else None
        if refused is not None:
            raise EngineError(
                f"obj[{name!r}] is a compiled module, but {refused}: the loader would never run "
                "its engines (it runs the entry point's ExportedProgram). Give the program "
                "instead (trtpack.compile of a dict leaves such entry points as programs)",
                field="entry_point", got=name,
            )  # fmt: skip
    for name, module in compiled.items():
        bar.step(f"read the engines of {name}")
        iface = parts.interface if name == parts.entry_point else others[name].interface
        profiles = getattr(attached[name], "profiles", None)
        v, members = variant_from_wired(wire(module), iface, name=names.get(name),
                                        profiles=profiles)  # fmt: skip
        if name != parts.entry_point:
            v = relocated(v, name, members)
        parts = parts.with_variants([v], members, where="the pack", entry_point=name)
        others = dict(parts.entry_points or {})
    for name, new in renames.items():  # before samples: they store outputs by name
        if name == parts.entry_point:
            parts.interface = parts.interface.with_output_names(new)
        else:
            renamed = others[name].interface.with_output_names(new)
            others[name] = dataclasses.replace(others[name], interface=renamed)
    parts.metadata = dict(metadata or {})
    chosen = dict(tolerances or {})
    known = {"program"} | {v.name for v in parts.engines}
    known |= {v.name for e in others.values() for v in e.engines}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise TrtpackError(
            f"tolerances names {unknown}: neither 'program' nor an engine variant of an entry "
            f"point ({sorted(known - {'program'})})"
        )
    if per_entry:
        bar.step("compute the reference samples")
    for name, spec in per_entry.items():
        # each entry point's samples run from the saved state (reset before each call), the
        # state ``check`` resets to; they are stored beside its other members
        use = parts.state.entry_points.get(name) if parts.state is not None else None
        reset = use.mutates if use is not None else ()
        default = name == parts.entry_point
        variants = parts.engines if default else others[name].engines
        own = {"program"} | {v.name for v in variants}
        mine = {k: t for k, t in chosen.items() if k in own}
        if default:
            _with_samples(parts, checked[name], spec, mine, max_sample_bytes, reset=reset)
            continue
        entry = PackParts(others[name].interface, parts.members, others[name].program, variants)
        _with_samples(entry, checked[name], spec, mine, max_sample_bytes,
                      member=f"entry_points/{name}/samples.safetensors", reset=reset)  # fmt: skip
        others[name] = dataclasses.replace(others[name], samples=entry.samples)
    parts.entry_points = others or None
    with bar:
        return write(parts, path, overwrite=overwrite, progress=bar)


def _entry_programs(
    values: Mapping[str, Any], source: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A multi-entry save's values as ``({name: program}, {name: compiled module})``: a
    compiled module's entry point has its source program (``trtpack.compile`` attaches it;
    ``source={name: ep}`` gives it for a module from ``torch_tensorrt.dynamo.compile``)."""
    if not isinstance(values, Mapping):
        raise ArgumentTypeError("obj", "a dict of entry point name -> program", values)
    compiled = {n: v for n, v in values.items()
                if isinstance(v, torch.nn.Module)
                or (isinstance(v, ExportedProgram) and has_engines(v))}  # fmt: skip
    if source is not None:
        if not isinstance(source, Mapping):
            raise ArgumentTypeError(
                "source", "a dict {entry point: the ExportedProgram its compiled module was "
                "compiled from} for a multi-entry save", source,
            )  # fmt: skip
        wrong = sorted(str(n) for n in source if n not in compiled)
        if wrong:
            raise TrtpackError(
                f"source= names {wrong}, which are not entry points given as compiled modules "
                f"({sorted(compiled)})"
            )
    sources = dict(source or {})
    programs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in compiled:
            programs[name] = value
            continue
        attached = getattr(value, "_trtpack", None)
        program = sources.get(name, attached.source if attached is not None else None)
        if program is None:
            raise TrtpackError(
                f"obj[{name!r}] is a compiled module without the program it was compiled "
                f"from; an entry point needs it: pass source={{{name!r}: ep}}"
            )
        if not isinstance(program, ExportedProgram):
            raise ArgumentTypeError(f"source[{name!r}]", "a torch.export.ExportedProgram", program)
        from ..engines.torchtrt import engine_constant_names

        if engine_constant_names(program):
            raise DeriveError(
                f"source[{name!r}] must be the ExportedProgram before compilation, without engines"
            )
        programs[name] = program
    return programs, compiled


def _variant_names(
    variant: Any, compiled: Mapping[str, Any], programs: Mapping[str, Any]
) -> dict[str, str]:
    """``variant=`` of a multi-entry save: one name for every compiled entry point's engine
    set, or ``{entry point: name}`` for those named."""
    if variant is None:
        return {}
    if not compiled:
        raise TrtpackError("variant= names engine sets: it applies to compiled modules, and "
                           "every entry point here is a program")  # fmt: skip
    if isinstance(variant, str):
        return dict.fromkeys(compiled, variant)
    names = _per_entry("variant", variant, programs)
    wrong = sorted(n for n in names if n not in compiled)
    if wrong:
        raise TrtpackError(
            f"variant= names {wrong}, which are given as programs, not compiled modules"
        )
    return names


def _per_entry(
    arg: str, value: Any, programs: Mapping[str, Any],
    expected: str = "a dict {entry point: value} for a multi-entry save",
) -> dict[str, Any]:  # fmt: skip
    """A per-entry-point argument of a multi-entry save (``{entry point: value}``), checked
    for names that are not entry points; entry points it does not name get nothing.
    ``expected``: what the ArgumentTypeError says the argument should be."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(arg, expected, value)
    unknown = sorted(str(n) for n in value if n not in programs)
    if unknown:
        raise TrtpackError(f"{arg}= names {unknown}, which are not entry points ({list(programs)})")
    return {n: value[n] for n in programs if n in value and value[n] is not None}


def _samples_per_entry(programs: Mapping[str, ExportedProgram], samples: Any) -> dict[str, Any]:
    """``samples=`` of a multi-entry save, per entry point: a count applies to every entry
    point; a dict ``{name: count or calls}`` to the entry points it names (calls fit one
    interface, so a bare list of calls would be ambiguous and is refused)."""
    if isinstance(samples, int) and not isinstance(samples, bool):
        return dict.fromkeys(programs, samples)
    return _per_entry("samples", samples, programs, "a count (for every entry point) or a dict "
                      "{entry point: count or list of (args, kwargs) calls}")  # fmt: skip


def _with_samples(
    parts: PackParts,
    program: ExportedProgram,
    samples: int | Sequence[Any],
    tolerances: Mapping[str, Tolerance | tuple[float, float]],
    max_sample_bytes: int | None = None,
    *,
    member: str | None = None,
    reset: Sequence[str] = (),
) -> PackParts:
    from ..samples import MEMBER, sample_members

    chosen = {k: v if isinstance(v, Tolerance) else Tolerance(*map(float, v))
              for k, v in tolerances.items()}  # fmt: skip
    unknown = sorted(set(chosen) - {"program"} - {v.name for v in parts.engines})
    if unknown:
        raise TrtpackError(
            f"tolerances names {unknown}: neither 'program' nor an engine variant "
            f"({[v.name for v in parts.engines]})"
        )
    members, entry = sample_members(
        program, parts.interface, samples, tolerance=chosen.pop("program", None),
        variants=parts.engines, variant_tolerances=chosen, max_bytes=max_sample_bytes,
        member=member or MEMBER, reset=reset,
    )  # fmt: skip
    parts.members.update(members)
    parts.samples = entry
    return parts


def has_engines(ep: ExportedProgram) -> bool:
    if all(isinstance(v, torch.Tensor) for v in ep.constants.values()):
        return False
    from ..engines.torchtrt import engine_constant_names  # imports no torch_tensorrt

    return bool(engine_constant_names(ep))


def _parts_of_compiled(
    obj: Any,
    source: ExportedProgram | None,
    ranges: Mapping[str, RangeLike] | None,
    name: str | None,
) -> PackParts:
    """A compiled module's pack: the source program (if known) as the portable fallback, and
    the engines as one variant. The interface comes from ``trtpack.compile`` (it travels with
    the module), else from the source program, else from the wired program's own JSON."""
    from ..engines.torchtrt import engine_constant_names, wire

    attached = getattr(obj, "_trtpack", None)
    if attached is not None and source is None:
        source = attached.source
    if source is not None and engine_constant_names(source):
        raise DeriveError("source= must be the ExportedProgram before compilation, without engines")
    wired = wire(obj)
    members: dict[str, Source] = {}
    ref: ProgramRef | None = None
    checked: dict[str, Source] = {}
    if source is not None:
        given = attached.interface if attached is not None else None  # compile's own
        described = describe(source, ranges=ranges, interface=given)
        members.update(described.members)
        ref, iface, checked = described.ref, described.interface, described.checked
    else:
        iface = wired.program.interface()[0]  # a torch_tensorrt program alone: its own JSON
        if ranges:
            iface = apply_ranges(iface, ranges, {})
    profiles = getattr(attached, "profiles", None)  # compiled with several profiles
    variant, engine_members = variant_from_wired(wired, iface, name=name, profiles=profiles)
    members.update(engine_members)
    return PackParts(iface, members, ref, (variant,), checked=checked)


def variant_of_compiled(
    obj: Any, iface: Interface, name: str | None
) -> tuple[Variant, dict[str, Source]]:
    """The engine variant of a compiled module, for a pack whose interface is ``iface``
    (``add_engine``)."""
    from ..engines.torchtrt import wire

    return variant_from_wired(wire(obj), iface, name=name)
