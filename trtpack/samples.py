"""Reference samples: inputs and the program's outputs for them, stored in the pack (no
pickle: one safetensors member), and the check that a loaded pack — its engine variant on
this machine, or the program — reproduces them within tolerance.

    trtpack.save(ep, "m.trtpack", samples=4)                    # 4 random calls in the ranges
    trtpack.save(ep, "m.trtpack", samples=[(args, kwargs)])     # or the calls you give
    trtpack.load("m.trtpack", check=True)                       # SampleMismatchError if off
    $ trtpack check m.trtpack

Model Navigator keeps samples too; here they are hashed like every member and verified
against the backend that actually runs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.export import ExportedProgram

from .errors import ArgumentTypeError, SampleMismatchError, SampleTooLargeError, TrtpackError
from .format.container import Chunks, PackReader
from .format.manifest import Interface, Manifest, Samples, Tolerance, Variant, parse_dim

MEMBER = "samples/samples.safetensors"
#: the program reproduces its own outputs up to run-to-run noise
PROGRAM_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-5)

SampleSpec = int | Sequence[Any]
#: where in its range a sample symbol sits
Size = Literal["opt", "min", "max", "random"]


def variant_tolerance(variant: Variant) -> Tolerance:
    """The default tolerance of an engine variant, from the precisions it was built with:
    fp32/tf32 engines 1e-3, fp16/bf16 1e-2, int8/fp8 1e-1 (absolute and relative)."""
    precisions: set[str] = set()
    for engine in variant.engines:
        compilation = (engine.settings or {}).get("compilation") or {}
        for p in compilation.get("enabled_precisions") or ():
            precisions.add(str(p).lower())
    text = " ".join(precisions)
    if "int8" in text or "fp8" in text or "float8" in text:
        return Tolerance(1e-1, 1e-1)
    if "half" in text or "f16" in text or "bf16" in text or "float16" in text:
        return Tolerance(1e-2, 1e-2)
    return Tolerance(1e-3, 1e-3)


#: the most memory sample inputs made from a manifest's sizes may take (``max_sample_bytes=``,
#: ``--max-sample-size`` raise it). A manifest is data from anyone, and a valid one may say
#: a dim's opt is 2**28 or its max 2**31-2: the sizes are checked before anything is made.
#: 256 MiB is far above what a smoke test or a reference sample needs (a batch of 64 RGB
#: 512x512 images in float32 is 192 MiB, 64 prompts of 8192 int64 tokens 4 MiB), while the
#: outputs and the program's intermediates, several times the inputs, already make that a
#: 1-2 GiB process; drawn reference samples are also written into the pack.
MAX_SAMPLE_BYTES = 256 << 20


# --- sample inputs from the manifest alone (save, and `trtpack run`) ------------------------


def sample_symbols(
    manifest: Manifest, size: Size, rng: random.Random, fixed: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Each symbol's value at ``size``; ``fixed`` (what given inputs set) wins."""
    out: dict[str, int] = {}
    for name, sym in manifest.symbols.items():
        if fixed and name in fixed:
            out[name] = fixed[name]
        elif size == "min":
            out[name] = sym.min
        elif size == "max":
            if sym.max is None:
                raise TrtpackError(f"symbol {name!r} is unbounded: --size max needs a bound")
            out[name] = sym.max
        elif size == "random":
            out[name] = rng.randint(sym.min, sym.max if sym.max is not None else sym.opt * 2)
        else:
            out[name] = sym.opt
    return out


def given_symbols(manifest: Manifest, inputs: Mapping[str, Any]) -> dict[str, int]:
    """The symbol values the given inputs fix (a tensor's dims, an int input's own symbol), so
    that the sampled inputs share them instead of contradicting them. Dims that do not solve
    are left to the contract, which names the input and dim at fault."""
    fixed: dict[str, int] = {}
    for spec in manifest.inputs:
        if spec.name not in inputs:
            continue
        value = inputs[spec.name]
        if spec.is_tensor and isinstance(value, torch.Tensor) and spec.shape is not None:
            pairs = [(d, n) for d, n in zip(spec.shape, value.shape) if isinstance(d, str)]
        elif spec.symbol is not None and isinstance(value, int) and not isinstance(value, bool):
            pairs = [(spec.symbol, value)]
        else:
            continue
        for dim, size in pairs:
            expr = parse_dim(dim)
            root = expr.solve(int(size))
            if root is not None:
                fixed.setdefault(expr.symbol, root)
    return fixed


def _generation_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of the temporary ``sample_leaves`` draws a tensor of ``dtype`` in
    (0: drawn in ``dtype`` itself)."""
    if dtype.is_floating_point or dtype.is_complex:
        drawn = torch.float32
    elif dtype == torch.bool:
        drawn = torch.float32
    else:
        drawn = torch.int64
    return 0 if drawn == dtype else drawn.itemsize


def check_sample_size(
    manifest: Manifest, symbols: Mapping[str, int], max_bytes: int, *, what: str = "sample inputs"
) -> int:
    """Check the bytes ``sample_leaves`` would allocate for these sizes (every input, plus
    the largest temporary one is drawn in), computed from the manifest alone: above
    ``max_bytes`` a SampleTooLargeError naming the symbols, the largest inputs and the size.
    Returns the bytes the inputs keep (the temporary is freed)."""
    per_input: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    used: dict[str, int] = {}  # the symbols the tensors' shapes use
    temporary = 0
    for spec in manifest.inputs:
        if not spec.is_tensor:
            continue
        for d in spec.shape or ():
            if isinstance(d, str):
                name = parse_dim(d).symbol
                used[name] = symbols[name]
        shape = [_dim(d, symbols) for d in spec.shape or ()]
        numel = 1
        for d in shape:
            numel *= max(d, 0)
        dtype = getattr(torch, spec.dtype or "float32")
        per_input[spec.name] = numel * dtype.itemsize
        shapes[spec.name] = shape
        temporary = max(temporary, numel * _generation_bytes(dtype))
    needed = sum(per_input.values()) + temporary
    if needed > max_bytes:
        from .reading import human_size

        largest = sorted(per_input, key=lambda n: -per_input[n])[:3]
        inputs = ", ".join(f"{n} {shapes[n]} ({human_size(per_input[n])})" for n in largest)
        sizes = ", ".join(f"{n}={v}" for n, v in used.items()) or "all static"
        raise SampleTooLargeError(
            f"{what} would take {human_size(needed)} ({needed} bytes), over the limit of "
            f"{human_size(max_bytes)}: symbols {sizes}; largest inputs {inputs}. Raise the "
            "limit (max_sample_bytes=, --max-sample-size) or choose smaller sizes",
            needed=needed, limit=max_bytes, symbols=dict(used), inputs=per_input,
        )  # fmt: skip
    return sum(per_input.values())


def _dim(d: int | str, symbols: Mapping[str, int]) -> int:
    if isinstance(d, int):
        return d
    expr = parse_dim(d)
    return expr.value(symbols[expr.symbol])


def sample_leaves(
    manifest: Manifest,
    symbols: Mapping[str, int],
    gen: torch.Generator,
    device: torch.device,
    *,
    max_bytes: int = MAX_SAMPLE_BYTES,
) -> list[Any]:
    """One call's leaves at these symbol sizes: random tensors (from ``gen``), the symbols'
    ints, the specialized constants. Their size is checked against ``max_bytes`` first."""
    check_sample_size(manifest, symbols, max_bytes)

    def dim(d: int | str) -> int:
        return _dim(d, symbols)

    leaves: list[Any] = []
    for spec in manifest.inputs:
        if spec.is_tensor:
            shape = [dim(d) for d in spec.shape or ()]
            dtype = getattr(torch, spec.dtype or "float32")
            if dtype.is_floating_point or dtype.is_complex:
                t = torch.randn(shape, generator=gen).to(dtype)
            elif dtype == torch.bool:
                t = torch.rand(shape, generator=gen) > 0.5
            else:
                t = torch.randint(0, 8, shape, generator=gen).to(dtype)
            leaves.append(t.to(device))
        elif spec.symbol is not None:
            leaves.append(dim(spec.symbol))
        else:
            leaves.append(spec.value)
    return leaves


# --- at save: calls -> leaves -> the program's outputs -> one member --------------------------


def _leaves_of_calls(ep: ExportedProgram, iface: Interface, samples: SampleSpec,
                     seed: int, max_bytes: int | None = None) -> list[list[Any]]:  # fmt: skip
    """Each sample call's leaves in manifest order, checked by the pack's own contract. Drawn
    calls together take at most ``max_bytes`` (default ``MAX_SAMPLE_BYTES``), checked
    from the sizes before each is made (SampleTooLargeError)."""
    import torch.utils._pytree as pytree

    from .contract import Contract
    from .format.manifest import FORMAT_VERSION, Manifest, Producer
    from .reading import human_size

    if isinstance(samples, (bool, str, bytes)) or not isinstance(samples, (int, Sequence)):
        raise ArgumentTypeError("samples", "a count or a list of (args, kwargs) calls", samples)
    probe = Manifest(FORMAT_VERSION, Producer("-", "-"), iface, {}, None)
    contract = Contract(probe, device=torch.device("cpu"))
    if not isinstance(samples, int):
        out = []
        for call in samples:
            if isinstance(call, tuple) and len(call) == 2 and isinstance(call[1], Mapping):
                args, kwargs = call
            elif isinstance(call, (tuple, list)):
                args, kwargs = tuple(call), {}
            else:
                args, kwargs = (call,), {}
            out.append(contract(tuple(args), dict(kwargs)))  # InputMismatchError if not a call
        if not out:
            raise TrtpackError("samples=[]: give at least one call")
        return out
    if samples < 1:
        raise TrtpackError(f"samples={samples}: give at least one")
    limit = MAX_SAMPLE_BYTES if max_bytes is None else max_bytes
    budget = limit  # every sample is kept until the member is written: one budget for all
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(samples):  # the first at the symbols' opt, the others at random sizes
        for _ in range(50):
            symbols = sample_symbols(probe, "opt" if i == 0 else "random", rng)
            before = f" (after {human_size(limit - budget)} for the samples before it)" if i else ""
            what = f"samples={samples}: sample {i}'s inputs{before}"
            need = check_sample_size(probe, symbols, budget, what=what)
            leaves = sample_leaves(probe, symbols, gen, torch.device("cpu"), max_bytes=budget)
            args, kwargs = pytree.tree_unflatten(leaves, ep.call_spec.in_spec)
            try:
                out.append(contract(tuple(args), dict(kwargs)))
                budget -= need
                break
            except TrtpackError:  # a guard beyond the ranges: draw again
                continue
        else:
            raise TrtpackError("no random sample within 50 draws satisfies the guards")
    return out


def sample_members(
    ep: ExportedProgram,
    iface: Interface,
    samples: SampleSpec,
    *,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    variants: Sequence[Variant] = (),
    variant_tolerances: Mapping[str, Tolerance] | None = None,
    max_bytes: int | None = None,
    member: str = MEMBER,
    reset: Sequence[str] = (),
) -> tuple[dict[str, Chunks], Samples]:
    """The samples member (inputs and the program's outputs on the CPU) and its manifest
    entry. Each call is checked against the interface first; drawn calls' inputs take at
    most ``max_bytes`` together (see ``_leaves_of_calls``). ``reset``: the tensors (by
    name) the program writes in place (a KV cache), put back to their saved values before
    each call, and after the last (a multi-entry pack's samples run from the saved state, as
    ``check`` runs them after ``reset_state()``)."""
    import functools

    import torch.utils._pytree as pytree

    from .program.serialize import runnable, safetensors_chunks

    calls = _leaves_of_calls(ep, iface, samples, seed, max_bytes)
    module = runnable(ep)
    # the module's tensors are the program's (ep.module() shares them): restoring them after
    # the last call also leaves the caller's program as it was given
    state: dict[str, Any] = {n: functools.reduce(getattr, n.split("."), module) for n in reset}
    saved = {n: t.detach().clone() for n, t in state.items()}
    tensors: dict[str, torch.Tensor] = {}
    for i, leaves in enumerate(calls):
        args, kwargs = pytree.tree_unflatten(leaves, ep.call_spec.in_spec)
        with torch.inference_mode():
            for n, t in state.items():
                t.copy_(saved[n])
            outputs = pytree.tree_leaves(module(*args, **kwargs))
        for spec, value in zip(iface.inputs, leaves):
            if isinstance(value, torch.Tensor):
                tensors[f"sample{i}/input/{spec.name}"] = value.detach().cpu().contiguous()
            elif spec.symbol is not None:  # a dynamic int: kept as a 0-d tensor
                tensors[f"sample{i}/input/{spec.name}"] = torch.tensor(int(value))
        for spec, value in zip(iface.outputs, outputs):
            if isinstance(value, torch.Tensor):
                tensors[f"sample{i}/output/{spec.name}"] = value.detach().cpu().contiguous()
    chosen = dict(variant_tolerances or {})
    for v in variants:
        chosen.setdefault(v.name, variant_tolerance(v))
    with torch.inference_mode():
        for n, t in state.items():
            t.copy_(saved[n])
    entry = Samples(
        member, len(calls), tolerance or PROGRAM_TOLERANCE, dict(sorted(chosen.items()))
    )
    return {member: safetensors_chunks(tensors, {"trtpack": "samples"})}, entry


# --- at check: the member -> calls -> the loaded pack's outputs, compared ---------------------


@dataclass
class OutputError:
    sample: int
    output: str
    max_abs_error: float
    worst_excess: float  # max(|got - want| - (atol + rtol * |want|)); > 0 fails


@dataclass
class CheckReport:
    backend: str
    variant: str | None
    tolerance: Tolerance
    samples: int
    errors: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(e.worst_excess <= 0 for e in self.errors)

    def worst(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for e in self.errors:
            out[e.output] = max(out.get(e.output, 0.0), e.max_abs_error)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "variant": self.variant, "passed": self.passed,
                "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
                "samples": self.samples, "max_abs_error": self.worst()}  # fmt: skip


def read_samples(reader: PackReader, samples: Samples) -> dict[str, torch.Tensor]:
    from .program.serialize import read_safetensors

    # memory of their own, the bytes the check hashed (``verify(owned=True)``): a file
    # changed meanwhile neither kills the check (SIGBUS) nor feeds it unchecked bytes
    tensors, _ = read_safetensors(reader.owned(samples.member), samples.member)
    return tensors


def check_entry_points(pack: Any, names: Sequence[str] | None = None) -> dict[str, CheckReport]:
    """Check the reference samples of every entry point that has some (``names``: these,
    each of which must have some); each entry point's report is also its ``check_report``.
    A pack of one program: its own check. Raises SampleMismatchError naming the entry point."""
    if names is None:
        names = [n for n in pack.entry_points if pack[n].manifest.samples is not None]
        if not names:  # none has any: the single-program error, naming the pack
            names = [pack.manifest.default_entry_point]
    reports: dict[str, CheckReport] = {}
    for name in names:
        entry = pack[name]
        entry.check_report = reports[name] = check(entry)
    return reports


def check(pack: Any, tensors: Mapping[str, torch.Tensor] | None = None) -> CheckReport:
    """Run a loaded pack's reference samples on its backend; compare with the stored outputs
    at the backend's tolerance. Raises SampleMismatchError naming the worst output.

    An entry point of a pack that declares state (format 1.4) runs each sample from the
    saved state, as ``save`` computed it: ``reset_state()`` before each sample and after
    the last (the check leaves the state as loaded, whatever calls came before it)."""
    import torch.utils._pytree as pytree

    manifest = pack.manifest
    samples: Samples | None = manifest.samples
    multi = manifest.entry_point is not None or len(pack.entry_points) > 1
    name = manifest.default_entry_point if multi else None
    if samples is None:
        of = f" for entry point {name!r}" if name is not None else ""
        raise TrtpackError(
            f"{pack.info.path} holds no reference samples{of} (save it with samples=)"
        )
    stateful = manifest.state is not None
    if tensors is None:
        from .format.container import PackReader as Reader

        with Reader(pack.info.path) as reader:
            member = manifest.members[samples.member]
            reader.verify(samples.member, member, owned=True)
            tensors = read_samples(reader, samples)
    tolerance = samples.tolerance_of(pack.variant if pack.backend != "exported_program" else None)
    report = CheckReport(pack.backend, pack.variant, tolerance, samples.count)
    try:
        for i in range(samples.count):
            leaves: list[Any] = []
            for spec in manifest.inputs:
                stored = tensors.get(f"sample{i}/input/{spec.name}")
                if spec.is_tensor:
                    if stored is None:
                        raise TrtpackError(f"sample {i} lacks input {spec.name!r}")
                    leaves.append(stored.to(pack.device))
                elif spec.symbol is not None and stored is not None:
                    leaves.append(int(stored))
                else:
                    leaves.append(spec.value)
            args, kwargs = pack.call_of(leaves)
            if stateful:
                pack.reset_state()
            with torch.inference_mode():  # compared, never kept
                got = pytree.tree_leaves(pack(*args, **kwargs))
            for spec, value in zip(manifest.outputs, got):
                want = tensors.get(f"sample{i}/output/{spec.name}")
                if want is None or not isinstance(value, torch.Tensor):
                    continue
                g, w = value.detach().cpu().double(), want.double()
                if g.shape != w.shape:
                    shapes = f"shape {list(g.shape)}, stored {list(w.shape)}"
                    raise SampleMismatchError(sample=i, output=spec.name, error=float("inf"),
                                              tolerance=tolerance, detail=shapes,
                                              entry_point=name)  # fmt: skip
                diff = (g - w).abs()
                excess = diff - (tolerance.atol + tolerance.rtol * w.abs())
                report.errors.append(OutputError(
                    i, spec.name, float(diff.max()) if diff.numel() else 0.0,
                    float(excess.max()) if excess.numel() else -1.0,
                ))  # fmt: skip
    finally:  # the state as loaded, also after a mismatch
        if stateful:
            pack.reset_state()
    bad = [e for e in report.errors if e.worst_excess > 0]
    if bad:
        e = max(bad, key=lambda e: e.worst_excess)
        raise SampleMismatchError(sample=e.sample, output=e.output, error=e.max_abs_error,
                                  tolerance=tolerance, report=report,
                                  entry_point=name)  # fmt: skip
    return report
