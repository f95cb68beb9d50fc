"""Progress of long operations (trtpack.format.progress): a line on stderr when it is a
terminal (seen on a real pseudo-terminal), nothing when piped or with --quiet, and events to a
Python callback whose byte counts only grow and end at the total."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trtpack
from trtpack.format.progress import ProgressEvent

ROOT = Path(__file__).resolve().parent.parent


def _check_events(events: list[ProgressEvent], operation: str, total: int) -> None:
    assert events, "the callback was never called"
    assert {e.operation for e in events} == {operation}
    done = [e.done for e in events]
    assert done == sorted(done), f"byte counts went backwards: {done}"
    assert any(0 < d < total for d in done) or len(events) > 2
    assert events[-1].done == events[-1].total == total


def test_save_callback_gets_growing_byte_counts_ending_at_the_total(tmp_path, exported):
    _, _, ep = exported("keywords")
    events: list[ProgressEvent] = []
    info = trtpack.save(ep, tmp_path / "m.trtpack", progress=events.append)
    total = sum(m.size for m in info.manifest.members.values())
    _check_events(events, "save", total)
    assert "describe the program" in [e.step for e in events]  # a step before the bytes


def test_migrate_callback_and_a_bad_progress_argument(tmp_path, exported):
    _, _, ep = exported("keywords")
    pt2 = tmp_path / "m.pt2"
    torch.export.save(ep, pt2)
    events: list[ProgressEvent] = []
    info = trtpack.migrate(pt2, tmp_path / "m.trtpack", progress=events.append)
    _check_events(events, "migrate", sum(m.size for m in info.manifest.members.values()))
    with pytest.raises(trtpack.ArgumentTypeError, match="progress"):
        trtpack.save(ep, tmp_path / "n.trtpack", progress="yes")  # type: ignore[arg-type]


def _migrate_cli(tmp_path: Path, *extra: str, tty: bool) -> str:
    """stderr of ``trtpack migrate`` run with stderr on a pseudo-terminal or a pipe."""
    pt2 = tmp_path / "cli.pt2"
    if not pt2.exists():
        torch.export.save(torch.export.export(torch.nn.Linear(64, 64), (torch.randn(2, 64),)), pt2)
    out = tmp_path / f"cli-{len(list(tmp_path.iterdir()))}.trtpack"
    return _cli_stderr("migrate", str(pt2), str(out), *extra, tty=tty)


def _cli_stderr(*args: str, tty: bool) -> str:
    """stderr of ``trtpack ARGS`` (which must succeed), on a pseudo-terminal or a pipe."""
    cmd = [sys.executable, "-m", "trtpack", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not tty:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_cli_progress_on_a_terminal_only_and_quiet_silences_it(tmp_path):
    on_tty = _migrate_cli(tmp_path, tty=True)
    assert "migrate [####################] 100%" in on_tty, on_tty
    assert "\r" in on_tty  # redrawn in place
    assert _migrate_cli(tmp_path, tty=False) == ""
    assert _migrate_cli(tmp_path, "--quiet", tty=True) == ""
    forced = _migrate_cli(tmp_path, "--progress", tty=False)
    assert "migrate: read cli.pt2" in forced and "written" in forced and "\r" not in forced


def test_build_names_its_steps_then_counts_the_bytes(tmp_path, exported):
    pytest.importorskip("tensorrt_rtx")
    _, _, ep = exported("keywords")
    path = tmp_path / "k.trtpack"
    trtpack.save(ep, path, progress=False)
    events: list[ProgressEvent] = []
    info = trtpack.build(path, "8.9", progress=events.append)
    steps = [e.step for e in events]
    for step in ("load the program", "export ONNX", "parse ONNX"):
        assert step in steps
    assert any(s.startswith("build the engine for compute capability 8.9") for s in steps)
    _check_events(events, "build", sum(m.size for m in info.manifest.members.values()))


def test_released_pages_read_the_file_again(small_pack):
    from trtpack.format.container import PackReader

    with PackReader(small_pack) as reader:
        name = next(n for n in reader.members if n.endswith(".safetensors"))
        view = reader.view(name)
        before = bytes(view)
        view[:4] = b"\0\0\0\0" if before[:4] != b"\0\0\0\0" else b"\1\1\1\1"  # a private write
        reader.release_pages()
        assert bytes(view) == before  # valid, and the file's bytes again


def test_verify_callback_counts_every_byte_hashed(tmp_path, small_pack):
    events: list[ProgressEvent] = []
    info = trtpack.verify(small_pack, progress=events.append)
    members = info.manifest.members
    _check_events(events, "verify", sum(m.size for m in members.values()))
    assert set(members) <= {e.step for e in events}  # each member named as it is hashed
    # weights hashed in 16 MiB pieces (the manifest's chunks): counted piece by piece
    torch.manual_seed(0)
    model = torch.nn.Linear(2304, 2304)  # 20 MiB of weights: two pieces
    path = tmp_path / "big.trtpack"
    trtpack.save(torch.export.export(model, (torch.randn(2, 2304),)), path, progress=False)
    events = []
    info = trtpack.verify(path, progress=events.append)
    chunked = [n for n, m in info.manifest.members.items() if m.chunks is not None]
    assert chunked, "no member was hashed in pieces"
    _check_events(events, "verify", sum(m.size for m in info.manifest.members.values()))
    assert events[0].done == 0 and events[0].total == events[-1].total


def test_verify_cli_progress_on_a_terminal_only_and_quiet_silences_it(small_pack):
    on_tty = _cli_stderr("verify", str(small_pack), tty=True)
    assert "verify [####################] 100%" in on_tty, on_tty
    assert _cli_stderr("verify", str(small_pack), tty=False) == ""
    assert _cli_stderr("verify", str(small_pack), "--quiet", tty=True) == ""
    forced = _cli_stderr("verify", str(small_pack), "--progress", "--json", tty=False)
    assert "verify " in forced and "members" in forced and "hashed" in forced
    assert "\r" not in forced
