"""The trtpack command: a thin layer over the library; inspect and verify never import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import trtpack
from trtpack.cli.commands import main

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtpack", *args], capture_output=True, text=True)


def test_inspect_table(small_pack, capsys):
    assert main(["inspect", str(small_pack)]) == 0
    out = capsys.readouterr().out
    info = trtpack.inspect(small_pack)
    assert f"digest   {info.digest}" in out
    assert "x     args[0]         float32  [x_dim0(1..64, opt 4), 6]" in out
    assert "mask  kwargs['mask']  float32  [x_dim0(1..64, opt 4), 6]" in out
    assert "x_dim0  min 1  max 64  opt 4  (example)" in out
    assert "program/weights.safetensors" in out and "metadata model=keywords" in out
    assert "producer trtpack " in out and " torch 2." in out


def test_inspect_json_is_the_manifest(small_pack, capsys):
    assert main(["inspect", "--json", str(small_pack)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == trtpack.inspect(small_pack).manifest.to_dict()


def test_verify_ok_and_corrupt(small_pack, tmp_path, capsys):
    assert main(["verify", str(small_pack)]) == 0
    assert capsys.readouterr().out.startswith(f"OK  {small_pack}")
    bad = tmp_path / "bad.trtpack"
    data = bytearray(small_pack.read_bytes())
    data[-200] ^= 1  # inside the central directory or the last member
    data[8192 + 100] ^= 1  # inside a member's data
    bad.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    assert capsys.readouterr().err.startswith("trtpack: error: ")
    assert main(["verify", str(bad), "--json"]) == 1  # --json: JSON on stdout either way
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["path"] == str(bad)
    assert issubclass(getattr(trtpack, report["error"]["type"]), trtpack.TrtpackError)
    assert err.startswith("trtpack: error: ") and report["error"]["message"] in err
    assert main(["verify", str(small_pack), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_errors_are_one_line_and_exit_1(tmp_path):
    out = run("inspect", str(tmp_path / "missing.trtpack"))
    assert out.returncode == 1 and out.stderr.startswith("trtpack: error: no such file")
    (tmp_path / "junk").write_text("junk")
    out = run("verify", str(tmp_path / "junk"))
    assert out.returncode == 1 and "not a zip file" in out.stderr and "Traceback" not in out.stderr
    out = run("frobnicate")
    assert out.returncode == 2


def test_inspect_and_verify_do_not_import_torch(small_pack):
    code = (
        "import sys; from trtpack.cli import main;"
        f"assert main(['inspect', {str(small_pack)!r}]) == 0;"
        f"assert main(['inspect', '--json', {str(small_pack)!r}]) == 0;"
        f"assert main(['verify', {str(small_pack)!r}]) == 0;"
        "import trtpack; trtpack.inspect(sys.argv[1]);"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')];"
        "assert not bad, bad"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(small_pack)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_console_script_and_module_entry_point(small_pack):
    exe = BIN / "trtpack"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"trtpack {trtpack.__version__}"
    assert run("inspect", str(small_pack)).returncode == 0
