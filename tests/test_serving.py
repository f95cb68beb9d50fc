"""A loaded pack keeps serving whatever happens to its file afterwards (issue 20, item 2).

A real process loads a pack and answers calls; between calls the test truncates the file,
copies another pack over it in place (``cp``) and writes zeros into it. By default the
process survives with unchanged outputs. With ``load(mmap=True)`` — the documented opt-in
that views the file's map — the same steps change its outputs and kill it with SIGBUS:
the proof that these tests can fail, and the risk that mode's docstring states.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import trtpack
from trtpack.format.container import PackReader

WIDTH = 256  # 3 layers of 256 KiB weights: many pages, each call reads every one
WEIGHTS = "program/weights.safetensors"

# One process serving the pack: each line on stdin asks for 3 calls; it answers one line
# with the SHA-256 of each call's output bytes.
SERVER = textwrap.dedent(
    """
    import hashlib, sys
    import torch, trtpack
    pack = trtpack.load(sys.argv[1], device="cpu", mmap=sys.argv[2] == "1")
    x = torch.randn(4, int(sys.argv[3]), generator=torch.Generator().manual_seed(0))
    print("ready", flush=True)
    for _ in sys.stdin:
        outs = [pack(x).detach().numpy().tobytes() for _ in range(3)]
        print(" ".join(hashlib.sha256(o).hexdigest()[:16] for o in outs), flush=True)
    """
)


def _model(seed: int) -> torch.export.ExportedProgram:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH),
              torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH)]  # fmt: skip
    model = torch.nn.Sequential(*layers).eval()
    return torch.export.export(model, (torch.randn(4, WIDTH),))


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> tuple[Path, Path]:
    """A pack, and another of the same size and layout with other weights."""
    d = tmp_path_factory.mktemp("serving")
    a = trtpack.save(_model(0), d / "a.trtpack").path
    b = trtpack.save(_model(1), d / "b.trtpack").path
    assert a.stat().st_size == b.stat().st_size
    return a, b


class Server:
    def __init__(self, path: Path, mmap: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(Path(trtpack.__file__).parent.parent)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(path), "1" if mmap else "0", str(WIDTH)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        assert self._line(120) == "ready", self.proc.stderr.read()  # type: ignore[union-attr]

    def _line(self, timeout: float) -> str | None:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            if not sel.select(timeout):
                raise AssertionError(f"the serving process gave no answer in {timeout} s")
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        return line.strip() if line else None  # None: it exited

    def outputs(self) -> list[str] | None:
        """The digests of three calls' outputs, or None when the process has died."""
        try:
            self.proc.stdin.write("call\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            return None
        line = self._line(60)
        return None if line is None else line.split()

    def died_of(self) -> int | None:
        try:
            return -self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _zero_weights_in_place(path: Path) -> None:
    with PackReader(path) as reader:
        info = reader.info(WEIGHTS)
    with open(path, "r+b") as f:  # the same inode: what an in-place writer does
        f.seek(info.offset)
        f.write(bytes(info.size))


def _copy_over(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)  # like cp: opens dst with O_TRUNC and writes into the same inode


@pytest.fixture
def victim(packs, tmp_path) -> Path:
    path = tmp_path / "model.trtpack"
    shutil.copyfile(packs[0], path)
    return path


def test_a_loaded_pack_survives_its_file_being_rewritten(packs, victim):
    server = Server(victim, mmap=False)
    try:
        before = server.outputs()
        assert before is not None and len(set(before)) == 1
        ino = victim.stat().st_ino
        _zero_weights_in_place(victim)
        assert server.outputs() == before, "zeros written into the file changed the outputs"
        _copy_over(packs[1], victim)
        assert victim.stat().st_ino == ino  # rewritten in place, not replaced
        assert server.outputs() == before, "a pack copied over the file changed the outputs"
        os.truncate(victim, 0)
        assert server.outputs() == before, "truncating the file killed or changed the process"
        victim.unlink()
        assert server.outputs() == before
    finally:
        server.stop()


def test_the_mmap_opt_in_is_hit_by_the_same_changes(packs, victim):
    """The opt-in mode shows what the default protects against: zeros in place and a copy
    over the file change its outputs, and truncation kills it with SIGBUS."""
    server = Server(victim, mmap=True)
    try:
        before = server.outputs()
        assert before is not None
        _zero_weights_in_place(victim)
        zeroed = server.outputs()
        assert zeroed is not None and zeroed != before
        _copy_over(packs[1], victim)
        copied = server.outputs()
        assert copied is not None and copied not in (before, zeroed)
        os.truncate(victim, 0)
        assert server.outputs() is None
        assert server.died_of() == signal.SIGBUS
    finally:
        server.stop()


# --- in process: where the weights live --------------------------------------------------


def _mapping_of(address: int) -> str | None:
    """The file (or '' for anonymous memory) of the mapping holding ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 else ""
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("mmap", [True, False])
def test_mmap_really_maps_the_file_and_the_default_does_not(victim, mmap):
    pack = trtpack.load(victim, device="cpu", mmap=mmap)
    x = torch.randn(4, WIDTH)
    before = pack(x)
    tensors = list(pack.module.state_dict().values())
    assert tensors
    where = {_mapping_of(t.data_ptr()) for t in tensors}
    if mmap:
        assert where == {str(victim.resolve())}  # the tensors' memory is the file's pages
    else:
        assert str(victim.resolve()) not in where
    _zero_weights_in_place(victim)  # a write through the file...
    zeroed = all(not t.any() for t in tensors)
    assert zeroed is mmap  # ...is seen by the mapped tensors only
    assert torch.equal(pack(x), before) is not mmap


def test_owned_reads_the_member_once_and_hashes_that_copy(victim):
    """The hash check and the load share one read (the bytes checked are the bytes kept)."""
    info = trtpack.inspect(victim)
    with PackReader(victim) as reader:
        first = reader.owned(WEIGHTS)
        reader.verify(WEIGHTS, info.manifest.members[WEIGHTS], owned=True)
        assert reader.owned(WEIGHTS) is first
        _zero_weights_in_place(victim)
        reader.verify(WEIGHTS, info.manifest.members[WEIGHTS], owned=True)  # the copy: intact
        with pytest.raises(trtpack.IntegrityError):
            reader.verify(WEIGHTS, info.manifest.members[WEIGHTS])  # the file: changed


def test_a_changed_member_is_caught_while_it_is_read(victim):
    """``check_when_read``: the read hashes each piece; a mismatch raises there, and a
    later ``verify(owned=True)`` raises it again rather than passing unchecked bytes."""
    info = trtpack.inspect(victim)
    member = info.manifest.members[WEIGHTS]
    _zero_weights_in_place(victim)
    with PackReader(victim) as reader:
        reader.check_when_read(WEIGHTS, member)
        with pytest.raises(trtpack.IntegrityError, match="SHA-256"):
            reader.owned(WEIGHTS)
        with pytest.raises(trtpack.IntegrityError, match="SHA-256"):
            reader.verify(WEIGHTS, member, owned=True)
    with pytest.raises(trtpack.IntegrityError):
        trtpack.load(victim, device="cpu")
