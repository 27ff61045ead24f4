"""Per-client rate limits (issue #19): the public unsubscribe endpoints, and failed logins.

A moving window per client, kept in this process's memory: ``serve`` is one
process, so the counts need no shared storage; a restart forgets them, which
only gives an attacker one fresh window.

Why not the ``limits`` library, which this module used at first: its
in-memory storage expires entries from a timer thread that it starts again
every 10 ms while requests keep coming, and every start blocks the request
that triggers it until the thread runs. In a burst of one-click POSTs that
was about a tenth of ``serve``'s CPU, on a host where the worker sending
beside it needs every cycle (benchmarks/bench_unsubscribe.py, the CPU a
POST before and after). What the endpoints need is small: per client, the
times of its recent hits; old ones are dropped when the client comes back,
and clients gone quiet are swept now and then.

The client is the address uvicorn reports, which is the reverse proxy's
``X-Forwarded-For`` only when the connection comes from one of
``[serve] trusted_proxies`` (uvicorn's proxy-headers middleware): a client
cannot pick its own bucket by sending the header itself.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

UNSUBSCRIBE_PER_MINUTE = 30  # /u/, /c/, /o/: a person clicks a few times; a scanner or a guesser more
FAILED_LOGINS_PER_MINUTE = 5  # wrong passwords from one address before logins from it wait
SWEEP_EVERY = 10_000  # hits between sweeps of the clients gone quiet (memory stays bounded by the busy ones)


@dataclass
class Limit:
    """One limit: at most ``per_window`` hits per client in any ``window`` seconds (a moving window)."""

    name: str
    per_window: int
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _hits: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _since_sweep: int = field(default=0, init=False, repr=False)

    def hit(self, client: str) -> bool:
        """Count one hit; False when the client is over the limit (and the hit is not counted)."""
        now = self.clock()
        with self._lock:
            hits = self._recent(client, now)
            if len(hits) >= self.per_window:
                return False
            hits.append(now)
            self._since_sweep += 1
            if self._since_sweep >= SWEEP_EVERY:
                self._sweep(now)
            return True

    def allows(self, client: str) -> bool:
        """Whether one more hit would be within the limit (counts nothing)."""
        with self._lock:
            hits = self._hits.get(client)
            return hits is None or len(self._recent(client, self.clock())) < self.per_window

    def clients(self) -> int:
        """How many clients are remembered (the sweep keeps this to the ones seen within the window)."""
        return len(self._hits)

    def _recent(self, client: str, now: float) -> deque[float]:
        hits = self._hits.setdefault(client, deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        return hits

    def _sweep(self, now: float) -> None:
        self._since_sweep = 0
        quiet = [c for c, hits in self._hits.items() if not hits or hits[-1] <= now - self.window]
        for client in quiet:
            del self._hits[client]


@dataclass
class RateLimits:
    """The app's limits, one set per app (each test server starts with clean counts)."""

    public: Limit = field(default_factory=lambda: Limit("public", UNSUBSCRIBE_PER_MINUTE))
    failed_logins: Limit = field(default_factory=lambda: Limit("failed_logins", FAILED_LOGINS_PER_MINUTE))
