"""``build``: a whole-graph TensorRT-RTX engine variant built from a pack's own
ExportedProgram, on this machine (no GPU needed), for named GPUs, and added to the pack.

What the engine is comes from the manifest: its inputs are the tensor inputs (names, dtypes,
one optimization profile from each symbol's min/opt/max), its outputs the outputs, by name.
``engines/build.py`` carries that out (ONNX export, TensorRT-RTX's parser and builder); the
variant is made by the one variant builder (``engines/variants.py``) and written by
``writing.add.add_variants``, as for ``add_engine``.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..engines.plan import parse_plan
from ..engines.variants import (
    EngineFacts,
    build_variant,
    default_variant_name,
    whole_graph_bindings,
)
from ..errors import ArgumentTypeError, EngineError, RangeOverrideError
from ..format.container import FileSlice, PackReader, PathLike, Source
from ..format.manifest import Interface, Manifest, Target, Variant, parse_dim
from ..format.progress import Progress, ProgressArg
from ..program.derive import Range, RangeLike, apply_ranges
from ..program.serialize import load_program  # torch: trtpack.build without it names trtpack[torch]
from ..reading import PackInfo
from .add import add_variants

#: the GPUs ``build`` (and ``trtpack build`` without --target) builds for: Ampere and Ada
DEFAULT_TARGETS = ("8.6", "8.9")


def build(
    pack: PathLike,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    *,
    variant: str | None = None,
    out: PathLike | None = None,
    ranges: Mapping[str, RangeLike] | None = None,
    overwrite: bool = False,
    progress: ProgressArg = None,
    entry_point: str | None = None,
) -> PackInfo:
    """Build a TensorRT-RTX engine of the pack's program for the GPUs ``targets`` names
    (compute capabilities: ``("8.6", "8.9", "12.0")`` or ``"8.6,8.9"``) and add it to ``pack``
    as variant ``variant`` (default: from the targets, ``rtx_sm86_sm89``), written atomically to
    ``out`` (default: in place; an existing ``out`` other than ``pack`` is replaced only with
    ``overwrite=True``). ``targets`` defaults to ``DEFAULT_TARGETS``, as ``trtpack build``
    does without ``--target``. Needs ``tensorrt_rtx``, ``onnx`` and ``onnxscript``
    (``pip install 'trtpack[rtx]'``), not a GPU.

    The engine's inputs are the manifest's tensor inputs (constants torch.export specialized
    are not inputs), with one optimization profile: each symbol's min/opt/max. ``ranges``
    narrows a symbol for this engine only (``{"x_dim0": (1, 32)}``; an unbounded symbol must
    be bounded so); the variant records the range it covers. Refused with an ``EngineError``:
    an unbounded symbol, a dynamic int input, a dtype TensorRT-RTX lacks, ops the ONNX
    exporter or TensorRT-RTX's parser cannot take (their errors are in the message).
    ``progress``: as for ``save`` (``trtpack.format.progress``): the steps (load the program,
    export ONNX and build the engine), then the bytes written. ``entry_point``: a multi-entry
    pack's entry point to build (default: the default one); one that writes state in place is
    refused, saying why (``add_engine``'s rule).
    """
    bar = Progress("build", progress)
    from ..engines.build import build_plan, check_targets, plan_view

    ccs = parse_targets(targets)
    check_targets(ccs)

    def make(
        reader: PackReader, m: Manifest, whole: Manifest
    ) -> tuple[list[Variant], dict[str, Source]]:
        where = str(reader.path)
        iface = engine_interface(m, ranges, where=where)
        names = [o.name for o in m.outputs]
        inputs, outputs = whole_graph_bindings(iface, where=where, output_names=names)
        name = variant or default_variant_name(
            Target("tensorrt_rtx", "", ccs, "none", version_compatible=False)
        )
        if name in {v.name for v in m.engines}:  # before the build, not after it
            raise EngineError(
                f"{where} already has an engine variant named {name!r}; pick another name "
                "with variant=... (--variant)",
                field="variant",
                got=name,
            )
        bar.step("load the program")
        ep = _program(reader, m, whole)
        # the pack's mapped weights leave memory once exported, and the plan is a file
        # copied into the pack piece by piece (engines/build.py: peak memory)
        built = build_plan(ep, inputs, outputs, ccs, where=where, workdir=workdir,
                           progress=bar, exported=reader.release_pages)  # fmt: skip
        del ep
        with plan_view(built) as plan:
            header = parse_plan(plan, where="the built engine")
            if header.flavor != "tensorrt_rtx" or header.compute_capabilities != ccs:
                raise EngineError(
                    f"the built engine's header says {header.flavor} for compute capabilities "
                    f"{list(header.compute_capabilities)}; asked for tensorrt_rtx for "
                    f"{list(ccs)}",
                    field="compute_capabilities",
                    expected=ccs,
                    got=header.compute_capabilities,
                )
            facts = EngineFacts("engine", plan, inputs, outputs)
            v, members = build_variant([facts], m.interface, wiring=None, name=name)
            del facts
        (spec,) = v.engines
        members[spec.member] = FileSlice(built.path, 0, built.size)  # not the map: read as copied
        settings = {"build": built.settings}
        v = dataclasses.replace(v, engines=(dataclasses.replace(spec, settings=settings),))
        return [v], members

    with tempfile.TemporaryDirectory(prefix="trtpack-build-") as tmp:
        workdir = Path(tmp)  # the ONNX export, then the plan until it is in the pack
        return add_variants(pack, make, out=out, overwrite=overwrite, progress=bar,
                            entry_point=entry_point)  # fmt: skip


def parse_targets(targets: Sequence[str] | str) -> tuple[str, ...]:
    """``"8.6,8.9"``, ``["8.6", "sm89"]`` -> ``("8.6", "8.9")``: compute capabilities, in the
    order a plan header lists them (ascending), each once. Whether this tensorrt_rtx builds
    for them is checked when it builds."""
    if isinstance(targets, str):
        targets = targets.split(",")
    if not isinstance(targets, Sequence) or not all(isinstance(t, str) for t in targets):
        raise ArgumentTypeError("targets", 'compute capabilities ("8.6", "8.9")', targets)
    out = set()
    for raw in targets:
        text = raw.strip().lower().removeprefix("sm").removeprefix("_")
        if "." not in text and text.isdigit() and len(text) >= 2:
            text = f"{text[:-1]}.{text[-1]}"  # sm86, 86 -> 8.6
        major, dot, minor = text.partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise EngineError(
                f"target {raw!r} is not a compute capability: give e.g. 8.6, 8.9, 12.0 (or sm86)",
                field="targets",
                got=raw,
            )
        out.add((int(major), int(minor)))
    if not out:
        raise EngineError("no target: name the GPUs to build for, e.g. 8.6,8.9", field="targets")
    return tuple(f"{a}.{b}" for a, b in sorted(out))


_RANGE_TEXT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)\.\.(\d+)(?:@(\d+))?$")


def parse_range(text: str) -> tuple[str, Range]:
    """``x_dim0=1..64`` or ``x_dim0=1..64@8`` (the CLI's ``--range``)."""
    m = _RANGE_TEXT.match(text.replace(" ", ""))
    if not m:
        raise RangeOverrideError(
            f"--range {text!r}: expected SYMBOL=MIN..MAX or SYMBOL=MIN..MAX@OPT (x_dim0=1..64@8)"
        )
    lo, hi = int(m[2]), int(m[3])
    return m[1], Range(lo, hi, None if m[4] is None else int(m[4]))


def engine_interface(
    m: Manifest, ranges: Mapping[str, RangeLike] | None, *, where: str
) -> Interface:
    """The interface the engine is built for: the manifest's, with ``ranges`` applied; refused
    when it has no program, a dynamic int input, a non-tensor output or an unbounded symbol."""
    if m.program is None:
        raise EngineError(f"{where} holds no ExportedProgram to build an engine from")
    iface = apply_ranges(m.interface, ranges) if ranges else m.interface
    for spec in iface.inputs:
        if spec.kind == "int" and spec.symbol is not None:
            raise EngineError(
                f"{where}: input {spec.name!r} ({spec.path}) is a dynamic int; a whole-graph "
                "TensorRT engine takes tensors only (export it as a constant, or as a tensor)",
                field="inputs",
                got=spec.name,
            )
    for spec in iface.outputs:
        if not spec.is_tensor:
            raise EngineError(
                f"{where}: output {spec.name!r} ({spec.path}) is a {spec.kind}, not a tensor; a "
                "whole-graph TensorRT engine returns tensors only",
                field="outputs",
                got=spec.name,
            )
    unbounded: dict[str, list[str]] = {}
    for spec in iface.inputs:
        for i, d in enumerate(spec.shape or ()):
            if isinstance(d, str):
                sym = parse_dim(d).symbol
                if iface.symbols[sym].max is None:
                    unbounded.setdefault(sym, []).append(f"{spec.name} dim {i}")
    if unbounded:
        lo = {sym: iface.symbols[sym].min for sym in unbounded}
        what = "; ".join(f"{sym!r} ({', '.join(dims)}): [{lo[sym]}, inf]"
                         for sym, dims in sorted(unbounded.items()))  # fmt: skip
        bound = ", ".join(f"{sym!r}: ({lo[sym]}, MAX)" for sym in sorted(unbounded))
        flags = " ".join(f"--range {sym}={lo[sym]}..MAX" for sym in sorted(unbounded))
        raise EngineError(
            f"{where}: {'symbol' if len(unbounded) == 1 else 'symbols'} without an upper bound: "
            f"{what}; a TensorRT engine's profile needs one. Bound "
            f"{'it' if len(unbounded) == 1 else 'them'} for this engine with "
            f"ranges={{{bound}}} ({flags}), or export with torch.export.Dim(..., max=MAX)",
            field="symbols",
            got=sorted(unbounded),
        )
    return iface


def _program(reader: PackReader, m: Manifest, whole: Manifest) -> Any:
    """The entry point's ExportedProgram (``m``: its manifest; ``whole``: the pack's), its
    members checked against their SHA-256 first. Another entry point's program references the
    default program's tensors (format 1.4), which are loaded for it."""
    from ..program.serialize import _rebuild_state, _weights_buffer

    assert m.program is not None
    refs = [m.program]
    if whole.program is not None and whole.program != m.program:
        refs.append(whole.program)
    for ref in refs:
        for name in (ref.graph, ref.weights):
            reader.verify(name, m.members[name])
    shared = {}
    if len(refs) > 1:
        default = refs[1].weights
        state_dict, constants = _rebuild_state(_weights_buffer(reader, default, None, True),
                                               default, None)  # fmt: skip
        shared[default] = {**state_dict, **constants}
    # the file's map, not a copy of its own: read once by the ONNX export, then released
    # (reader.release_pages) before the builder runs
    return load_program(reader, m, mmap=True, shared=shared)
