"""A short run of the fuzz campaign (tests/fuzzing.py) in CI: damaged and crafted real files
through inspect, verify, load, the CLI and migrate end in a TrtpackError or succeed — never a
raw exception, never a hang. tools/fuzz.py runs the long campaign (README: figures)."""

from __future__ import annotations

import fuzzing
import pytest


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzzing.make_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.mark.parametrize("seed", [0, 1])
def test_short_fuzz_campaign(seeds, tmp_path, seed):
    report = fuzzing.campaign(seeds, 600, seed=seed, scratch=tmp_path / "scratch",
                              keep=tmp_path / "findings")  # fmt: skip
    found = "\n".join(f"{f.seed}/{f.op}/{f.mutation}: {f.error}" for f in report.unexpected)
    assert not report.unexpected, found
    assert not report.hangs, [(h.seed, h.op, h.mutation) for h in report.hangs]
    assert report.iterations == 600
    # the damage reached the readers: most runs were refused, by several distinct errors
    assert report.expected > 300 and len(report.by_error) >= 5, report.by_error


def test_mutations_are_deterministic(seeds):
    import random

    a = [fuzzing.mutate(random.Random(5), seeds["program"])[1] for _ in range(3)]
    b = [fuzzing.mutate(random.Random(5), seeds["program"])[1] for _ in range(3)]
    assert a == b
