"""Upgrade steps never read an unchecked manifest (issue 20, item 4).

A pack of an older format is upgraded in memory by ``trtpack/format/upgrade.py`` before the
current schema validates it. Every field of every older version's manifest is replaced here
by values of any JSON type (hypothesis), and each pack goes through the path every reader
takes (``inspect``, ``verify``, ``load`` and ``migrate`` all read the manifest through
``read_info``): the answer is a manifest or a trtpack error, never a raw exception. The case
the issue found (a 1.1 ``engines`` list holding a number) runs through each reader itself.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trtpack
from trtpack.cli import main
from trtpack.errors import ManifestError, TrtpackError
from trtpack.format.container import PackReader
from trtpack.format.upgrade import STEPS, upgrade
from trtpack.reading import read_info

FIXTURES = Path(__file__).parent / "fixtures"
# every version a step starts from, with its pack that has engine variants (what 1.1 -> 1.2
# reads) and, from 1.1 on, guards
OLD = {
    "1.0": ["keywords_engines"],
    "1.1": ["keywords_engines", "guarded"],
    "1.2": ["keywords_engines", "keywords_samples"],
    "1.3": ["keywords_engines", "guarded"],
}


def test_every_step_is_covered():
    assert {f"{a}.{b}" for a, b in STEPS} == set(OLD)


def _members(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        files = {i.filename: z.read(i.filename) for i in z.infolist()}
    return json.loads(files.pop("manifest.json")), files


def _pack(manifest: Any, files: dict[str, bytes]) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("manifest.json", json.dumps(manifest).encode())
        for name, data in files.items():
            z.writestr(name, data)
    return bytearray(buf.getvalue())


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every node of a JSON value, as a path of keys and indices."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replaced(data: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)  # fmt: skip


def _read(manifest: Any, files: dict[str, bytes]) -> None:
    """What every reader does first; a trtpack error is an answer, anything else is a bug."""
    try:
        with PackReader("fuzzed.trtpack", data=_pack(manifest, files)) as reader:
            read_info(reader)
    except TrtpackError:
        pass


CASES = [(version, name) for version, names in OLD.items() for name in names]


@pytest.mark.parametrize(("version", "name"), CASES)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_field_of_any_type(version, name, data):
    manifest, files = _members(FIXTURES / f"v{version}" / f"{name}.trtpack")
    path = data.draw(st.sampled_from(list(_paths(manifest))), label="path")
    _read(_replaced(manifest, path, data.draw(JSON, label="value")), files)


def _engine_paths(manifest: dict[str, Any]) -> list[tuple]:
    """What the 1.1 -> 1.2 step reads: the variant list, each variant, its engine list,
    each engine and its abi_version; and format_version, which ``upgrade`` reads."""
    out: list[tuple] = [("engines",), ("format_version",), ("format_version", 0)]
    for i, variant in enumerate(manifest["engines"]):
        out += [("engines", i), ("engines", i, "engines")]
        for j, _ in enumerate(variant["engines"]):
            out += [("engines", i, "engines", j), ("engines", i, "engines", j, "abi_version")]
    return out


@pytest.mark.parametrize("version", list(OLD))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_steps_read_of_any_type(version, data):
    manifest, files = _members(FIXTURES / f"v{version}" / "keywords_engines.trtpack")
    path = data.draw(st.sampled_from(_engine_paths(manifest)), label="path")
    _read(_replaced(manifest, path, data.draw(JSON, label="value")), files)


@pytest.mark.parametrize("version", list(OLD))
@settings(max_examples=25, deadline=None)
@given(value=JSON)
def test_upgrade_alone_raises_trtpack_errors_only(version, value):
    """``upgrade`` is called by more than ``read_info`` (``pull`` reads a remote manifest)."""
    manifest, _ = _members(FIXTURES / f"v{version}" / "keywords_engines.trtpack")
    for path in _engine_paths(manifest):
        try:
            upgrade(_replaced(manifest, path, value))
        except TrtpackError:
            pass


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_checks_what_it_reads(step):
    """Without the schema check before it (a caller's own chain), a step still refuses a
    wrong type itself, with a ManifestError naming the field."""
    manifest, _ = _members(FIXTURES / "v1.1" / "keywords_engines.trtpack")
    for bad, field in (({"engines": 5}, "engines"), ({"engines": [5]}, "engines"),
                       ({"engines": [{"engines": "x"}]}, "engines/0/engines")):  # fmt: skip
        data = {**manifest, **bad}
        try:
            STEPS[step].upgrade(data)
        except ManifestError as e:
            assert e.field == field
        # the identity steps read nothing, so they have nothing to refuse


# --- the case, through each reader ------------------------------------------------


@pytest.fixture
def number_in_engines(tmp_path) -> Path:
    manifest, files = _members(FIXTURES / "v1.1" / "keywords_engines.trtpack")
    manifest["engines"] = [5, *manifest["engines"]]
    path = tmp_path / "bad.trtpack"
    path.write_bytes(_pack(manifest, files))
    return path


@pytest.mark.parametrize("command", ["inspect", "verify", "migrate"])
def test_cli_readers_refuse_it(number_in_engines, command, capsys, tmp_path):
    args = [command, str(number_in_engines)]
    if command == "migrate":
        args.append(str(tmp_path / "out.trtpack"))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "format 1.1 manifest fails the JSON Schema" in err and "engines/0" in err
    assert not (tmp_path / "out.trtpack").exists()


@pytest.mark.parametrize("reader", ["inspect", "verify", "load", "migrate"])
def test_python_readers_refuse_it(number_in_engines, reader, tmp_path):
    call = {
        "inspect": lambda: trtpack.inspect(number_in_engines),
        "verify": lambda: trtpack.verify(number_in_engines),
        "load": lambda: trtpack.load(number_in_engines, device="cpu"),
        "migrate": lambda: trtpack.migrate(number_in_engines, tmp_path / "out.trtpack"),
    }[reader]
    with pytest.raises(ManifestError) as e:
        call()
    assert e.value.field == "engines/0"
