"""Push and pull report through the one progress mechanism of every long operation
(``trtpack.format.progress``): a line on stderr when it is a terminal, ``progress=True`` /
``False`` / a callable."""

from __future__ import annotations

from ...format.progress import Progress as _Progress
from ...format.progress import ProgressArg

__all__ = ["ProgressArg", "_Progress"]
