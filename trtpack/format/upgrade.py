"""The chain of format-version steps. No torch.

Each step is a small pure function from the manifest (a JSON dict) of one version to the
next, and may rename members (the member layout is part of the format). ``upgrade`` composes
them from a pack's version to this trtpack's ``FORMAT_VERSION``; the reader calls it, so
every older pack keeps loading, and ``trtpack migrate`` writes the result.

A step reads the manifest of an older version before anything else has checked it, so
``upgrade`` validates that manifest against the major version's JSON Schema first (the 1.x
schema only ever gains optional fields, so every 1.x manifest satisfies it: the fixtures of
each older version are checked against it), and each step also checks the type of what it
reads: a wrong type is a :class:`ManifestError` naming its path, never a raw exception.

Each format change adds a step here; ``tests/test_migrate.py::
test_every_older_version_has_a_step_and_a_fixture`` fails until the step and a fixture of the
older version exist (see schema/SPEC.md, "Versioning policy").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ManifestError, MigrationError
from .manifest import FORMAT_VERSION, validate

Version = tuple[int, int]


@dataclass(frozen=True)
class Step:
    source: Version
    target: Version
    #: manifest dict of ``source`` -> manifest dict of ``target`` (``format_version`` set by
    #: ``upgrade``); must not change its argument
    upgrade: Callable[[dict[str, Any]], dict[str, Any]]
    #: members renamed by this step: new name -> old name
    renames: Mapping[str, str] = field(default_factory=dict)
    summary: str = ""


def _v1_0_to_v1_1(data: dict[str, Any]) -> dict[str, Any]:
    # 1.1 adds the optional "guards": a 1.0 manifest recorded none. The loader reads them from
    # the pack's program (which 1.0 packs carry), so the upgrade in memory loses no check;
    # `trtpack migrate` writes them into the manifest.
    return data


def _v1_1_to_v1_2(data: dict[str, Any]) -> dict[str, Any]:
    # 1.2 adds the optional "samples" (reference inputs and outputs): a 1.1 pack has none.
    # 1.2 marks variants whose bindings were described rather than recorded: in 1.1 those are
    # the bare plans (add-engine PLAN, trtpack pack), whose engines carry no torch_tensorrt ABI.
    out = copy.deepcopy(data)
    for i, variant in enumerate(_objects(out.get("engines"), "engines")):
        engines = _objects(variant.get("engines"), f"engines/{i}/engines")
        if all(e.get("abi_version") is None for e in engines):
            variant["described"] = True
    return out


def _objects(value: Any, field: str) -> list[dict[str, Any]]:
    """``value`` as a list of JSON objects (absent: none), else a ManifestError at ``field``:
    a step reads only what has this shape."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ManifestError(
            f"manifest.json: {field} must be a list of objects, got {value!r:.80}",
            field=field, expected="a list of objects", got=value,
        )  # fmt: skip
    return value


def _v1_2_to_v1_3(data: dict[str, Any]) -> dict[str, Any]:
    # 1.3 adds two optional fields: members' per-piece digests (a 1.2 member is verified by its
    # whole SHA-256, as before) and whether a version-compatible plan embeds the lean runtime
    # (not recorded in 1.2: such a variant is loaded without host code allowed, see SPEC).
    return data


def _v1_3_to_v1_4(data: dict[str, Any]) -> dict[str, Any]:
    # 1.4 adds optional fields only, so the step is the identity:
    # - a program's "custom_ops": a 1.3 manifest recorded none (absent: not recorded). Nothing
    #   is lost: the loader gates custom operators by the graph's own call targets (graph
    #   safety), which a 1.3 pack carries as a 1.4 pack does.
    # - entry_point (absent: "forward"), entry_points (absent: one entry point) and state
    #   (absent: not declared; the loader derives what the program writes in place from its
    #   graph). A 1.3 pack is a pack with one entry point, "forward".
    return data


#: every step, keyed by the version it starts from
STEPS: dict[Version, Step] = {
    (1, 0): Step(
        (1, 0), (1, 1), _v1_0_to_v1_1, summary="input guards added (read from the program)"
    ),
    (1, 1): Step(
        (1, 1), (1, 2), _v1_1_to_v1_2, summary="no reference samples; bare plans marked described"
    ),
    (1, 2): Step(
        (1, 2), (1, 3), _v1_2_to_v1_3, summary="members verified whole (no piece digests)"
    ),
    (1, 3): Step(
        (1, 3),
        (1, 4),
        _v1_3_to_v1_4,
        summary="no custom operators recorded; one entry point, 'forward'; state not declared",
    ),
}


def chain(source: Version, steps: Mapping[Version, Step] | None = None) -> list[Step]:
    """The steps from ``source`` to FORMAT_VERSION (empty when already there)."""
    steps = STEPS if steps is None else steps
    out: list[Step] = []
    version = source
    while version != FORMAT_VERSION:
        step = steps.get(version)
        if step is None:
            have = ", ".join(f"{a}.{b}" for a, b in sorted(steps)) or "none"
            raise MigrationError(
                f"no migration step from format {version[0]}.{version[1]} towards "
                f"{FORMAT_VERSION[0]}.{FORMAT_VERSION[1]} (steps from: {have})"
            )
        out.append(step)
        version = step.target
    return out


def upgrade(
    data: dict[str, Any], steps: Mapping[Version, Step] | None = None
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Apply the chain to a manifest dict. Returns the upgraded dict, the member renames
    (current name -> name in the file) and one note per step."""
    if not isinstance(data, dict):
        raise ManifestError("manifest.json must hold a JSON object", got=type(data).__name__)
    version = data.get("format_version")
    if (
        not isinstance(version, list)
        or len(version) != 2
        or not all(type(v) is int and v >= 0 for v in version)
    ):
        raise ManifestError(f"format_version must be [major, minor], got {version!r:.80}",
                            field="format_version", got=version)  # fmt: skip
    if version[0] == FORMAT_VERSION[0] and version[1] < FORMAT_VERSION[1] and steps is None:
        # before any step reads it (a custom ``steps`` chain brings its own checks)
        _validate_old(data, (version[0], version[1]))
    renames: dict[str, str] = {}
    notes = []
    for step in chain((version[0], version[1]), steps):
        data = step.upgrade(copy.deepcopy(data))
        data["format_version"] = list(step.target)
        for new, old in step.renames.items():
            renames[new] = renames.pop(old, old)
        notes.append(f"{step.source[0]}.{step.source[1]} -> {step.target[0]}.{step.target[1]}: "
                     f"{step.summary}")  # fmt: skip
    return data, renames, notes


def _validate_old(data: dict[str, Any], version: Version) -> None:
    """The manifest of an older 1.x version against the 1.x schema, before a step reads it
    (the error says it is the file's own manifest, before any upgrade)."""
    try:
        validate(data)
    except ManifestError as e:
        head, _, rest = str(e).partition("\n")
        raise ManifestError(
            f"format {version[0]}.{version[1]} {head.rstrip(':')} (checked before its upgrade "
            f"to {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}):\n{rest}",
            field=e.field, expected=e.expected, got=e.got,
        ) from None  # fmt: skip
