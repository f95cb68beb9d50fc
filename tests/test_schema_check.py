"""The generated validator (trtpack/format/schema_check.py) is the JSON Schema: it is current
with schema/, and on every fixture manifest and thousands of mutated ones it finds exactly
the errors jsonschema's Draft 2020-12 validator finds, at the same JSON paths, with the same
messages, strict and lenient. (tests/conftest.py also runs jsonschema beside it on every
manifest the rest of the suite validates.)"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import schema_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trtpack
from trtpack.format import manifest as mf
from trtpack.format import schema_check
from trtpack.format.upgrade import upgrade

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PACKS = sorted(FIXTURES.glob("v1.*/*.trtpack"))
#: the fixtures of the newest format version
LATEST = max(FIXTURES.glob("v1.*"), key=lambda d: tuple(map(int, d.name[1:].split("."))))


# --- the two validators ---------------------------------------------------------------------

#: the generated validator itself (tests/conftest.py wraps the module's errors to cross-check)
GENERATED = getattr(schema_check.errors, "__wrapped__", schema_check.errors)


def assert_agree(data) -> list:
    """Both validators, strict and lenient, give the same errors (path, message, keyword,
    expected, got); returns jsonschema's strict errors (empty: valid)."""
    strict = schema_reference.assert_same(GENERATED(data, False), data, False)
    schema_reference.assert_same(GENERATED(data, True), data, True)
    return strict


@functools.cache
def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_validator", ROOT / "tools" / "gen_validator.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest_of(pack: Path) -> dict:
    with zipfile.ZipFile(pack) as z:
        return json.loads(z.read(mf.MANIFEST_NAME))


# --- the generated file is current -------------------------------------------------------------


def test_the_generated_validator_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_validator.py"), "--check"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert schema_check.SCHEMA_SHA256 == hashlib.sha256(mf.schema_path().read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("edit", "refusal"),
    [
        (lambda s: s["$defs"]["member"].update(maxProperties=3), "keyword 'maxProperties'"),
        (lambda s: s["$defs"]["io"]["properties"]["name"].update(format="uri"), "'format'"),
        (lambda s: s["$defs"]["tree"].update(patternProperties={"^x": {}}), "patternProperties"),
        (lambda s: s["properties"].update(extra={"$ref": "other.json#/x"}), "$ref 'other.json#/x'"),
        (lambda s: s["properties"].update(extra={"$ref": "#/$defs/nope"}), "$ref '#/$defs/nope'"),
        (lambda s: s["$defs"]["io"].update({"$id": "x"}), "$id is supported at the top level"),
        (lambda s: s["properties"].update(extra=True), "a subschema must be an object"),
        (lambda s: s["properties"].update(extra={"type": "int"}), "type 'int'"),
        (lambda s: s["properties"].update(extra={"then": {}}), "then without if"),
        (lambda s: s.update({"$schema": "http://json-schema.org/draft-07/schema#"}), "$schema"),
    ],
)
def test_the_generator_refuses_what_it_does_not_compile(edit, refusal):
    """A keyword it does not know stops it, naming the keyword and where it is: a schema
    change can never be silently unchecked."""
    gen = _load_generator()
    schema = json.loads(mf.schema_path().read_bytes())
    edit(schema)
    with pytest.raises(gen.SchemaError) as e:
        gen.generate(json.dumps(schema).encode())
    assert refusal in str(e.value)


def test_regenerating_after_a_new_optional_field_is_one_command(tmp_path):
    """What a format 1.3 bump does: a new optional field; the generator picks it up."""
    gen = _load_generator()
    schema = json.loads(mf.schema_path().read_bytes())
    schema["properties"]["signature"] = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
    source = gen.generate(json.dumps(schema).encode())
    module: dict = {}
    exec(compile(source, "schema_check_13.py", "exec"), module)
    data = manifest_of(LATEST / "keywords.trtpack")
    assert module["errors"](data) == []
    assert module["errors"]({**data, "signature": "md5:x"}) == [
        (
            ("signature",),
            "'md5:x' does not match '^sha256:[0-9a-f]{64}$'",
            "pattern",
            "^sha256:[0-9a-f]{64}$",
            "md5:x",
        )
    ]


# --- fixture manifests ---------------------------------------------------------------------


@pytest.mark.parametrize("pack", PACKS, ids=[f"{p.parent.name}/{p.name}" for p in PACKS])
def test_fixture_manifests_agree(pack):
    data = manifest_of(pack)
    assert assert_agree(data) == []
    upgraded, _, _ = upgrade(data)  # what a reader of this version validates
    assert assert_agree(upgraded) == []


def rich_manifest() -> dict:
    """A schema-valid manifest with every optional field and every kind of input (the
    fixtures lack some: an int input's value or symbol, memory_format, extra_profiles,
    narrowed ranges, sample tolerances per variant, piece digests, lean runtimes)."""
    data = copy.deepcopy(manifest_of(LATEST / "keywords_engines.trtpack"))
    data["producer"].update(torch="2.13.0", torch_tensorrt="2.14.0", tensorrt="10.1.0")
    data["metadata"] = {"model": "m", "": "empty key"}
    data["inputs"] += [
        {"name": "n", "path": "args[2]", "kind": "int", "symbol": "x_dim0"},
        {"name": "k", "path": "args[3]", "kind": "int", "value": 3},
        {"name": "f", "path": "args[4]", "kind": "float", "value": 0.5},
        {"name": "b", "path": "args[5]", "kind": "bool", "value": True},
        {"name": "s", "path": "args[6]", "kind": "str", "value": "mode"},
        {"name": "z", "path": "args[7]", "kind": "none", "value": None},
        {"name": "c", "path": "args[8]", "kind": "tensor", "dtype": "float16",
         "shape": [1, "2*x_dim0+1", 3], "memory_format": "channels_last"},
    ]  # fmt: skip
    data["symbols"]["unbounded"] = {"min": 2, "max": None, "opt": 2, "opt_source": "rule"}
    data["guards"] = [{"source": "Eq(s0 % 4, 0)", "expr": "x.shape[0] % 4 == 0"},
                      {"source": "Ne(s0, 3)"}]  # fmt: skip
    variant = data["engines"][0]
    variant["ranges"] = {"x_dim0": [1, 32], "unbounded": [2, None]}
    variant["program"] = {"graph": "g.json", "weights": "w.safetensors", "serde_schema": [8, 20]}
    variant["target"].update(future_gpus=True, platform="linux_x86_64", cuda_runtime="12.8",
                             embeds_lean_runtime=False)  # fmt: skip
    member = data["members"][variant["engines"][0]["member"]]
    member["chunks"] = {"size": 1 << 24, "sha256": [member["sha256"], "0" * 64]}
    engine = variant["engines"][0]
    engine.update(abi_version="8", settings={"precision": ["fp16"], "workspace": 1 << 30})
    binding = engine["inputs"][0]
    binding["profile"] = [[1, 8, 64]] + [[d, d, d] for d in binding["shape"][1:]]
    binding["extra_profiles"] = [binding["profile"], binding["profile"]]
    data["samples"] = {"member": "samples.safetensors", "count": 2,
                       "tolerance": {"atol": 1e-5, "rtol": 0},
                       "variants": {variant["name"]: {"atol": 0.01, "rtol": 0.001}}}  # fmt: skip
    return data


def test_the_rich_manifest_is_valid():
    assert assert_agree(rich_manifest()) == []


# --- mutations -----------------------------------------------------------------------------

SEEDS = [manifest_of(p) for p in sorted(LATEST.glob("*.trtpack"))] + [rich_manifest()]

#: values of every JSON type and the edges of the schema's keywords
VALUES = [
    None, True, False, 0, 1, -1, 2, 3, 1.0, 0.5, -0.5, 2**70, float("nan"), float("inf"),
    "", "x", "tensor", "int", "none", "float33", "float16", "1x", "x_dim0", "a.b", "_",
    "a/../b", "./a", "/abs", "a//b", "a\\b", "a\x00b", "ok/member.bin", "program/graph.json",
    "8.6", "12", "1.6.1", "1.6.1.120", "1.6.1.120.1", "10.0\n", "f" * 64, "F" * 64, "0" * 63,
    "0" * 64 + "\n", "s" * 10_001, "x_dim0+1", "2*x_dim0",
    [], [1], [1, 0], [1, 2, 3], [1, 2, 3, 4], ["a"], [None], [[1, 2, 3]], [[1, 8, 64], [3, 3]],
    {}, {"type": "leaf"}, {"a": 1}, {"atol": 0, "rtol": 0},
]  # fmt: skip
KEYS = ["extra", "value", "symbol", "dtype", "shape", "memory_format", "kind", "name", "type",
        "children", "profile", "described", "future_gpus", "1x", "_ok", "../m", "", "x_dim0",
        "guards", "samples"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip


def locations(value, path=()):
    """Every path in a JSON document, the root first."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from locations(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from locations(v, (*path, i))


def at(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def replaced(doc, path, new):
    if not path:
        return copy.deepcopy(new)
    out = copy.deepcopy(doc)
    at(out, path[:-1])[path[-1]] = copy.deepcopy(new)
    return out


def dropped(doc, path):
    out = copy.deepcopy(doc)
    del at(out, path[:-1])[path[-1]]
    return out


def renamed(doc, path, key):
    out = copy.deepcopy(doc)
    parent = at(out, path[:-1])
    items = [(key if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return out


@st.composite
def mutated(draw):
    """A fixture manifest with one to four mutations at random places: a value replaced
    (by one of VALUES, any JSON, or a value from elsewhere in the manifest), a property or
    an item dropped or added, a key renamed, an array lengthened or cut."""
    doc = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(locations(doc))
        path = draw(st.sampled_from(paths))
        target = at(doc, path)
        op = draw(st.sampled_from(["value", "any", "move", "drop", "add", "rename", "grow", "cut"]))
        if op == "value":
            doc = replaced(doc, path, draw(st.sampled_from(VALUES)))
        elif op == "any":
            doc = replaced(doc, path, draw(json_values))
        elif op == "move":
            doc = replaced(doc, path, at(doc, draw(st.sampled_from(paths))))
        elif op == "drop" and path:
            doc = dropped(doc, path)
        elif op == "add" and isinstance(target, dict):
            new = draw(
                st.sampled_from(VALUES) | st.sampled_from(paths).map(lambda p, d=doc: at(d, p))
            )
            doc = replaced(doc, (*path, draw(st.sampled_from(KEYS))), new)
        elif op == "rename" and path and isinstance(at(doc, path[:-1]), dict):
            doc = renamed(doc, path, draw(st.sampled_from(KEYS)))
        elif op == "grow" and isinstance(target, list):
            item = target[-1] if target and draw(st.booleans()) else draw(st.sampled_from(VALUES))
            doc = replaced(doc, path, [*target, item])
        elif op == "cut" and isinstance(target, list) and target:
            doc = replaced(doc, path, target[: draw(st.integers(0, len(target) - 1))])
    return doc


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_manifests_agree(doc):
    assert_agree(doc)


#: the objects whose keys are names (members, symbols, ...), not the schema's properties
MAPS = {"members", "symbols", "metadata", "ranges", "variants", "settings"}


def schema_place(path: tuple) -> tuple:
    """A path with array indices and map keys generalized: where in the schema it is."""
    out: list = []
    for p in path:
        out.append("*" if isinstance(p, int) or (out and out[-1] in MAPS) else p)
    return tuple(out)


@pytest.mark.slow
def test_every_place_and_every_kind_of_error_agree():
    """Exhaustively, on the rich manifest, at the first instance of every place in the
    schema (every field of an input, not of every input): drop it, replace it by a value of
    each JSON type (a string also by strings that break each pattern and length), add a
    property to an object, lengthen and cut an array. Every keyword that can fail must fail
    somewhere, so no keyword's check goes untested."""
    doc = rich_manifest()
    swaps = [None, True, 1, -1, 0.5, "", [], {}]
    strings = ["1x", "a/../b", "a\\b", "f" * 63, "8.6.x", "s" * 10_001]
    cases, failed, seen = 0, set(), set()
    for path in list(locations(doc)):
        if schema_place(path) in seen:
            continue
        seen.add(schema_place(path))
        variants = [replaced(doc, path, v) for v in swaps]
        if path:
            variants.append(dropped(doc, path))
        target = at(doc, path)
        if isinstance(target, str):
            variants += [replaced(doc, path, s) for s in strings]
        if isinstance(target, dict):
            variants += [replaced(doc, (*path, "extra"), 1), replaced(doc, (*path, "value"), 1)]
            if target:
                variants.append(renamed(doc, (*path, next(iter(target))), "1x"))
        if isinstance(target, list):
            variants += [replaced(doc, path, [*target, target[-1] if target else 0]),
                         replaced(doc, path, target[:-1])]  # fmt: skip
        for v in variants:
            failed |= {e[2] for e in assert_agree(v)}
            cases += 1
    can_fail = {"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum",
                "minItems", "required", "additionalProperties", "items", "oneOf", "not"}  # fmt: skip
    assert failed == can_fail, (failed ^ can_fail, cases)
    print(f"{cases} mutations at {len(seen)} places of the rich manifest: all agree")


@given(st.sampled_from(sorted(schema_check.DEFINITIONS)), json_values)
@settings(max_examples=500, deadline=None)
def test_each_definition_agrees_on_any_json(name, value):
    """Each $defs entry alone, on arbitrary JSON values."""
    schema = {**mf.load_schema(), "$ref": f"#/$defs/{name}"}
    schema = {k: v for k, v in schema.items() if k not in ("properties", "required", "type",
                                                           "additionalProperties")}  # fmt: skip
    want = [(tuple(e.absolute_path), e.message, e.validator, e.validator_value, e.instance)
            for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]  # fmt: skip
    got: list = []
    schema_check.DEFINITIONS[name](value, (), got, False)
    assert schema_reference.comparable(got) == schema_reference.comparable(want)


# --- what trtpack raises -------------------------------------------------------------------


def test_errors_are_manifest_errors_with_paths_and_jsonschema_messages():
    data = manifest_of(LATEST / "keywords.trtpack")
    data["inputs"][0]["dtype"] = "float33"
    data["symbols"]["1x"] = data["symbols"].pop(next(iter(data["symbols"])))
    data["extra"] = 1
    with pytest.raises(trtpack.ManifestError) as e:
        mf.validate(data)
    assert str(e.value) == (
        "manifest fails the JSON Schema:\n"
        "  at (top level): Additional properties are not allowed ('extra' was unexpected)\n"
        "  at inputs/0/dtype: 'float33' is not one of ['float64', 'float32', 'float16', "
        "'bfloat16', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3fnuz', 'float8_e5m2fnuz', "
        "'int64', 'int32', 'int16', 'int8', 'uint64', 'uint32', 'uint16', 'uint8', 'bool', "
        "'complex64', 'complex128']\n"
        "  at symbols: '1x' does not match '^[A-Za-z_][A-Za-z0-9_]*$'"
    )
    assert (e.value.field, e.value.expected, e.value.got) == (
        "",
        {"additionalProperties": False},
        data,
    )
    del data["extra"]
    with pytest.raises(trtpack.ManifestError) as e:
        mf.validate(data)
    assert (e.value.field, e.value.got) == ("inputs/0/dtype", "float33")
    assert e.value.expected == {"enum": tuple(mf.load_schema()["$defs"]["dtype"]["enum"])}
    lenient = {**manifest_of(LATEST / "keywords.trtpack"), "future_field": 1}
    mf.validate(lenient, lenient=True)  # a newer minor's unknown field: allowed
    with pytest.raises(trtpack.ManifestError, match="'future_field' was unexpected"):
        mf.validate(lenient)


def test_reading_a_manifest_never_imports_jsonschema():
    code = (
        "import sys; sys.modules['jsonschema'] = None\n"
        "import trtpack\nfrom trtpack.cli import main\n"
        f"trtpack.verify({str(LATEST / 'keywords_engines.trtpack')!r})\n"
        f"info = trtpack.inspect({str(FIXTURES / 'v1.0' / 'keywords.trtpack')!r})\n"
        "trtpack.Manifest.from_json(info.manifest.to_json())\n"
        f"assert main(['inspect', {str(LATEST / 'guarded.trtpack')!r}]) == 0\n"
        "print('NO-JSONSCHEMA OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NO-JSONSCHEMA OK" in out.stdout
