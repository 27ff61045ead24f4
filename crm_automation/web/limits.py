"""Per-client rate limits (issue #19): the public unsubscribe endpoints, and failed logins.

Built on the ``limits`` library (moving window, in-process memory): ``serve``
is one process, so the counts need no shared storage; a restart forgets
them, which only gives an attacker one fresh window.

The client is the address uvicorn reports, which is the reverse proxy's
``X-Forwarded-For`` only when the connection comes from one of
``[serve] trusted_proxies`` (uvicorn's proxy-headers middleware): a client
cannot pick its own bucket by sending the header itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

UNSUBSCRIBE_PER_MINUTE = 30  # /u/, /c/, /o/: a person clicks a few times; a scanner or a guesser more
FAILED_LOGINS_PER_MINUTE = 5  # wrong passwords from one address before logins from it wait


@dataclass
class Limit:
    """One limit: at most ``item`` hits per client in its moving window."""

    name: str
    item: RateLimitItem
    _limiter: MovingWindowRateLimiter = field(default_factory=lambda: MovingWindowRateLimiter(MemoryStorage()))

    def hit(self, client: str) -> bool:
        """Count one hit; False when the client is over the limit (and the hit is not counted)."""
        return self._limiter.hit(self.item, self.name, client)

    def allows(self, client: str) -> bool:
        """Whether one more hit would be within the limit (counts nothing)."""
        return self._limiter.test(self.item, self.name, client)


@dataclass
class RateLimits:
    """The app's limits, one set per app (each test server starts with clean counts)."""

    public: Limit = field(default_factory=lambda: Limit("public", RateLimitItemPerMinute(UNSUBSCRIBE_PER_MINUTE)))
    failed_logins: Limit = field(
        default_factory=lambda: Limit("failed_logins", RateLimitItemPerMinute(FAILED_LOGINS_PER_MINUTE)))
