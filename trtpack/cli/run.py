"""``trtpack run``: run a pack on sample (or given) inputs, on the backend ``load`` picks and on
the ExportedProgram, and compare the two — the ``polygraphy run`` of trtpack.

Sample inputs come from the manifest alone: each symbol at its opt (or min, max, a random size
inside its range), shared symbols sharing their value, tensors random with a fixed seed,
specialized constants as recorded. A sample the manifest's guards refuse is redrawn.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputMismatchError, TrtpackError
from ..format.container import PathLike
from ..runtime import load
from ..samples import MAX_SAMPLE_BYTES, Size, given_symbols, sample_leaves, sample_symbols


@dataclass
class OutputReport:
    name: str
    shape: tuple[int, ...] | None
    dtype: str | None
    max_abs_diff: float | None = None  # backend vs program; None when only one ran


@dataclass
class RunReport:
    path: str
    backend: str
    variant: str | None
    fallback_reason: str | None
    symbols: dict[str, int]
    inputs: dict[str, tuple[int, ...] | Any]
    outputs: list[OutputReport] = field(default_factory=list)
    compared: bool = False  # True when the engines ran and the program was run too

    @property
    def max_abs_diff(self) -> float | None:
        diffs = [o.max_abs_diff for o in self.outputs if o.max_abs_diff is not None]
        return max(diffs) if diffs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "backend": self.backend, "variant": self.variant,
            "fallback_reason": self.fallback_reason, "symbols": self.symbols,
            "inputs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.inputs.items()},
            "outputs": [o.__dict__ | {"shape": list(o.shape) if o.shape else o.shape}
                        for o in self.outputs],
            "compared": self.compared, "max_abs_diff": self.max_abs_diff,
        }  # fmt: skip


def _flat_outputs(value: Any) -> list[Any]:
    import torch.utils._pytree as pytree

    return pytree.tree_flatten(value)[0]


def run_pack(
    path: PathLike,
    *,
    inputs: Mapping[str, Any] | None = None,
    size: Size = "opt",
    seed: int = 0,
    device: str | None = None,
    variant: str | None = None,
    require_engine: bool = False,
    attempts: int = 20,
    max_sample_bytes: int = MAX_SAMPLE_BYTES,
) -> RunReport:
    """Run ``path`` on sample inputs (``inputs`` replaces them by input name) on the backend
    ``load`` picks; when that is an engine variant, run the ExportedProgram too and report
    each output's largest absolute difference. ``require_engine``: raise NoUsableEngineError
    (saying why) instead of running the program alone when no engine variant (or not
    ``variant``) can run here. Sample inputs over ``max_sample_bytes`` are refused before
    they are made (SampleTooLargeError)."""
    import warnings

    with warnings.catch_warnings(record=True):  # the fallback reason is reported, not warned
        warnings.simplefilter("always")
        pack = load(path, device=device, variant=variant, require_engine=require_engine)
    manifest = pack.manifest
    unknown = sorted(set(inputs or {}) - {i.name for i in manifest.inputs})
    if unknown:
        raise TrtpackError(
            f"--input names {unknown}, which are not inputs ({[i.name for i in manifest.inputs]})"
        )
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    problem: InputMismatchError | None = None
    fixed = given_symbols(manifest, inputs or {})
    for _ in range(max(1, attempts)):
        # the given inputs' sizes win: the sampled ones share their symbols
        symbols = sample_symbols(manifest, size, rng, fixed)
        leaves = sample_leaves(manifest, symbols, gen, pack.device, max_bytes=max_sample_bytes)
        for i, spec in enumerate(manifest.inputs):
            if inputs and spec.name in inputs:
                value = inputs[spec.name]
                leaves[i] = value.to(pack.device) if isinstance(value, torch.Tensor) else value
        args, kwargs = pack.call_of(leaves)
        try:
            pack.check_inputs(*args, **kwargs)
            break
        except InputMismatchError as e:  # a guard beyond the ranges: draw again
            problem = e
            if inputs or size != "random":
                raise
    else:
        raise TrtpackError(f"no sample within {attempts} draws satisfies the guards: {problem}")
    with torch.inference_mode():  # reported, never kept
        got = _flat_outputs(pack(*args, **kwargs))
    want = None
    if pack.backend != "exported_program" and pack.exported_program is not None:
        from ..program.serialize import runnable

        with torch.inference_mode():
            want = _flat_outputs(runnable(pack.exported_program)(*args, **kwargs))
    report = RunReport(
        path=str(Path(path)), backend=pack.backend, variant=pack.variant,
        fallback_reason=pack.fallback_reason, symbols=symbols,
        inputs={s.name: tuple(v.shape) if isinstance(v, torch.Tensor) else v
                for s, v in zip(manifest.inputs, leaves)},
        compared=want is not None,
    )  # fmt: skip
    for i, (spec, value) in enumerate(zip(manifest.outputs, got)):
        diff = None
        if want is not None and isinstance(value, torch.Tensor):
            ref = want[i]
            diff = (
                float((value.double() - ref.to(value.device).double()).abs().max())
                if (value.numel())
                else 0.0
            )
        report.outputs.append(
            OutputReport(
                name=spec.name,
                shape=tuple(value.shape) if isinstance(value, torch.Tensor) else None,
                dtype=str(value.dtype).removeprefix("torch.") if isinstance(value, torch.Tensor)
                else type(value).__name__,
                max_abs_diff=diff,
            )
        )  # fmt: skip
    return report


def render(report: RunReport) -> str:
    lines = [f"{report.path}: ran on {report.backend}"
             + (f" (variant {report.variant})" if report.variant else "")]  # fmt: skip
    if report.fallback_reason:
        lines.append(f"  engines not run: {report.fallback_reason}")
    sizes = ", ".join(f"{k}={v}" for k, v in report.symbols.items()) or "all static"
    lines.append(f"  symbols: {sizes}")
    for name, value in report.inputs.items():
        shown = list(value) if isinstance(value, tuple) else repr(value)
        lines.append(f"  input  {name}: {shown}")
    for o in report.outputs:
        diff = "" if o.max_abs_diff is None else f"  max |engine - program| = {o.max_abs_diff:.3g}"
        lines.append(f"  output {o.name}: {o.dtype}{list(o.shape) if o.shape else ''}{diff}")
    if not report.compared:
        lines.append("  (one backend ran: nothing to compare)")
    return "\n".join(lines) + "\n"
