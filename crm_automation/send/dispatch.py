"""Dispatch: hand each queued message over exactly once, within the window and the limits (SPEC §10).

The exactly-once sequence for one send is: queued with its Message-ID ->
``sending`` committed -> handed to the transport -> ``sent`` (committed with
the next message's ``sending`` mark, one commit a message, issue #5). A send
found in ``sending`` at the next start is :mod:`crm_automation.send.recovery`'s.

Two overlaps keep the client busy while an SMTP server answers (issue #18,
bench_send), without changing that sequence: the commit that marks a
message ``sending`` is the transport's ``claim``, made while the server
answers ``MAIL FROM`` (nothing of a message is delivered before ``DATA``'s
content, which waits for the commit); and the next message is rendered
while the server decides about the current one's content (``meanwhile``:
pure work, written nowhere).

The transaction that marks a campaign email ``sending`` also looks its
address up on the suppression list and its customer's email status, as
they are at that instant (issue #19): ``serve`` and the CLI write while a
pass runs, and an unsubscribe recorded a second before the hand-over is
honoured (the send is recorded ``skipped``, reason ``suppressed``, as the
planner records it), at the cost of two primary-key lookups in a
transaction the pass commits anyway.

Several workers may share one PostgreSQL log (issue #20): a pass does not
read the queue once, it *claims* :data:`CLAIM_BATCH` sends at a time
(``store/claims.py``: one statement, ``FOR UPDATE SKIP LOCKED`` there), the
next batch before the last claimed send goes, so the next message can
still be rendered ahead; what it did not hand over is released at the end.
``max_per_minute`` and ``max_per_day`` are counted in the log, across all
workers, in the same commit that marks a send ``sending`` (:class:`Rate`,
rule :func:`rate_block`); the count kept in memory only spares a
``MAIL FROM`` that the log would refuse.

Several SMTP accounts (issue #20, part 3): each send goes through the
account :mod:`crm_automation.send.accounts` names (a campaign's pin, else
weighted rendezvous hashing of the customer), built with that account's
From and Reply-To, counted against that account's limits (``sends.account``)
and handed to that account's connection (:mod:`crm_automation.send.lanes`:
opened at its first send, closed at the pass's end). An account at its
``max_per_day``, or taken out by a failure about it, leaves its sends
queued while the others send; one that must wait for ``max_per_minute`` has
its sends set aside while another may send now. With one account all of
this is the pass as it was.

Pacing, the send window and the retry delay are pure functions of ``now``
(:func:`in_window`, :func:`pace_wait`, :func:`retry_at`, :func:`gives_up`);
waiting goes through one seam, ``wait(seconds) -> stopped``, which is the
stop flag's ``wait`` in production and a fake clock in tests. The
transport's answer is mapped by what comes next: 4xx waits (that send
alone), 5xx fails (a streak of answers about our account stops the pass), an
unknown recipient is a hard bounce, a full mailbox a soft one (issue #17).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo

from crm_automation.compose import Composed, Composer, Sender
from crm_automation.config import parse_window
from crm_automation.errors import (
    About,
    ConfigError,
    CrmError,
    DataError,
    PermanentSendError,
    QuotaExceededError,
    ServiceError,
    TransientSendError,
    UncertainSendError,
)
from crm_automation.models import SendStatus
from crm_automation.planner import address_block
from crm_automation.send.accounts import Router, accounts_of
from crm_automation.send.kinds import Outgoing, kind_of
from crm_automation.send.lanes import PARK_MAX, Lane, Lanes
from crm_automation.send.plan import Ready
from crm_automation.send.refusals import mailbox_full, refused_recipient
from crm_automation.stage import StageContext, StageResult
from crm_automation.store.claims import Rate
from crm_automation.store.repo import Store
from crm_automation.store.sends import Claim, Gate, SendRow, Sent
from crm_automation.workspace import Workspace

RETRY_BASE = timedelta(minutes=5)
RETRY_MAX = timedelta(hours=6)
QUOTA_WAIT = timedelta(hours=1)
MAX_CONSECUTIVE_5XX = 3
RECIPIENT_4XX_ATTEMPTS = 10
RECIPIENT_4XX_FOR = timedelta(days=3)
# Sends claimed at a time (issue #20). Small, so a worker killed with a batch in hand strands little (its claims
# wait for fleet to find it dead), and the claim's commit, one per batch, stays a small part of a message's
# (bench_send: ~2 us a message at 16). The next batch is claimed before the last send of one goes, so the
# message after it can be rendered while the server answers (issue #18).
CLAIM_BATCH = 16
LIMIT_RECHECK = 0.05  # seconds: the log refused a hand-over that this worker's count allowed; look again after


# ---------------------------------------------------------------- pure rules


def in_window(now: datetime, window: str | None, tz: ZoneInfo) -> bool:
    """Whether ``now`` is inside ``send_window`` (``"09:00-18:00"``, local time; may wrap midnight)."""
    if not window:
        return True
    start, end = parse_window(window) or (0, 1440)
    local = now.astimezone(tz)
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def pace_wait(recent: deque[datetime], per_minute: int, now: datetime) -> float:
    """Seconds until one more message fits ``per_minute`` (0.0: now). Drops hand-overs older than a minute."""
    while recent and recent[0] <= now - timedelta(minutes=1):
        recent.popleft()
    if not per_minute or len(recent) < per_minute:
        return 0.0
    return max((recent[0] + timedelta(minutes=1) - now).total_seconds(), 0.0)


def retry_at(now: datetime, attempts: int) -> datetime:
    """When a send refused with 4xx is tried again: 5 minutes, doubling with each attempt, at most 6 hours."""
    doubled: int = 1 << min(max(attempts, 0), 12)  # capped before multiplying: 2**40 * 5 min overflows timedelta
    return now + min(RETRY_BASE * doubled, RETRY_MAX)


def gives_up(attempts: int, queued_at: datetime | None, now: datetime) -> bool:
    """Whether a send that one recipient's server keeps answering with 4xx becomes ``failed`` (issue #17).

    After :data:`RECIPIENT_4XX_ATTEMPTS` attempts (with :func:`retry_at`'s
    doubling delays, about a day), or once it was queued
    :data:`RECIPIENT_4XX_FOR` ago and tried at least three times (a worker
    run rarely by cron). An MTA keeps trying for days (RFC 5321 §4.5.4.1); a
    campaign email that late is stale, and ``requeue`` can send it again.
    """
    if attempts >= RECIPIENT_4XX_ATTEMPTS:
        return True
    return attempts >= 3 and queued_at is not None and now - queued_at >= RECIPIENT_4XX_FOR


def rate_block(per_minute: int, per_day: int, last_minute: int, last_day: int) -> str | None:
    """Why one more message must not go now (hand-overs of all workers counted in the log), or None (issue #20)."""
    if per_day and last_day >= per_day:
        return f"max_per_day {per_day} reached (rolling 24 hours)"
    if per_minute and last_minute >= per_minute:
        return f"max_per_minute {per_minute} reached"
    return None


def _must_wait(lane: Lane, now: datetime) -> float:
    """Seconds until the lane's account may hand one more message over by its ``max_per_minute`` (0.0: now)."""
    return pace_wait(lane.recent, lane.account.per_minute, now)


def _unparked(parked: deque[SendRow], lanes: Lanes, now: datetime) -> SendRow | None:
    """The first send set aside whose account need not wait any more (or sends no more: it is dropped then)."""
    if not parked:
        return None
    for i, s in enumerate(parked):
        lane = lanes.of(s)
        if lane.out is not None or lane.day_full or _must_wait(lane, now) <= 0:
            del parked[i]
            return s
    return None


# ---------------------------------------------------------------- the hand-over


class _Claim:
    """The send's ``sending`` mark, committed with the last message's ``sent`` record when the transport asks.

    Passed to the transport as its ``claim``: an SMTP transport asks once
    ``MAIL FROM`` went out, so the commit overlaps the server's answer, and
    always before any of the content (issue #18). Exactly-once holds as
    before: ``sending`` is committed before the message can be delivered; a
    crash before the commit leaves this send ``queued`` (nothing was
    delivered) and the last message ``sending`` (recovery's, as before).
    """

    __slots__ = ("failed", "gate", "holder", "links", "message_id", "now", "rate", "result", "send_id", "sent",
                 "store")

    def __init__(self, store: Store, sent: Sent | None, send_id: int, message_id: str, now: datetime,
                 holder: str, gate: Gate | None, links: Sequence[str] = (), rate: Rate | None = None) -> None:
        self.store, self.sent, self.send_id, self.message_id, self.now, self.gate = (
            store, sent, send_id, message_id, now, gate)
        self.holder = holder  # this worker: only a send it claimed is marked (issue #20)
        self.links = links  # the message's tracked links (issue #19), recorded with its ``sending`` mark
        self.rate = rate  # the limits, counted across workers in the same commit (issue #20)
        self.result: Claim | None = None  # None: the transport never asked
        self.failed = False  # the commit itself raised

    def __call__(self) -> bool:
        """Commit; True when the send is ``sending`` and may go (False: skipped now, over a limit, or not ours)."""
        try:
            self.result = self.store.mark_sent_and_sending(self.sent, self.send_id, self.message_id, self.now,
                                                           self.holder, self.gate, links=self.links, rate=self.rate)
        except CrmError:
            self.failed = True
            raise
        return self.result is Claim.SENDING


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One send made ready, before anything about it is written: its message, or why it does not go."""

    send_id: int
    out: Outgoing | str  # the message to hand over, or why it is skipped
    message_id: str
    composed: Composed | DataError | ConfigError | None  # the built message, or why it cannot be built


class _Queue:
    """This pass's claimed sends in id order (issue #20): claims the next batch before the last one goes.

    Keeping a second send in hand lets the transport's ``meanwhile`` render
    it while the server answers the first (issue #18). ``after`` moves the
    claims forward through the queue, so a pass reads each queued row once.
    """

    __slots__ = ("after", "done", "held", "me", "rows", "store")

    def __init__(self, store: Store, me: str, held: Sequence[str]) -> None:
        self.store, self.me, self.held = store, me, held
        self.rows: deque[SendRow] = deque()
        self.after = 0
        self.done = False

    def next(self, now: datetime) -> SendRow | None:
        """The next claimed send (claiming more first when one or none is left); None: nothing more to claim."""
        if len(self.rows) < 2 and not self.done:
            got = self.store.claim_sends(self.me, now, CLAIM_BATCH, held=self.held, after=self.after)
            self.rows.extend(got)
            if got:
                self.after = got[-1].id
            else:
                self.done = True
        return self.rows.popleft() if self.rows else None

    def peek(self) -> SendRow | None:
        """The send after the current one, if claimed already (to render ahead)."""
        return self.rows[0] if self.rows else None


class Dispatcher:
    """Hands queued sends over; one per worker (it carries the 5xx streak and the pending ``sent`` record)."""

    def __init__(self, ws: Workspace, ctx: StageContext, composer: Composer, wait: Callable[[float], bool]) -> None:
        self.ws = ws
        self.ctx = ctx
        self.store = ctx.store
        self.composer = composer
        self.wait = wait  # the clock seam: sleep, or return True when asked to stop
        self.accounts = accounts_of(ws.cfg.outbound)  # [outbound]'s own and [[outbound.accounts]] (issue #20)
        # The ``sent`` record of the message just handed over rides in the same commit as the next
        # message's ``sending`` mark: one commit a message instead of two, same exactly-once guarantee.
        self._pending_sent: Sent | None = None
        # The next send, prepared while the server decided about the previous one (issue #18).
        self._ahead: _Prepared | None = None

    def send_queue(self, ready: Ready, res: StageResult, limit: int | None) -> None:
        """Send what is queued and due, in the window and within the limits; the rest waits for a later pass."""
        ob = self.ws.cfg.outbound
        tz = self.ws.cfg.timezone
        now = self.ctx.clock.now()
        me = self.ctx.fleet.worker_id
        due, n_held = self.store.queue_counts(me, now, sorted(ready.held))
        res.stats.update({"sent": 0, "failed": 0, "retry_later": 0, "uncertain": 0, "skipped_now": 0, "waiting": 0})
        if ready.held:
            res.stats["held"] = n_held
        if not due:
            return
        res.stats["waiting"] = due
        if not in_window(now, ob.send_window, tz):
            res.stats["note"] = f"outside send_window {ob.send_window} ({tz.key})"
            return
        pins = {c.id: c.account for c in self.ws.campaigns if c.account is not None}
        lanes = Lanes(self.ws, self.store, Router(self.accounts, pins), rate_block, now)
        bar = self.ctx.progress("send", due)
        try:
            self._hand_over(_Queue(self.store, me, sorted(ready.held)), ready, lanes, res, limit, bar.advance)
        finally:
            self._ahead = None  # prepared for this pass's reading of the log: never carried into the next
            try:
                self._flush_sent()
            finally:
                with suppress(CrmError):  # not released: they wait until this worker is found stopped
                    self.store.release_claims(me)
                bar.close()
                lanes.close()
        res.stats["waiting"] = self.store.count_sends(SendStatus.QUEUED)

    def _hand_over(self, queue: _Queue, ready: Ready, lanes: Lanes, res: StageResult,
                   limit: int | None, advance: Callable[[], None]) -> None:
        """One send after another until the queue, the window, the limits or the stop flag ends the pass.

        Several accounts (issue #20 part 3): a send whose account is taken
        out or at its ``max_per_day`` stays queued and the pass goes on; one
        whose account must wait for ``max_per_minute`` is set aside while
        another account may send now, and waited for only when none may.
        """
        ob = self.ws.cfg.outbound
        tz = self.ws.cfg.timezone
        again: SendRow | None = None  # a send the log found over a limit: tried again first
        parked: deque[SendRow] = deque()  # sends set aside while their account waits for max_per_minute
        while True:
            now = self.ctx.clock.now()
            s, waited = again, again is not None  # waited: not set aside again, its account is waited for
            if s is None and (s := _unparked(parked, lanes, now)) is None and (s := queue.next(now)) is None:
                if not parked:
                    break
                s, waited = parked.popleft(), True
            if self.ctx.stop.is_set() or (limit is not None and res.stats["sent"] >= limit):
                break
            now = self.ctx.clock.now()
            if not in_window(now, ob.send_window, tz):
                res.stats["note"] = f"send_window {ob.send_window} closed during the pass"
                break
            lane = lanes.of(s)
            if lane.out is not None or lane.day_full:
                if lane.out is None:
                    lanes.note_full(lane, res)
                if not lanes.any_left():
                    break
                again = None
                continue  # stays queued (claimed until the pass ends): a later pass, or another worker, sends it
            if lane.account.per_minute and _must_wait(lane, now) > 0:
                if not waited and len(parked) < PARK_MAX and lanes.other_ready(lane, now, _must_wait):
                    parked.append(s)
                    continue
                if not self._pace(lane.recent, lane.account.per_minute):
                    break
            if again is None:
                advance()
            again = None
            if (got := self._one(s, lane, lanes, ready, queue, res)) is None:
                continue
            if res.error is not None:
                break
            if got is Claim.LIMITED:  # another worker took the last slot: count again from the log, then wait
                again = s
                lane.recount(self.store.recent_hand_overs(lane.rate.account, self.ctx.clock.now()))
                if rate_block(lane.account.per_minute, lane.account.per_day, len(lane.recent), lane.day) is None \
                        and self.wait(LIMIT_RECHECK):
                    break
                continue
            lane.counted(self.ctx.clock.now())

    def _one(self, s: SendRow, lane: Lane, lanes: Lanes, ready: Ready, queue: _Queue, res: StageResult
             ) -> Claim | bool | None:
        """Prepare (or take the prepared) send and hand it over; None: skipped before any hand-over was tried.

        Returns what the claim's commit did, or False when the transport never asked.
        """
        ahead, self._ahead = self._ahead, None
        p = ahead if ahead is not None and ahead.send_id == s.id else self._prepare(s, ready, lane.account.sender)
        if isinstance(p.out, str):
            self.store.mark_status(s.id, SendStatus.SKIPPED, p.out)
            res.stats["skipped_now"] += 1
            return None
        nxt = queue.peek()
        ahead_of = None if nxt is None else partial(self._look_ahead, nxt, ready, lanes.of(nxt).account.sender)
        got = self._deliver(s, lane, lanes, res, p, p.out, ahead_of)
        if got is Claim.LIMITED:
            self._ahead = p  # the same message goes when the log allows
        return False if got is None else got

    def _flush_sent(self) -> None:
        """Commit the ``sent`` record still held for the last message handed over."""
        if self._pending_sent is not None:
            s, self._pending_sent = self._pending_sent, None
            self.store.mark_sent(s.send_id, s.at, customer_key=s.customer_key, campaign=s.campaign, step=s.step,
                                 message_id=s.message_id, subject=s.subject, body=s.body, source=s.source)

    def _pace(self, recent: deque[datetime], per_minute: int) -> bool:
        """Wait until one more message fits in the last 60 s; False if asked to stop meanwhile."""
        while True:
            wait = pace_wait(recent, per_minute, self.ctx.clock.now())
            if wait <= 0:
                return True
            self._flush_sent()  # never hold a delivered message's record across a wait
            if self.wait(min(max(wait, 0.05), 5.0)):
                return False

    def _prepare(self, s: SendRow, ready: Ready, sender: Sender) -> _Prepared:
        """The send's message, built for its account's ``sender`` (or the error), or why it is skipped; no writes."""
        out = kind_of(s).prepare(s, ready, self.composer, self.store)
        if isinstance(out, str):
            return _Prepared(s.id, out, "", None)
        message_id = s.message_id or self.composer.message_id()
        try:
            return _Prepared(s.id, out, message_id, out.build(message_id, self.ctx.clock.now(), sender))
        except (DataError, ConfigError) as e:
            return _Prepared(s.id, out, message_id, e)

    def _look_ahead(self, s: SendRow, ready: Ready, sender: Sender) -> None:
        """Prepare the next send while the server decides about this one (the transport's ``meanwhile``).

        Pure work (rendering, building the bytes): nothing is written, so a
        pass that stops before that send's turn only wasted it. It must not
        raise in the middle of another message's SMTP transaction: an
        unexpected error drops the work, and the send is prepared again at its
        turn, where the error is raised as it always was.
        """
        try:
            self._ahead = self._prepare(s, ready, sender)
        except Exception:  # noqa: BLE001 - see the docstring: raised again at that send's own turn
            self._ahead = None

    def _deliver(self, s: SendRow, lane: Lane, lanes: Lanes, res: StageResult, p: _Prepared, out: Outgoing,
                 meanwhile: Callable[[], None] | None) -> Claim | None:
        """Mark ``sending`` (committed, as the transport's claim), hand over, record: one send, exactly once.

        Returns what the claim's commit did (None: the transport never asked).
        An error about the account (no connection, login refused, quota, a
        5xx streak) takes ``lane`` out (:meth:`Lanes.take_out`).
        """
        now = self.ctx.clock.now()
        message_id, composed = p.message_id, p.composed
        if not isinstance(composed, Composed):
            self.store.mark_failed(s.id, str(composed), now, customer_key=s.customer_key, campaign=s.campaign,
                                   step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {composed}")
            return None
        try:
            transport = lanes.transport(lane)
        except ServiceError as e:  # cannot connect or log in: nothing was tried, the send stays queued
            lanes.take_out(lane, e, res)
            return None
        gate = Gate(out.recipient, out.customer, address_block) if out.customer is not None else None
        claim = _Claim(self.store, self._pending_sent, s.id, message_id, now, self.ctx.fleet.worker_id, gate,
                       composed.links, lane.rate)
        self._pending_sent = None
        try:
            handed = transport.send(composed.data, sender=lane.account.sender.addr, recipients=[out.recipient],
                                    message_id=message_id, meanwhile=meanwhile, claim=claim)
        except CrmError as e:
            if claim.failed:
                raise  # the log could not be written: the pass stops, as when marking came first
            if (stop := self._outcome(s, e, now, res, lane)) is not None:
                lanes.take_out(lane, stop, res)
            return claim.result
        finally:
            if claim.result is None and not claim.failed:
                self._pending_sent = claim.sent  # never asked: the last message's record is still to be written
        if not handed:
            if claim.result is Claim.BLOCKED:  # suppressed since this pass planned (issue #19): recorded skipped
                res.stats["skipped_now"] += 1
            return claim.result
        source = self.ws.cfg.outbound.transport if lane.account.name is None else f"smtp:{lane.account.name}"
        self._pending_sent = Sent(s.id, self.ctx.clock.now(), s.customer_key if out.in_timeline else None,
                                  s.campaign, s.step, message_id, composed.subject, composed.text, source)
        res.stats["sent"] += 1
        lane.streak = 0
        return claim.result

    def _outcome(self, s: SendRow, e: CrmError, now: datetime, res: StageResult, lane: Lane) -> CrmError | None:
        """Map the transport's refusal by what comes next (see ``transports/smtp.py``); the account's error, or None.

        A returned error is about the account, not this message (quota, no
        connection, a 5xx streak about our sender): the account sends no more
        this pass.
        """
        if isinstance(e, UncertainSendError):
            self.store.mark_status(s.id, SendStatus.UNCERTAIN, str(e))
            res.stats["uncertain"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: uncertain: {e}")
        elif isinstance(e, QuotaExceededError):
            # The provider refuses more mail for now; failing the queue would be wrong (issue #5): wait.
            self.store.mark_retry(s.id, str(e), now + QUOTA_WAIT)
            res.stats["retry_later"] += 1
            return e
        elif isinstance(e, TransientSendError):
            self._deferred(s, e, now, res)
        elif isinstance(e, PermanentSendError):
            return self._refused(s, e, now, res, lane)
        elif isinstance(e, ServiceError):
            # Raised only when the message was not handed over (no connection): safe to queue again.
            self.store.mark_retry(s.id, str(e), now)
            return e
        else:
            raise e
        return None

    def _deferred(self, s: SendRow, e: TransientSendError, now: datetime, res: StageResult) -> None:
        """A 4xx answer: this send waits (a growing delay); one recipient's 4xx gives up after a while.

        Why per send (issue #17): a recipient answered ``421``/``450`` at RCPT
        used to be retried first on every pass, with no delay, ahead of
        everyone behind it. Its send now waits alone and the pass goes on; after
        :func:`gives_up` it fails with the server's reason.
        """
        attempts = s.attempts + 1  # mark_sending counted this attempt
        if e.about is not About.SENDER and gives_up(attempts, s.queued_at, now):
            why = f"gave up after {attempts} attempts: {e}"
            self.store.mark_failed(s.id, why, now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {why}")
            return
        self.store.mark_retry(s.id, str(e), retry_at(now, s.attempts))
        res.stats["retry_later"] += 1

    def _refused(self, s: SendRow, e: PermanentSendError, now: datetime, res: StageResult, lane: Lane
                 ) -> ServiceError | None:
        """The send fails; an unknown recipient is a hard bounce, a full mailbox a soft one; a streak stops the pass.

        Only answers about our account, sender or connection (``About.SENDER``)
        count towards the streak: one recipient's 5.1.x / 5.2.x / policy
        refusal says nothing about the next message (issues #11, #17).
        """
        res.stats["failed"] += 1
        res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
        if e.about is About.RECIPIENT_UNKNOWN and e.recipient is not None:
            refused_recipient(self.store, s, e, e.recipient, now)
            res.stats["bounced_at_rcpt"] = res.stats.get("bounced_at_rcpt", 0) + 1
            return None
        if e.about is About.MAILBOX_FULL and e.recipient is not None:
            mailbox_full(self.store, self.ws.cfg.inbound, s, e, e.recipient, now)
            res.stats["mailbox_full"] = res.stats.get("mailbox_full", 0) + 1
            return None
        self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
        if e.about is not About.SENDER:
            return None
        lane.streak += 1
        if lane.streak < MAX_CONSECUTIVE_5XX:
            return None
        if len(self.accounts) == 1:
            return ServiceError(
                f"{lane.streak} messages in a row were refused with a 5xx answer; stopping this pass "
                f"so the rest of the queue is not failed too (last: {e})",
                hint="check [outbound] from and the account; `crm-automation requeue --all-failed` resends")
        return ServiceError(
            f"account {lane.account.label}: {lane.streak} messages in a row were refused with a 5xx answer "
            f"about the sender; this account sends no more in this pass (last: {e})",
            hint="check this account's from and login; `crm-automation requeue --all-failed` resends")
