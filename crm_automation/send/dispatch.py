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

from crm_automation.compose import Composed, Composer
from crm_automation.config import parse_window
from crm_automation.effects import bounce_effects
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
from crm_automation.models import BounceFailure, Kind, Permanence, SendStatus
from crm_automation.planner import address_block
from crm_automation.send.kinds import Outgoing, kind_of
from crm_automation.send.plan import Ready
from crm_automation.stage import StageContext, StageResult
from crm_automation.store.claims import Rate
from crm_automation.store.repo import Store
from crm_automation.store.sends import Claim, Gate, SendRow, Sent
from crm_automation.transports.base import Transport
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
        self._consecutive_5xx = 0
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
        transport = self.ws.open_transport()
        transport.open()
        bar = self.ctx.progress("send", due)
        try:
            self._hand_over(_Queue(self.store, me, sorted(ready.held)), ready, transport, res, limit, bar.advance)
        finally:
            self._ahead = None  # prepared for this pass's reading of the log: never carried into the next
            try:
                self._flush_sent()
            finally:
                with suppress(CrmError):  # not released: they wait until this worker is found stopped
                    self.store.release_claims(me)
                bar.close()
                with suppress(CrmError, OSError):
                    transport.close()
        res.stats["waiting"] = self.store.count_sends(SendStatus.QUEUED)

    def _hand_over(self, queue: _Queue, ready: Ready, transport: Transport, res: StageResult,
                   limit: int | None, advance: Callable[[], None]) -> None:
        """One send after another until the queue, the window, a limit or the stop flag ends the pass."""
        ob = self.ws.cfg.outbound
        tz = self.ws.cfg.timezone
        rate = Rate(None, ob.max_per_minute, ob.max_per_day, partial(rate_block, ob.max_per_minute, ob.max_per_day))
        seen = self.store.recent_hand_overs(rate.account, self.ctx.clock.now())
        recent, day_count = deque(seen.minute), seen.day
        again: SendRow | None = None  # a send the log found over a limit: tried again first
        while (s := again or queue.next(self.ctx.clock.now())) is not None:
            if self.ctx.stop.is_set() or (limit is not None and res.stats["sent"] >= limit):
                break
            now = self.ctx.clock.now()
            if not in_window(now, ob.send_window, tz):
                res.stats["note"] = f"send_window {ob.send_window} closed during the pass"
                break
            if ob.max_per_day and day_count >= ob.max_per_day:
                res.stats["note"] = f"max_per_day {ob.max_per_day} reached (rolling 24 hours)"
                break
            if ob.max_per_minute and not self._pace(recent, ob.max_per_minute):
                break
            if again is None:
                advance()
            again = None
            ahead, self._ahead = self._ahead, None
            p = ahead if ahead is not None and ahead.send_id == s.id else self._prepare(s, ready)
            if isinstance(p.out, str):
                self.store.mark_status(s.id, SendStatus.SKIPPED, p.out)
                res.stats["skipped_now"] += 1
                continue
            nxt = queue.peek()
            got = self._deliver(s, transport, res, p, p.out, rate,
                                None if nxt is None else partial(self._look_ahead, nxt, ready))
            if res.error is not None:
                break
            if got is Claim.LIMITED:  # another worker took the last slot: count again from the log, then wait
                again, self._ahead = s, p
                seen = self.store.recent_hand_overs(rate.account, self.ctx.clock.now())
                recent, day_count = deque(seen.minute), seen.day
                if rate_block(ob.max_per_minute, ob.max_per_day, len(recent), day_count) is None and \
                        self.wait(LIMIT_RECHECK):
                    break
                continue
            day_count += 1
            recent.append(self.ctx.clock.now())

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

    def _prepare(self, s: SendRow, ready: Ready) -> _Prepared:
        """The send's message, built (or the error building it), or why it is skipped; writes nothing."""
        out = kind_of(s).prepare(s, ready, self.composer, self.store)
        if isinstance(out, str):
            return _Prepared(s.id, out, "", None)
        message_id = s.message_id or self.composer.message_id()
        try:
            return _Prepared(s.id, out, message_id, out.build(message_id, self.ctx.clock.now()))
        except (DataError, ConfigError) as e:
            return _Prepared(s.id, out, message_id, e)

    def _look_ahead(self, s: SendRow, ready: Ready) -> None:
        """Prepare the next send while the server decides about this one (the transport's ``meanwhile``).

        Pure work (rendering, building the bytes): nothing is written, so a
        pass that stops before that send's turn only wasted it. It must not
        raise in the middle of another message's SMTP transaction: an
        unexpected error drops the work, and the send is prepared again at its
        turn, where the error is raised as it always was.
        """
        try:
            self._ahead = self._prepare(s, ready)
        except Exception:  # noqa: BLE001 - see the docstring: raised again at that send's own turn
            self._ahead = None

    def _deliver(self, s: SendRow, transport: Transport, res: StageResult, p: _Prepared, out: Outgoing, rate: Rate,
                 meanwhile: Callable[[], None] | None) -> Claim | None:
        """Mark ``sending`` (committed, as the transport's claim), hand over, record: one send, exactly once.

        Returns what the claim's commit did (None: the transport never asked).
        """
        now = self.ctx.clock.now()
        message_id, composed = p.message_id, p.composed
        if not isinstance(composed, Composed):
            self.store.mark_failed(s.id, str(composed), now, customer_key=s.customer_key, campaign=s.campaign,
                                   step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {composed}")
            return None
        gate = Gate(out.recipient, out.customer, address_block) if out.customer is not None else None
        claim = _Claim(self.store, self._pending_sent, s.id, message_id, now, self.ctx.fleet.worker_id, gate,
                       composed.links, rate)
        self._pending_sent = None
        try:
            handed = transport.send(composed.data, sender=self.composer.from_addr, recipients=[out.recipient],
                                    message_id=message_id, meanwhile=meanwhile, claim=claim)
        except CrmError as e:
            if claim.failed:
                raise  # the log could not be written: the pass stops, as when marking came first
            self._outcome(s, e, now, res)
            return claim.result
        finally:
            if claim.result is None and not claim.failed:
                self._pending_sent = claim.sent  # never asked: the last message's record is still to be written
        if not handed:
            if claim.result is Claim.BLOCKED:  # suppressed since this pass planned (issue #19): recorded skipped
                res.stats["skipped_now"] += 1
            return claim.result
        self._pending_sent = Sent(s.id, self.ctx.clock.now(), s.customer_key if out.in_timeline else None,
                                  s.campaign, s.step, message_id,
                                  composed.subject, composed.text, self.ws.cfg.outbound.transport)
        res.stats["sent"] += 1
        self._consecutive_5xx = 0
        return claim.result

    def _outcome(self, s: SendRow, e: CrmError, now: datetime, res: StageResult) -> None:
        """Map the transport's refusal by what comes next (see ``transports/smtp.py``)."""
        if isinstance(e, UncertainSendError):
            self.store.mark_status(s.id, SendStatus.UNCERTAIN, str(e))
            res.stats["uncertain"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: uncertain: {e}")
        elif isinstance(e, QuotaExceededError):
            # The provider refuses more mail for now; failing the queue would be wrong (issue #5): wait.
            self.store.mark_retry(s.id, str(e), now + QUOTA_WAIT)
            res.stats["retry_later"] += 1
            res.error = e
        elif isinstance(e, TransientSendError):
            self._deferred(s, e, now, res)
        elif isinstance(e, PermanentSendError):
            self._refused(s, e, now, res)
        elif isinstance(e, ServiceError):
            # Raised only when the message was not handed over (no connection): safe to queue again.
            self.store.mark_retry(s.id, str(e), now)
            res.error = e
        else:
            raise e

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

    def _refused(self, s: SendRow, e: PermanentSendError, now: datetime, res: StageResult) -> None:
        """The send fails; an unknown recipient is a hard bounce, a full mailbox a soft one; a streak stops the pass.

        Only answers about our account, sender or connection (``About.SENDER``)
        count towards the streak: one recipient's 5.1.x / 5.2.x / policy
        refusal says nothing about the next message (issues #11, #17).
        """
        res.stats["failed"] += 1
        res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
        if e.about is About.RECIPIENT_UNKNOWN and e.recipient is not None:
            self._refused_recipient(s, e, e.recipient, now)
            res.stats["bounced_at_rcpt"] = res.stats.get("bounced_at_rcpt", 0) + 1
            return
        if e.about is About.MAILBOX_FULL and e.recipient is not None:
            self._mailbox_full(s, e, e.recipient, now)
            res.stats["mailbox_full"] = res.stats.get("mailbox_full", 0) + 1
            return
        self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
        if e.about is not About.SENDER:
            return
        self._consecutive_5xx += 1
        if self._consecutive_5xx >= MAX_CONSECUTIVE_5XX:
            res.error = ServiceError(
                f"{self._consecutive_5xx} messages in a row were refused with a 5xx answer; stopping this pass "
                f"so the rest of the queue is not failed too (last: {e})",
                hint="check [outbound] from and the account; `crm-automation requeue --all-failed` resends")

    def _refused_recipient(self, s: SendRow, e: PermanentSendError, address: str, now: datetime) -> None:
        """The send failed, and the address is a hard bounce: activity, suppression, email_status, one commit."""
        with self.store.transaction():
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            self.store.add_activity(
                kind=Kind.BOUNCE.value, occurred_at=now, now=now, customer_key=s.customer_key,
                subject=f"refused at RCPT: {e.code} {e.enhanced or ''}".strip(), campaign=s.campaign, step=s.step,
                message_id=s.message_id, source="smtp",
                details={"recipient": address.lower(), "permanence": Permanence.HARD.value, "permanent": True,
                         "status": e.enhanced or str(e.code or ""), "evidence": f"refused at RCPT: {e}",
                         "recipients": [address.lower()], "original_message_id": s.message_id})
            for eff in bounce_effects(BounceFailure(address, Permanence.HARD), soft_count=0, soft_limit=0):
                self.store.suppress(eff.email, eff.reason, f"refused at RCPT for {s.message_id}", now)
                if eff.status:
                    self.store.set_email_status(s.customer_key, eff.status)

    def _mailbox_full(self, s: SendRow, e: PermanentSendError, address: str, now: datetime) -> None:
        """The send failed, and that mailbox is full: a soft bounce, scored as a fetched one is, in one commit.

        Issue #17: ``552 5.2.2`` for one recipient is that mailbox, not our
        sending quota. Logged like an inbound soft bounce (``permanence``
        soft, ``original_message_id`` this send's), so it stops the campaign's
        sequence (planner ``History.lost``) and counts in ``[inbound]
        soft_bounce_limit`` / ``soft_bounce_days`` (:func:`effects.bounce_effects`).
        """
        addr = address.lower()
        policy = self.ws.cfg.inbound
        status = e.enhanced or str(e.code or "")
        with self.store.transaction():
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            self.store.add_activity(
                kind=Kind.BOUNCE.value, occurred_at=now, now=now, customer_key=s.customer_key,
                subject=f"mailbox full at send: {e.code} {e.enhanced or ''}".strip(), campaign=s.campaign,
                step=s.step, message_id=s.message_id, source="smtp",
                details={"recipient": addr, "permanence": Permanence.SOFT.value, "permanent": False,
                         "status": status, "evidence": f"mailbox full: {e}", "recipients": [addr],
                         "original_message_id": s.message_id})
            if not policy.soft_bounce_limit:
                return
            n = self.store.soft_bounce_count(addr, s.customer_key, now - timedelta(days=policy.soft_bounce_days))
            for eff in bounce_effects(BounceFailure(addr, Permanence.SOFT, status), soft_count=n,
                                      soft_limit=policy.soft_bounce_limit):
                self.store.suppress(eff.email, eff.reason,
                                    f"{n} soft bounces within {policy.soft_bounce_days} days (last {s.message_id})",
                                    now)
                if eff.status:
                    self.store.set_email_status(s.customer_key, eff.status)
