"""Use cases that read a whole log at once, with Python's cyclic garbage collector held off meanwhile.

Why (issue #21, "one day's digests for 50 owners and ``report pipeline``
under 2 s at 100,000 customers"): these read hundreds of thousands of rows
into tuples, strings and small records, none of which form reference
cycles. CPython's collector still runs a generation pass every 700 new
objects and a full pass now and then, walking everything alive: about a
tenth of the digests' time, measured with benchmarks/bench_pipeline.py
(0.15-0.2 s of ~1.8 s). Holding it off for the call and letting it run
after is the standard remedy for allocation-heavy phases (the ``gc``
module's documentation); reference counting frees everything as usual.

Process-wide by nature (the collector is one per process), so the pause is
counted: overlapping calls from several threads (``serve``'s pages in the
threadpool) keep it off until the last one ends, and it is switched back
on only if it was on when the first one began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off the cyclic collector inside (usable as a decorator: ``@collector_paused()``)."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
