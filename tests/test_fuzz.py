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


def test_signed_and_older_packs_campaign(seeds, tmp_path):
    """The new surfaces: a signed pack through verify(key=) and load(require_signature=) with
    its pack or bundle damaged (a success must have read the signed members), and packs of
    format 1.0-1.2 through every reader's upgrade. Seed 1 reaches, within 400 iterations,
    the re-signed statements whose resources raised TypeError before signing checked them."""
    sub = {k: v for k, v in seeds.items() if k.split(".")[0] in ("signed", *fuzzing.OLDER)}
    report = fuzzing.campaign(sub, 400, seed=1, scratch=tmp_path / "scratch")
    found = "\n".join(f"{f.seed}/{f.op}/{f.mutation}: {f.error}" for f in report.unexpected)
    assert not report.unexpected, found
    assert not report.hangs, [(h.seed, h.op, h.mutation) for h in report.hangs]
    assert report.iterations == 400
    # refused by the signature check, the hash check and the manifest/upgrade checks
    assert report.by_error.get("SignatureError", 0) > 100, report.by_error
    assert {"IntegrityError", "ManifestError"} <= set(report.by_error), report.by_error
    assert report.accepted > 50, report.accepted  # and undamaged-enough packs still load
