"""The manifest: the JSON Schema is the source of truth, and the dataclasses, the spec's field
tables and the version lock must agree with it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trtpack
from trtpack.format import manifest as mf

ROOT = Path(__file__).resolve().parent.parent

PAIRS = [
    (mf.Manifest, None),
    (mf.Producer, "producer"),
    (mf.IOSpec, "io"),
    (mf.Symbol, "symbol"),
    (mf.Member, "member"),
    (mf.ProgramRef, "program"),
    (mf.Variant, "variant"),
    (mf.Target, "target"),
    (mf.EngineSpec, "engine"),
    (mf.Binding, "binding"),
    (mf.Guard, "guard"),
    (mf.Samples, "samples"),
    (mf.Tolerance, "tolerance"),
]


@pytest.mark.parametrize(("cls", "definition"), PAIRS, ids=[c.__name__ for c, _ in PAIRS])
def test_dataclasses_mirror_the_schema(cls, definition):
    schema = mf.load_schema()
    obj = schema if definition is None else schema["$defs"][definition]
    fields = {}
    for f in dataclasses.fields(cls):  # an inlined dataclass's fields sit in the parent's JSON
        if f.metadata.get("json") == "inline":
            sub = getattr(mf, f.type) if isinstance(f.type, str) else f.type
            fields.update({g.name: g for g in dataclasses.fields(sub)})
        else:
            fields[f.name] = f
    derived = set(getattr(cls, "JSON_DERIVED", ()))  # written from a property, always
    assert set(fields) | derived == set(obj["properties"]), f"{cls.__name__} vs schema properties"
    assert derived <= set(obj.get("required", ()))
    optional_in_code = {
        n
        for n, f in fields.items()
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    required_in_schema = set(obj.get("required", ()))
    # a field with a default may still be required in JSON (it is always written), but a
    # field required in code must be required in the schema
    assert set(fields) - optional_in_code <= required_in_schema
    optional_in_schema = set(fields) - required_in_schema
    assert optional_in_schema <= optional_in_code
    assert obj.get("additionalProperties") is False


def test_spec_field_tables_are_generated_from_the_schema():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_spec.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_schema_changes_come_with_a_version_bump():
    lock = json.loads((ROOT / "schema" / "schema.lock.json").read_text())
    version = f"{mf.FORMAT_VERSION[0]}.{mf.FORMAT_VERSION[1]}"
    assert version in lock, f"no schema fingerprint recorded for {version}"
    assert lock[version] == mf.schema_fingerprint(), (
        f"schema/manifest.v{mf.FORMAT_VERSION[0]}.schema.json changed without a version bump. "
        "A new optional field: bump the minor; anything else: bump the major. Then add a "
        "migration step and run tools/update_schema_lock.py (see schema/SPEC.md)."
    )


def test_schema_is_shipped_in_the_wheel_config():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"schema" = "trtpack/_schema"' in text
    assert mf.schema_path().name == "manifest.v1.schema.json" and mf.schema_path().is_file()


def test_the_schema_is_valid_draft_2020_12():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(mf.load_schema())
    assert mf.load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@given(
    sym=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
    coef=st.integers(1, 50),
    offset=st.integers(-50, 50),
)
def test_dim_expressions_round_trip(sym, coef, offset):
    expr = mf.DimExpr(sym, coef, offset)
    assert mf.parse_dim(str(expr)) == expr
    for root in (0, 1, 7):
        assert expr.solve(expr.value(root)) == root


@pytest.mark.parametrize("text", ["n*m", "2*n*3", "n/2", "n^2", "", "3", "0*n", "n+", "-n"])
def test_bad_dim_expressions(text):
    with pytest.raises(trtpack.ManifestError):
        mf.parse_dim(text)


def test_version_checks():
    base = {"format": "trtpack", "format_version": [1, 0]}
    assert mf.check_version(base) is False
    assert mf.check_version({**base, "format_version": [1, 9]}) is True
    with pytest.raises(trtpack.UnsupportedVersionError, match="format version 3.1"):
        mf.check_version({**base, "format_version": [3, 1]})
    with pytest.raises(trtpack.ManifestError, match="format 'pt2'"):
        mf.check_version({**base, "format": "pt2"})
    with pytest.raises(trtpack.ManifestError, match=r"must be \[major, minor\]"):
        mf.check_version({**base, "format_version": "1.0"})


def test_manifest_json_is_canonical(small_pack):
    info = trtpack.inspect(small_pack)
    raw = info.manifest.to_json()
    assert raw.endswith(b"\n") and json.loads(raw)["format"] == "trtpack"
    assert mf.Manifest.from_json(raw) == info.manifest
