"""The progress line of a push or pull on stderr."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from ...reading import human_size


class _Progress:
    """One line on stderr, redrawn in place on a terminal; one line per blob when asked for
    elsewhere (a log); nothing when off. ``enabled`` None: on only if the stream is a TTY."""

    def __init__(self, verb: str, enabled: bool | None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.on = self.tty if enabled is None else enabled
        self.verb, self.total, self.done, self.name = verb, 0, 0, ""
        self.started = self.last = time.monotonic()
        self.member_start = 0
        self.drawn = False

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is not None and self.on and self.tty and self.drawn:
            self._write("\n")  # the error message starts on a line of its own

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _draw(self) -> None:
        if not self.total:
            return  # nothing to measure yet (the pack's manifest.json, before its size is known)
        pct = 100 * self.done // self.total
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        line = (f"{self.verb} [{bar}] {pct:3d}%  {human_size(self.done)} / "
                f"{human_size(self.total)}  {human_size(int(rate))}/s  {self.name}")  # fmt: skip
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._write("\r" + line[:width] + "\x1b[K")
        self.last, self.drawn = time.monotonic(), True

    def begin(self, name: str) -> None:
        self.name, self.member_start = name, self.done
        if self.on and self.tty:
            self._draw()

    def restart(self) -> None:
        """The body is being sent again (the library retried the request)."""
        self.done = self.member_start

    def advance(self, n: int) -> None:
        self.done += n
        if self.on and self.tty and time.monotonic() - self.last > 0.1:
            self._draw()

    def note(self, name: str, size: int, what: str) -> None:
        if self.on and not self.tty:
            self._write(f"{self.verb} {name}  {human_size(size)}  {what}\n")

    def close(self, summary: str) -> None:
        if not self.on:
            return
        if self.tty and self.drawn:
            self.name = ""
            self._draw()
            self._write("\n")
        else:  # a log, or a terminal that saw no transfer
            self._write(f"{self.verb} {summary}\n")
