"""A weights member onto a device, hashed as it is copied (issue 27.6).

On the CPU a load reads the weights into memory of its own and the tensors view it
(``PackReader.owned``). On a GPU the bytes go on to the device instead, and this module is
that path: ``PackReader.read_into`` reads the member piece by piece (its 16 MiB digest
pieces) on several threads, each piece into a staging buffer of this sink's, which copies it
on to the tensors it covers (``fill``) while the same thread hashes the same buffer. So:

- the bytes copied are the bytes hashed (one read from the file into the staging buffer;
  nothing reads the file again), and a file rewritten during or after the load changes
  nothing already loaded (docs/serving-files-and-limits.md);
- the hash runs alongside the copy, not before it, and the load returns only after every
  piece's hash has matched (else IntegrityError, and the device tensors are dropped);
- on CUDA the staging buffers are pinned and each copy is ``non_blocking`` on one of a few
  side streams, so reading, hashing and the transfers overlap; a buffer is reused once the
  event recorded after its copies has completed, and every stream is synchronized before the
  load goes on (success or failure), so nothing is left in flight.

The code is device-agnostic but for those three things (pinned buffers, streams, events):
on the CPU the same sink copies synchronously, which is how the tests run it.
"""

from __future__ import annotations

import bisect
import contextlib
import struct
import threading
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import IntegrityError
from ..format.container import PackReader
from ..format.digests import usable_cores
from ..format.weights import StoredTensor, parse_safetensors

#: threads reading and hashing at once (each holds one staging buffer at a time)
WORKERS = 16
#: staging buffers beyond one per thread (so a thread rarely waits for a copy to finish)
SPARE_SLOTS = 2
#: CUDA streams the copies are spread over
STREAMS = 4
#: the smallest staging buffer (a piece as trtpack writes them, DIGEST_CHUNK)
SLOT_BYTES = 16 << 20


class _Slot:
    __slots__ = ("event", "stream", "tensor", "view")

    def __init__(self, size: int, device: torch.device, stream: Any) -> None:
        cuda = device.type == "cuda"
        self.tensor = torch.empty(size, dtype=torch.uint8, pin_memory=cuda)
        self.view = memoryview(self.tensor.numpy())  # type: ignore[arg-type]
        self.event = torch.cuda.Event() if cuda else None
        self.stream = stream


class DeviceCopy:
    """A ``PackReader.read_into`` sink that copies each piece into the device tensors whose
    bytes it holds. ``targets``: (byte position in the member, flat uint8 destination), not
    overlapping. ``head``: the member's first bytes as parsed before the read (its header),
    which the pieces must repeat (else the file changed between the two reads)."""

    def __init__(
        self,
        targets: list[tuple[int, torch.Tensor]],
        head: bytes,
        device: torch.device,
        where: str,
    ) -> None:
        self._targets = sorted(targets, key=lambda t: t[0])
        self._starts = [s for s, _ in self._targets]
        self._head = head
        self._device = device
        self._where = where
        self._cuda = device.type == "cuda"
        self.workers = max(1, min(WORKERS, usable_cores()))
        self._max_slots = self.workers + SPARE_SLOTS
        self._streams = [torch.cuda.Stream(device) for _ in range(STREAMS)] if self._cuda else []
        if self._cuda:  # the destinations were just allocated on the caller's stream
            current = torch.cuda.current_stream(device)
            for stream in self._streams:
                stream.wait_stream(current)
        self._free: list[_Slot] = []
        self._made = 0
        self._cond = threading.Condition()
        self._lent: dict[int, _Slot] = {}  # id of the memoryview handed out -> its slot

    # -- the Sink protocol --------------------------------------------------------------

    def slot(self, start: int, end: int) -> memoryview:
        size = end - start
        with self._cond:
            while True:
                if self._free:
                    fit: _Slot | None = self._free.pop()
                    if fit is not None and len(fit.view) >= size:
                        break
                    self._made -= 1  # too small (made for a last, shorter piece): replaced
                if self._made < self._max_slots:
                    stream = self._streams[self._made % len(self._streams)] if self._streams \
                        else None  # fmt: skip
                    fit = _Slot(max(size, SLOT_BYTES), self._device, stream)
                    self._made += 1
                    break
                self._cond.wait()
            assert fit is not None
        if fit.event is not None:
            fit.event.synchronize()  # its previous copies are done: it may be written again
        view = fit.view[:size]
        with self._cond:
            self._lent[id(view)] = fit
        return view

    def fill(self, start: int, end: int, data: memoryview) -> None:
        if start < len(self._head):
            stop = min(end, len(self._head))
            if bytes(data[: stop - start]) != self._head[start:stop]:
                raise IntegrityError(
                    f"{self._where}: the safetensors header changed while the member was being "
                    "read (the file was written to during the load)",
                    member=self._where, field="header",
                )  # fmt: skip
        with self._cond:
            slot = self._lent.get(id(data))
        if slot is not None:
            src = slot.tensor[: end - start]
        elif end > start:  # the reader's own memory (a member read whole first)
            src = torch.frombuffer(data, dtype=torch.uint8)
        else:
            return
        with self._on(slot):
            i = max(0, bisect.bisect_right(self._starts, start) - 1)
            while i < len(self._targets):
                t_start, dst = self._targets[i]
                t_end = t_start + dst.numel()
                if t_start >= end:
                    break
                lo, hi = max(start, t_start), min(end, t_end)
                if lo < hi:
                    # non_blocking only from a pinned staging buffer: the reader's own memory
                    # may be released as soon as this returns
                    dst[lo - t_start : hi - t_start].copy_(
                        src[lo - start : hi - start], non_blocking=slot is not None
                    )
                i += 1
            if slot is not None and slot.event is not None:
                slot.event.record(slot.stream)

    def release(self, data: memoryview) -> None:
        with self._cond:
            slot = self._lent.pop(id(data), None)
            if slot is not None:
                self._free.append(slot)
                self._cond.notify()

    # -- the rest ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _on(self, slot: _Slot | None) -> Iterator[None]:
        if not self._cuda:
            yield
            return
        stream = slot.stream if slot is not None else self._streams[0]
        with torch.cuda.device(self._device), torch.cuda.stream(stream):
            yield

    def finish(self) -> None:
        """Wait for every copy (the load returns tensors that are complete, and a failed one
        frees nothing a copy still writes)."""
        for stream in self._streams:
            stream.synchronize()


def header_of(view: memoryview, where: str) -> bytes:
    """A safetensors member's 8-byte length and JSON header, copied out of ``view``."""
    if len(view) < 8:
        return bytes(view)
    (n,) = struct.unpack_from("<Q", view, 0)
    return bytes(view[: 8 + min(n, len(view) - 8, 100 << 20)])


def weights_to_device(
    reader: PackReader, name: str, device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, StoredTensor]]:
    """The stored tensors of weights member ``name`` on ``device`` (with the file's
    ``__metadata__`` and the parsed layout), streamed through :class:`DeviceCopy`: checked
    piece by piece where ``reader.check_when_read(name, ...)`` asked for it."""
    view = reader.view(name)  # the map: only its header pages are read from it
    head = header_of(view, name)
    stored_at, metadata = parse_safetensors(head, name, size=len(view))
    flats: dict[str, torch.Tensor] = {}
    for key, t in stored_at.items():
        if t.end > t.start:
            flats[key] = torch.empty(t.end - t.start, dtype=torch.uint8, device=device)
    data_start = 8 + struct.unpack_from("<Q", head, 0)[0]
    sink = DeviceCopy([(stored_at[k].start, f) for k, f in flats.items()],
                      head[:data_start], device, name)  # fmt: skip
    try:
        reader.read_into(name, sink)
    finally:
        sink.finish()
    tensors: dict[str, torch.Tensor] = {}
    for key, t in stored_at.items():
        dtype = getattr(torch, t.dtype)
        if key in flats:
            tensors[key] = flats[key].view(dtype).view(t.shape)
        else:
            tensors[key] = torch.empty(t.shape, dtype=dtype, device=device)
    return tensors, metadata, stored_at
