"""``trtpack preflight``: which engine variant ``load`` would pick on machines you do not have.

Each target is a described machine (``sm=8.9,trt=10.13,os=linux,arch=x86_64``) turned into the
same :class:`~trtpack.engines.select.Environment` that ``load`` probes on a real one, and
decided by the same :func:`~trtpack.engines.select.load_choice`. Reads the manifest only: no
torch, no engine bytes. What it cannot foresee is said in the report: ``load`` still checks the
chosen variant's members and lets TensorRT deserialize it, and falls to the next one if that
fails.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engines.select import load_choice, parse_target, runtime_for
from ..errors import TargetSpecError
from ..reading import inspect

PathLike = str | os.PathLike[str]

#: a fleet file: bytes and targets (each line one target)
MAX_TARGETS_FILE_BYTES = 1 << 20
MAX_TARGETS = 1_000


@dataclass(frozen=True)
class TargetReport:
    """One target: the variant load would pick (None: the program), the runtime that would run
    it, the other fitting variants in load's order, and why each other variant would not run."""

    target: str
    chosen: str | None
    runtime: str | None
    fallbacks: tuple[str, ...]
    refused: dict[str, str]
    #: what load would do: "engine", "program" (falls back) or "fails" (engines only, none fit)
    outcome: str

    def to_dict(self) -> dict:
        return {**asdict(self), "fallbacks": list(self.fallbacks)}


def read_targets(path: PathLike) -> list[str]:
    """A fleet file: one target description per line; blank lines and ``#`` comments skipped."""
    size = Path(path).stat().st_size
    if size > MAX_TARGETS_FILE_BYTES:
        raise TargetSpecError(f"{path}: {size} bytes, over the {MAX_TARGETS_FILE_BYTES}-byte "
                              "limit of a targets file")  # fmt: skip
    lines = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    targets = [line for line in lines if line]
    if not targets:
        raise TargetSpecError(f"{path} lists no target")
    return targets


def preflight(pack: PathLike, targets: list[str] | tuple[str, ...]) -> list[TargetReport]:
    """For each described target, what ``trtpack.load(pack)`` would choose there and why every
    other variant would not run. Torch-free; reads and checks the manifest only."""
    if not targets:
        raise TargetSpecError("no target given (--target SPEC or --targets FILE)")
    if len(targets) > MAX_TARGETS:
        raise TargetSpecError(f"{len(targets)} targets, over the limit of {MAX_TARGETS}")
    parsed = [parse_target(t) for t in targets]  # every description parses before any work
    manifest = inspect(pack).manifest
    reports = []
    for name, env, host_code in parsed:
        choice = load_choice(manifest.engines, env, host_code_allowed=host_code)
        refused = dict(choice.refused)
        if choice.fitting:
            best = choice.fitting[0]
            chosen: str | None = best.name
            runtime: str | None = runtime_for(best.target, env, whole_graph=best.whole_graph)
            outcome = "engine"
        else:
            chosen = runtime = None
            outcome = "program" if manifest.program is not None else "fails"
            if not manifest.engines:
                refused = {}
        reports.append(TargetReport(name, chosen, runtime,
                                    tuple(v.name for v in choice.fitting[1:]), refused,
                                    outcome))  # fmt: skip
    return reports


def render(reports: list[TargetReport]) -> str:
    lines = []
    for r in reports:
        if r.outcome == "engine":
            head = f"variant {r.chosen} (via {r.runtime})"
            if r.fallbacks:
                head += f"; if it fails to deserialize: {', '.join(r.fallbacks)}"
        elif r.outcome == "program":
            head = "no engine: falls back to the ExportedProgram"
        else:
            head = "no engine and no program: load fails"
        lines.append(f"{r.target}: {head}")
        lines += [f"  {name}: {why}" for name, why in r.refused.items()]
    return "\n".join(lines) + "\n"
