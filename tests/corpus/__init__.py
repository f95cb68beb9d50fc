"""Corpus of models nobody on the team wrote (issue 9): torch.export's example database.

Each case is declarative: name, a builder returning (model, args, kwargs, dynamic_shapes).
Transformers / torchvision / timm cases are not written yet (see issue 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    build: Callable[[], tuple[Any, tuple, dict, Any]]


def _exportdb_cases() -> list[Case]:
    from torch._export.db.examples import all_examples

    cases = []
    for name, ex in sorted(all_examples().items()):

        def build(ex=ex):
            return (
                ex.model,
                tuple(ex.example_args),
                dict(ex.example_kwargs or {}),
                ex.dynamic_shapes,
            )

        cases.append(Case(f"exportdb/{name}", "exportdb", build))
    return cases


def cases() -> list[Case]:
    return _exportdb_cases()
