from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/models.py and helpers

# --- skips: in CI only the expected ones (docs/testing.md) ---------------------------------

#: The only skip reasons a CI run (``CI=true``) accepts, as regular expressions searched in
#: the reason, with why each is expected; any other skip fails the run, so a missing package
#: or tool cannot turn into a green run of skips. A live run (``TRTPACK_LIVE=1``,
#: tools/live_tests.sh) accepts none of them for the tests marked ``engine``.
EXPECTED_SKIPS: dict[str, str] = {
    r"^no CUDA GPU on this machine\b": (
        "CI machines have no GPU: the live engine and GPU tests run with tools/live_tests.sh "
        "on a machine with a supported GPU; the CUDA graph and streamed-load tests "
        "(tests/test_cuda_graphs.py, tests/test_staging.py, marked gpu) with "
        "tools/gpu_bench_cuda.sh on the lent GPU machine"
    ),
    r"^TensorRT-RTX does not run engines on compute capability \S+\b": (
        "a GPU that TensorRT-RTX refuses (an H100 is 9.0): its live engine tests cannot run there"
    ),
    r"^assumes a machine without a CUDA GPU; this one has one$": (
        "the no_gpu tests check the fallback of a machine without a GPU; on a GPU machine "
        "their gpu/engine twins run"
    ),
    r"^ExportDB case exportdb/\w+: torch\.export refuses it \(pinned in tests/test_corpus\.py\)": (
        "torch.export itself does not export these examples: each case is named in "
        "tests/test_corpus.py, and a listed case that exports fails the run"
    ),
    r"^corpus case \S+: torch's serializer refuses it \(pinned in tests/test_model_corpus\.py\)": (
        "torch.export.save refuses these models' programs as trtpack.save does (an op torch "
        "cannot serialize): each is named in tests/test_model_corpus.py"
    ),
}

#: Whole-file skips each environment accepts, for the other environment's files: .venv-trt
#: (the one with torch_tensorrt) has no MLflow, oras or tritonclient, on purpose, and .venv
#: no torch_tensorrt; each file's tests run in the other one, where such a skip fails CI.
EXPECTED_FILE_SKIPS: dict[bool, dict[str, str]] = {
    True: {  # .venv-trt
        r"^could not import '(mlflow|oras|tritonclient|transformers)\b": (
            ".venv-trt runs only the torch_tensorrt, vision and program-path tests; the "
            "integrations' and the transformers models' tests (tests/test_multi_entry.py) run "
            "in .venv"
        ),
    },
    False: {  # .venv
        r"^torch_tensorrt is not installed here \(tools/setup\.sh trt\)$": (
            "tests/test_torch_tensorrt.py runs in .venv-trt"
        ),
    },
}


#: Test-level skips each environment accepts beyond EXPECTED_SKIPS: .venv-trt runs the
#: program-path tests too (tools/test.sh), on a CUDA build of torch 2.14.1.
EXPECTED_ENV_SKIPS: dict[bool, dict[str, str]] = {
    True: {  # .venv-trt
        r"^this torch is a CUDA build$": (
            "the CPU-only-build test (tests/test_roundtrip.py) runs in .venv, whose torch 2.13 "
            "is a CPU build; .venv-trt's torch 2.14.1 is a CUDA build"
        ),
    },
    False: {},  # .venv
}


@functools.cache
def _trt_env() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_tensorrt") is not None


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _live() -> bool:
    return os.environ.get("TRTPACK_LIVE", "") == "1"


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _unexpected_skip(
    report: pytest.CollectReport | pytest.TestReport, engine: bool, expected: dict[str, str]
) -> None:
    """Turn a skip that neither CI nor a live run expects into a failure, saying why."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return  # an xfail is reported as a skip: strict xfails are checked by pytest itself
    reason = _skip_reason(report)
    if engine and _live():
        why = "a live run (TRTPACK_LIVE=1) runs every test marked engine"
    elif _ci() and not any(re.search(p, reason) for p in expected):
        why = "CI=true accepts only the skips in tests/conftest.py EXPECTED_SKIPS"
    else:
        return
    report.outcome = "failed"
    report.longrepr = f"unexpected skip: {reason}\n({why}; see docs/testing.md)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    engine = item.get_closest_marker("engine") is not None
    _unexpected_skip(
        outcome.get_result(), engine, {**EXPECTED_SKIPS, **EXPECTED_ENV_SKIPS[_trt_env()]}
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (``importorskip`` of a missing package) skips a whole file."""
    outcome = yield
    _unexpected_skip(
        outcome.get_result(), False, {**EXPECTED_SKIPS, **EXPECTED_FILE_SKIPS[_trt_env()]}
    )


def pytest_collection_modifyitems(config, items):
    """``no_gpu`` tests check the fallback a machine without a GPU takes: on a GPU machine
    they skip, saying so (their GPU counterparts are marked ``gpu``/``engine``)."""
    marked = [item for item in items if item.get_closest_marker("no_gpu")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        skip = pytest.mark.skip(reason="assumes a machine without a CUDA GPU; this one has one")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_by_default(request, monkeypatch):
    """The suite feeds CPU tensors: on a GPU machine, ``load()`` without ``device=`` (which
    picks the GPU) is pinned to the CPU, except in tests marked ``gpu`` or ``engine``."""
    if request.node.get_closest_marker("gpu") or request.node.get_closest_marker("engine"):
        return
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    import trtpack.runtime

    monkeypatch.setattr(trtpack.runtime, "default_device", lambda: torch.device("cpu"))


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


# --- the generated schema validator, checked against jsonschema on everything the suite reads

_cross_checked = 0


def pytest_sessionstart(session):
    """Every manifest the suite validates (saved, loaded, migrated, fuzzed, ...) is also
    validated by jsonschema, the schema's reference implementation: the generated validator
    (trtpack/format/schema_check.py) must find the same errors, at the same paths, with the
    same messages (tests/test_schema_check.py adds thousands of mutated manifests). Only
    the manifests validated in this process are seen, not those of subprocesses."""
    import schema_reference

    from trtpack.format import schema_check

    generated = schema_check.errors

    def errors(data, lenient=False):
        global _cross_checked
        got = generated(data, lenient)
        schema_reference.assert_same(got, data, lenient)
        _cross_checked += 1
        return got

    errors.__wrapped__ = generated  # type: ignore[attr-defined]
    schema_check.errors = errors


def pytest_terminal_summary(terminalreporter):
    if _cross_checked:
        terminalreporter.write_line(
            f"schema cross-check: {_cross_checked} manifests validated in these tests by the "
            "generated validator and by jsonschema, with the same errors"
        )
