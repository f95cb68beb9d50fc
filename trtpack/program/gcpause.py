"""``paused_gc()``: Python's cyclic garbage collector held off while a big graph is converted.

Decoding a program's JSON, checking it, building its torch.fx graph and torch's own
serialization each allocate hundreds of thousands of small containers, none of them garbage
while the work runs. Every 700 allocations the collector starts, and each time enough of them
have survived it walks every tracked object of the process, the model's included: at 10,000
nodes that was 70% of decoding the graph's JSON and half of ``save`` (issue 27, item 7).
Nothing is lost by pausing it: the collector only frees reference cycles, and any made
meanwhile are freed at its next run.

The collector is process-wide: pauses on several threads (a load decodes its graph on a second
thread) nest, and the last one to end turns it back on, unless it was off before the first began
(then it stays off, as the user left it). No torch import: graph checks use it on torch-free
paths.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_active = 0  # pauses under way, on any thread
_reenable = False  # whether the collector was on when the first of them began


@contextmanager
def paused_gc() -> Iterator[None]:
    global _active, _reenable
    with _lock:
        if _active == 0:
            _reenable = gc.isenabled()
            gc.disable()
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _reenable:
                gc.enable()
