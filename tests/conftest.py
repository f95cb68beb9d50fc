from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/models.py and helpers


@pytest.fixture(scope="session")
def exported():
    """Export each model case once per session: {name: (case, model, ep)}."""
    from models import CASES

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            case = CASES[name]
            model, ep = case.export()
            cache[name] = (case, model, ep)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def small_pack(tmp_path_factory, exported):
    """A saved pack of the keyword model, shared by read-only tests."""
    import trtpack

    _, _, ep = exported("keywords")
    path = tmp_path_factory.mktemp("packs") / "keywords.trtpack"
    trtpack.save(ep, path, metadata={"model": "keywords"})
    return path
