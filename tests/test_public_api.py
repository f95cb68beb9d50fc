"""The public surface: ``trtpack.<name>`` is the documented function or class, whatever else was
imported first (a submodule named like a function would shadow it once imported)."""

from __future__ import annotations

import subprocess
import sys

CODE = r"""
import importlib, pkgutil, types
import trtpack
for info in pkgutil.walk_packages(trtpack.__path__, "trtpack."):
    if info.name.startswith("trtpack.integrations") or info.name == "trtpack.__main__":
        continue  # optional dependencies; none shares a name with the public API
    importlib.import_module(info.name)
bad = [n for n in trtpack.__all__ if isinstance(getattr(trtpack, n), types.ModuleType)]
print("MODULES", bad)
"""


def test_public_names_are_never_shadowed_by_submodules():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MODULES []" in out.stdout, out.stdout


def test_wrong_argument_types_are_type_errors(tmp_path, small_pack):
    import pytest

    import trtpack

    for call in (
        lambda: trtpack.save("not a program", tmp_path / "x.trtpack"),
        lambda: trtpack.add_engine(small_pack, 3, out=tmp_path / "y.trtpack"),
    ):
        with pytest.raises(TypeError) as e:
            call()
        assert isinstance(e.value, trtpack.ArgumentTypeError)
        assert e.value.argument in ("obj", "source") and e.value.got in ("str", "int")
    assert not (tmp_path / "x.trtpack").exists() and not (tmp_path / "y.trtpack").exists()


def test_every_error_is_exported():
    import trtpack
    from trtpack import errors

    defined = {n for n, v in vars(errors).items()
               if isinstance(v, type) and issubclass(v, errors.TrtpackError)}  # fmt: skip
    assert defined == set(errors.__all__)
    assert defined <= set(trtpack.__all__)
    assert all(getattr(trtpack, n) is getattr(errors, n) for n in defined)
