"""The SMTP accounts of one send pass (issue #20, part 3): each one's connection, limits, pacing and fate.

Why apart from :class:`~crm_automation.send.dispatch.Dispatcher`: what one
account may do now (its ``max_per_minute``/``max_per_day``, counted in the
log across workers; its 5xx streak; whether its server let us in) is state
per account for one pass, and the dispatcher's job is the exactly-once
sequence of each message. With one account, a :class:`Lanes` has one
:class:`Lane` and the pass behaves as it always did: a limit reached ends
the pass, a failed login stops it with that error.

With several, a failure is the account's: a server that cannot be reached
or refuses the login, a provider's quota answer, or a streak of 5xx answers
about our sender takes *that* account out for the rest of the pass (its
sends stay queued for a later pass); the pass stops with an error only when
no account is left. Connections are opened on an account's first send of
the pass and closed at its end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from functools import partial

from crm_automation.errors import CrmError, ServiceError
from crm_automation.send.accounts import Account, Router
from crm_automation.stage import StageResult
from crm_automation.store.claims import Rate, RecentHandOvers
from crm_automation.store.repo import Store
from crm_automation.store.sends import SendRow
from crm_automation.transports.base import Transport
from crm_automation.workspace import Workspace

# (per_minute, per_day, hand-overs in the last minute, in the last day) -> why not now, or None
RateRule = Callable[[int, int, int, int], str | None]
# A send whose account must wait for max_per_minute while another may send now is set aside; at most this many
# (claimed, still queued; released at the pass's end if never sent), so the pass's memory stays bounded.
PARK_MAX = 64


class Lane:
    """One account during one pass: the rate the log counts, this worker's view of it, its connection, its fate."""

    __slots__ = ("account", "day", "full_noted", "out", "rate", "recent", "streak", "transport")

    def __init__(self, account: Account, rate: Rate, seen: RecentHandOvers) -> None:
        self.account, self.rate = account, rate
        self.recent: deque[datetime] = deque(seen.minute)
        self.day = seen.day
        self.transport: Transport | None = None  # opened at the account's first send of the pass
        self.out: CrmError | None = None  # why the account sends no more this pass
        self.streak = 0  # 5xx answers about our sender in a row (dispatch.MAX_CONSECUTIVE_5XX)
        self.full_noted = False

    @property
    def day_full(self) -> bool:
        """Whether ``max_per_day`` is reached (this worker's count, kept in step with the log's)."""
        return bool(self.account.per_day) and self.day >= self.account.per_day

    def recount(self, seen: RecentHandOvers) -> None:
        """Take the log's count (all workers) after the log refused a hand-over this count allowed."""
        self.recent, self.day = deque(seen.minute), seen.day

    def counted(self, at: datetime) -> None:
        """One more hand-over by this worker."""
        self.day += 1
        self.recent.append(at)


class Lanes:
    """The pass's accounts, by the :class:`~crm_automation.send.accounts.Router` that names each send's."""

    __slots__ = ("by_label", "only", "router", "ws")

    def __init__(self, ws: Workspace, store: Store, router: Router, rule: RateRule, now: datetime) -> None:
        self.ws, self.router = ws, router
        others = bool(ws.cfg.outbound.accounts)
        self.by_label = {a.label: Lane(a, Rate(a.name, a.per_minute, a.per_day,
                                               partial(rule, a.per_minute, a.per_day), others),
                                       store.recent_hand_overs(a.name, now)) for a in router.accounts}
        self.only = next(iter(self.by_label.values())) if len(self.by_label) == 1 else None

    def of(self, s: SendRow) -> Lane:
        """The lane of the account that sends ``s``."""
        if self.only is not None:
            return self.only
        return self.by_label[self.router.account_for(s).label]

    def transport(self, lane: Lane) -> Transport:
        """The account's connection, opened at its first use this pass (ServiceError: cannot connect or log in)."""
        if lane.transport is None:
            name = lane.account.name
            t = self.ws.open_transport() if name is None else self.ws.open_transport(name)
            try:
                t.open()
            except ServiceError as e:
                if self.only is not None:
                    raise
                raise ServiceError(f"account {lane.account.label}: {e}", hint=e.hint) from None
            lane.transport = t
        return lane.transport

    def take_out(self, lane: Lane, e: CrmError, res: StageResult) -> None:
        """The account sends no more this pass; the pass stops (``res.error``) only when none is left."""
        lane.out = e
        if self.only is not None:
            res.error = e  # one account: the pass stops with its error, as it always did
            return
        label = lane.account.label
        shown = str(e) if str(e).startswith(f"account {label}:") else f"account {label}: {e}"
        res.problems.append(f"{shown} (its sends wait for a later pass; the other accounts carry on)")
        if not self.any_left():
            res.error = ServiceError(f"no SMTP account can send any more in this pass (last: {shown})", hint=e.hint)

    def any_left(self) -> bool:
        """Whether some account may still send this pass (not taken out, ``max_per_day`` not reached)."""
        return any(lane.out is None and not lane.day_full for lane in self.by_label.values())

    def other_ready(self, lane: Lane, now: datetime, wait: Callable[[Lane, datetime], float]) -> bool:
        """Whether another account may send at once (so a send of ``lane``, which must wait, is set aside)."""
        return any(o is not lane and o.out is None and not o.day_full and wait(o, now) <= 0
                   for o in self.by_label.values())

    def note_full(self, lane: Lane, res: StageResult) -> None:
        """Say once that the account reached ``max_per_day`` (one account: the pass's note, as before)."""
        why = f"max_per_day {lane.account.per_day} reached (rolling 24 hours)"
        if self.only is not None:
            res.stats["note"] = why
            return
        if not lane.full_noted:
            lane.full_noted = True
            note = f"account {lane.account.label}: {why}, its sends stay queued"
            old = res.stats.get("note")
            res.stats["note"] = f"{old}; {note}" if old else note

    def close(self) -> None:
        """Close every connection opened this pass."""
        for lane in self.by_label.values():
            t, lane.transport = lane.transport, None
            if t is not None:
                with suppress(CrmError, OSError):
                    t.close()
