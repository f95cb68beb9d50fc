"""Progress of long operations (save, migrate, pack, add-engine, build, verify, push, pull):
one mechanism for the CLI's line on stderr and for a Python caller's callback.

Every writer and reader that can take seconds accepts ``progress=``:

- ``None`` (the default): a line on stderr, redrawn in place, only when stderr is a terminal;
- ``True``: on stderr even when it is not a terminal (one line per step: a log);
- ``False``: nothing;
- a callable: called with a :class:`ProgressEvent` at each step and every ~0.1 s of bytes
  (and once at the end); nothing is printed.

``done`` of the events a callback receives never decreases and ends at ``total``, the bytes
of the whole operation (0 while the operation is in a step whose size is not known yet, such
as exporting ONNX or building an engine). A line printer of our own (a few dozen lines), so
that nothing is imported at start-up for it (``trtpack inspect`` stays fast).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation, as a ``progress=`` callback receives it."""

    operation: str  #: "save", "migrate", "build", "add-engine", "verify", "push", "pull"
    step: str  #: what is happening: a member's name, "export ONNX", "build engine rtx_sm89"
    done: int  #: bytes processed so far (never decreases)
    total: int  #: bytes of the whole operation (0 while not known yet)


ProgressCallback = Callable[[ProgressEvent], None]
#: what ``progress=`` accepts (see the module's docstring)
ProgressArg = bool | None | ProgressCallback

_REDRAW_S = 0.1  # at most ten redraws (or callback calls for bytes) a second


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class Progress:
    """The reporter an operation drives: ``step()`` names a phase, ``total`` is set once the
    bytes are known, ``begin(name)`` starts a member, ``advance(n)`` counts bytes, ``close()``
    ends it. On a terminal: one line redrawn in place; forced elsewhere: one line per step and
    per member; to a callback: events. ``enabled`` as ``progress=`` (module docstring)."""

    def __init__(self, verb: str, enabled: ProgressArg, stream: TextIO | None = None) -> None:
        if enabled is not None and not isinstance(enabled, bool) and not callable(enabled):
            from ..errors import ArgumentTypeError

            raise ArgumentTypeError("progress", "None, a bool or a callable", enabled)
        self.stream = stream if stream is not None else sys.stderr
        self.callback: ProgressCallback | None = None
        if callable(enabled):
            self.callback, self.tty, self.on = enabled, False, False
        else:
            try:
                self.tty = self.stream.isatty()
            except (AttributeError, ValueError):
                self.tty = False
            self.on = self.tty if enabled is None else bool(enabled)
        self.verb, self.total, self.done, self.name = verb, 0, 0, ""
        self.started = self.last = time.monotonic()
        self.member_start = 0
        self.reported = -1  # the last ``done`` a callback saw: resends never go backwards
        self.drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None and self.on and self.tty and self.drawn:
            self._write("\n")  # the error message starts on a line of its own

    @property
    def active(self) -> bool:
        """Whether anything is shown or called (callers skip work done only for progress)."""
        return self.on or self.callback is not None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _emit(self) -> None:
        if self.callback is not None and self.done >= self.reported:
            self.reported = self.done
            self.callback(ProgressEvent(self.verb, self.name, self.done, self.total))

    def _draw(self) -> None:
        if not self.total:
            line = f"{self.verb}: {self.name} ..."
        else:
            pct = 100 * self.done // self.total
            rate = self.done / max(time.monotonic() - self.started, 1e-6)
            bar = "#" * (pct // 5) + "." * (20 - pct // 5)
            line = (f"{self.verb} [{bar}] {pct:3d}%  {human_size(self.done)} / "
                    f"{human_size(self.total)}  {human_size(int(rate))}/s  "
                    f"{self.name}")  # fmt: skip
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._write("\r" + line[:width] + "\x1b[K")
        self.last, self.drawn = time.monotonic(), True

    def step(self, name: str) -> None:
        """A phase whose bytes are not counted (exporting, building): named, so the terminal
        shows what is happening."""
        self.name = name
        if self.on and self.tty:
            self._draw()
        elif self.on:
            self._write(f"{self.verb}: {name}\n")
        self._emit()

    def begin(self, name: str) -> None:
        self.name, self.member_start = name, self.done
        if self.on and self.tty:
            self._draw()
        self._emit()

    def restart(self) -> None:
        """The bytes of this member are being sent again (a retried request)."""
        self.done = self.member_start

    def advance(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last > _REDRAW_S:
            if self.on and self.tty:
                self._draw()
            elif self.callback is not None:
                self.last = time.monotonic()
                self._emit()

    def note(self, name: str, size: int, what: str) -> None:
        if self.on and not self.tty:
            self._write(f"{self.verb} {name}  {human_size(size)}  {what}\n")

    def close(self, summary: str) -> None:
        self.name = ""
        self._emit()  # the last event: done == total
        if not self.on:
            return
        if self.tty and self.drawn:
            self._draw()
            self._write("\n")
        else:  # a log, or a terminal that saw no transfer
            self._write(f"{self.verb} {summary}\n")
