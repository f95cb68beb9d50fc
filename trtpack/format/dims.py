"""Dim expressions (``coef * symbol + offset``): parsing them, the default ``opt``, a new
symbol's name, a tensor's memory format. No torch."""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ManifestError


@dataclass(frozen=True)
class DimExpr:
    """``coef * symbol + offset``: the only form torch.export gives input dims."""

    symbol: str
    coef: int = 1
    offset: int = 0

    @property
    def plain(self) -> bool:
        """The symbol itself (``n``), the common case."""
        return self.coef == 1 and self.offset == 0

    def value(self, root: int) -> int:
        return self.coef * root + self.offset

    def solve(self, size: int) -> int | None:
        """The root value for which this expression equals ``size``, or None if none exists."""
        q, r = divmod(size - self.offset, self.coef)
        return q if r == 0 else None

    def __str__(self) -> str:
        s = self.symbol if self.coef == 1 else f"{self.coef}*{self.symbol}"
        if self.offset:
            s += f"{self.offset:+d}"
        return s


_DIM_RE = re.compile(
    r"^\s*(?:(?P<c1>\d+)\s*\*\s*)?(?P<sym>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\s*\*\s*(?P<c2>\d+))?\s*(?:(?P<sign>[+-])\s*(?P<off>\d+))?\s*$"
)


def parse_dim(text: str, *, where: str = "dim") -> DimExpr:
    """Parse ``n``, ``2*n``, ``n*2``, ``n+1``, ``2*n - 1``. Raises ManifestError otherwise."""
    m = _DIM_RE.match(text)
    if not m or (m["c1"] and m["c2"]):
        raise ManifestError(
            f"{where}: dim {text!r} is not of the form 'n', 'a*n', 'n+b' or 'a*n+b'"
        )
    coef = int(m["c1"] or m["c2"] or 1)
    if coef == 0:
        raise ManifestError(f"{where}: dim {text!r} has coefficient 0")
    offset = int(m["off"] or 0) * (-1 if m["sign"] == "-" else 1)
    return DimExpr(m["sym"], coef, offset)


def opt_rule(lo: int, hi: int | None) -> int:
    """opt when no example size is known: the max of a bounded range (engines tuned for the
    largest call), the min of an unbounded one. Always within [min, max]."""
    return lo if hi is None else hi


def memory_format_of(sizes: list[int], strides: list[int]) -> str:
    """``contiguous``, ``channels_last(_3d)`` or ``strided``, from concrete sizes and strides
    (size-1 dims are ignored, as torch does)."""

    def dense(order: list[int]) -> bool:
        expect = 1
        for i in order:
            if sizes[i] != 1 and strides[i] != expect:
                return False
            expect *= sizes[i]
        return True

    n = len(sizes)
    if dense(list(range(n - 1, -1, -1))):
        return "contiguous"
    if n == 4 and dense([1, 3, 2, 0]):
        return "channels_last"
    if n == 5 and dense([1, 4, 3, 2, 0]):
        return "channels_last_3d"
    return "strided"


def symbol_name(
    input_name: str, dim: int | None, taken: Iterable[str], user: str | None = None
) -> str:
    """A manifest name for a new symbol: the user's ``Dim`` name when known, else
    ``<input>_dim<i>`` (``<input>`` for an int input); a valid identifier, unique in ``taken``."""
    base = user or (input_name if dim is None else f"{input_name}_dim{dim}")
    base = re.sub(r"[^A-Za-z0-9_]", "_", base)
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "_" + base
    taken = set(taken)
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
