"""The send pass: plan what is due, queue it, and hand each message over exactly once (SPEC §10).

The exactly-once sequence for one send is: queued with its Message-ID ->
``sending`` committed -> handed to the transport -> ``sent`` (committed with
the next message's ``sending`` mark, one commit a message). A send found in
``sending`` at the next start is resolved by :meth:`SendPass.recover`: the
transport (or the mailbox's Sent folder) says whether it was handed over,
otherwise it becomes ``uncertain`` — reported, never silently repeated.

Pacing, the send window and the retry delay are pure functions of ``now``
(:func:`in_window`, :func:`pace_wait`, :func:`retry_at`); waiting goes
through one seam, ``wait(seconds) -> stopped``, which is the stop flag's
``wait`` in production and a fake clock in tests.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from crm_automation.compose import Composed, Composer, InboundNote
from crm_automation.config import parse_window
from crm_automation.errors import (
    ConfigError,
    CrmError,
    DataError,
    PermanentSendError,
    QuotaExceededError,
    ServiceError,
    StorageError,
    TransientSendError,
    UncertainSendError,
)
from crm_automation.mapping import Campaign
from crm_automation.models import Kind, Permanence, SendStatus
from crm_automation.planner import QUARANTINED, CustomerView, History, PlannedSend, blocked_reason, plan, stop_reason
from crm_automation.stage import StageContext, StageResult, recorded
from crm_automation.store import identity
from crm_automation.store.connection import iso
from crm_automation.store.sends import NOTIFY_CAMPAIGN, SendRow
from crm_automation.transports.base import Transport
from crm_automation.workspace import Workspace

log = logging.getLogger("crm_automation")
RETRY_BASE = timedelta(minutes=5)
RETRY_MAX = timedelta(hours=6)
QUOTA_WAIT = timedelta(hours=1)
MAX_CONSECUTIVE_5XX = 3


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


# ---------------------------------------------------------------- the pass


class SendPass:
    """Plans, queues and sends; one per worker (it carries the 5xx streak and the pending ``sent`` record)."""

    def __init__(self, ws: Workspace, ctx: StageContext, composer: Composer,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.ws = ws
        self.ctx = ctx
        self.store = ctx.store
        self.composer = composer
        self.wait = wait or ctx.stop.wait  # the clock seam: sleep, or return True when asked to stop
        self._consecutive_5xx = 0
        # The ``sent`` record of the message just handed over rides in the same commit as the next
        # message's ``sending`` mark: one commit a message instead of two, same exactly-once guarantee.
        self._pending_sent: tuple[SendRow, str, datetime, str, str] | None = None

    # ------------------------------------------------------------ views of the log
    def views(self) -> dict[str, CustomerView]:
        """The customers as the planner sees them."""
        ef = self.ws.email_field
        return {k: CustomerView(k, (c.data.get(ef) if ef else None), c.data, c.first_seen, c.email_status)
                for k, c in self.store.customers().items()}

    def history(self) -> History:
        """What the log says happened, as the planner's plain values."""
        h = History()
        for s in self.store.sends():
            h.send_keys.add((s.campaign, s.step, s.customer_key))
            if s.status == SendStatus.SENT and s.sent_at is not None:
                h.sent_at[(s.campaign, s.step, s.customer_key)] = s.sent_at
        for e in self.store.inbound_history():
            if e.permanence is Permanence.DELAYED:
                continue  # a delay never stops a sequence: the message may still arrive
            if e.permanence is Permanence.SOFT:
                h.lost.setdefault(e.customer_key, []).append((e.campaign, e.at))  # that message is lost (issue #11)
                continue
            h.inbound.setdefault(e.customer_key, []).append((e.kind.value, e.at))
        for f in {c.field for c in self.ws.campaigns if c.trigger == "change" and c.field}:
            h.changes[f] = self.store.field_changes(f)
        h.suppressed = frozenset(self.store.suppressions())
        for q in self.store.quarantined_contacts():
            h.inbound.setdefault(q.customer_key, []).append((QUARANTINED, q.received_at))
            h.quarantine_reasons[q.customer_key] = q.error
        return h

    def plan(self, *, record: bool = True) -> list[PlannedSend]:
        """What is due now (pure planning over the log); ``record`` notes campaigns seen for the first time."""
        now = self.ctx.clock.now()
        first_seen = self.store.campaign_first_seen([c.id for c in self.ws.campaigns], now, record=record)
        return plan(self.ws.campaigns, self.views(), first_seen, self.history(), now,
                    one_per_cycle=self.ws.cfg.outbound.one_per_cycle)

    def template_problems(self) -> dict[str, list[str]]:
        """Campaign id -> problems of its templates (syntax, unknown names, missing files); checked every pass.

        Why every pass: a typo met only when a send is due used to fail every
        due send of the campaign, and nothing went after the fix until
        ``requeue --all-failed`` (issue #9). A campaign with a problem is
        held: its sends stay ``queued`` and go out once the template is fixed.
        """
        fields = set(self.ws.mapping.fields)
        checked: dict[str, list[str]] = {}
        out: dict[str, list[str]] = {}
        for c in self.ws.campaigns:
            if not c.enabled:
                continue
            problems = []
            for step in c.steps:
                if step.template not in checked:
                    checked[step.template] = self.ws.templates.check(step.template, fields)
                problems += checked[step.template]
            if problems:
                out[c.id] = [f"campaign {c.id!r} held, its sends stay queued: {p}" for p in dict.fromkeys(problems)]
        return out

    # ------------------------------------------------------------ stages
    def recover(self) -> StageResult:
        """Resolve sends left in ``sending`` by a killed worker: found handed over, or ``uncertain``; never resent.

        The transport says what it can (the outbox sees its files); the
        mailbox's Sent folder answers for SMTP when ``sent_folder`` is set.
        """
        with recorded(self.ctx, "recover") as res:
            stuck = self.store.sends(status=[SendStatus.SENDING])
            if not stuck:
                return res
            ids = [s.message_id for s in stuck if s.message_id]
            transport = self.ws.open_transport()
            known = transport.handed_over(ids)
            found: set[str] = set(known) if known is not None else set()
            sent_folder = self.ws.cfg.outbound.sent_folder
            if known is None and sent_folder:
                source = self.ws.open_mailbox()
                try:
                    found = source.find_message_ids(sent_folder, ids)
                finally:
                    with suppress(CrmError, OSError):
                        source.close()
            now = self.ctx.clock.now()
            n_sent = n_unc = 0
            for s in stuck:
                if s.message_id in found:
                    self.store.mark_sent(s.id, now, customer_key=s.customer_key, campaign=s.campaign, step=s.step,
                                         message_id=s.message_id or "", subject="(recovered after a crash)", body="",
                                         source="found after a crash")
                    n_sent += 1
                elif known is not None:  # the carrier knows it never got it (no .eml was renamed into place)
                    self.store.mark_status(s.id, SendStatus.QUEUED, "requeued after a crash: no .eml was written")
                else:
                    self.store.mark_status(s.id, SendStatus.UNCERTAIN, "the worker stopped while handing this "
                                           "message over; it may or may not have been delivered (see "
                                           "`crm-automation report`)")
                    n_unc += 1
            res.stats = {"stuck": len(stuck), "confirmed_sent": n_sent, "uncertain": n_unc}
            if n_unc:
                res.problems.append(f"{n_unc} send(s) marked uncertain after a crash; `crm-automation report` "
                                    f"lists them and `crm-automation requeue` sends them again on purpose")
        return res

    def run(self, *, dry_run: bool = False, limit: int | None = None) -> StageResult:
        """Queue what is due and send it, exactly once each (``dry_run``: render and report, record nothing)."""
        rec = None if dry_run else self.recover()
        # A dry run records nothing, not even its run: it runs lock-free on a read-only log (issue #17).
        with recorded(self.ctx, "send-dry-run" if dry_run else "send", record=not dry_run) as res:
            if rec is not None:
                res.problems += rec.problems
                identity.guard(self.store, self.ws.cfg)  # emptied under a running worker: stop before mailing
            held = self.template_problems()
            res.problems += [p for problems in held.values() for p in problems]
            planned = self.plan(record=not dry_run)
            views = self.views()
            if dry_run:
                self._dry_run(planned, views, res, limit, held)
                _hold(held, res)
                return res
            now = self.ctx.clock.now()
            rows = [{"campaign": p.campaign, "step": p.step, "customer_key": p.customer_key, "status": p.status,
                     "message_id": self.composer.message_id() if p.status == SendStatus.QUEUED else None,
                     "queued_at": iso(now), "error": p.reason, "email": p.email} for p in planned]
            if rows:
                self.store.queue_sends(rows)
            res.stats["planned"] = sum(p.status == SendStatus.QUEUED for p in planned)
            res.stats["skipped"] = sum(p.status == SendStatus.SKIPPED for p in planned)
            try:
                self._send_queue(views, res, limit, held)
            finally:
                self._record_sent_count()
            _hold(held, res)
        return res

    def held_for_failed_fetch(self, fetch_error: CrmError) -> StageResult:
        """The send stage of a cycle whose fetch failed: nothing sent, and why (issue #9, exit 3)."""
        with recorded(self.ctx, "send") as res:
            res.stats = {"sent": 0, "note": "held: the fetch stage failed"}
            res.error = ServiceError(
                f"nothing was sent: the mailbox could not be read ({fetch_error}), so a reply, bounce or "
                "unsubscribe waiting there would be missed", hint=fetch_error.hint or "the next pass tries again")
        return res

    # ------------------------------------------------------------ internals
    def _record_sent_count(self) -> None:
        """Let the workspace's log marker know how many messages this log has sent (issue #9)."""
        try:
            identity.record(self.store, self.ws.cfg)
        except StorageError as e:  # not dangerous: the marker only guards against a log with *fewer* sends
            log.warning("%s", e)

    def _dry_run(self, planned: list[PlannedSend], views: dict[str, CustomerView], res: StageResult,
                 limit: int | None, held: dict[str, list[str]]) -> None:
        shown = 0
        now = self.ctx.clock.now()
        for p in planned:
            item: dict[str, Any] = {"campaign": p.campaign, "step": p.step, "customer": p.customer_key,
                                    "email": p.email, "status": p.status}
            if p.status == SendStatus.SKIPPED:
                item["reason"] = p.reason
            elif p.campaign in held:
                item["status"] = "held"
                item["reason"] = "template problems (see above)"
            elif limit is None or shown < limit:
                try:
                    composed = self.composer.campaign_email(p.template, views[p.customer_key], p.campaign, p.step,
                                                            "<dry-run@localhost>", now)
                    item["subject"] = composed.subject
                    shown += 1
                except DataError as e:
                    item["status"] = "would fail"
                    item["reason"] = str(e)
                    res.problems.append(str(e))
            res.details.append(item)
        res.stats = {"would_send": sum(d["status"] == SendStatus.QUEUED for d in res.details),
                     "held": sum(d["status"] == "held" for d in res.details),
                     "would_skip": sum(d["status"] == SendStatus.SKIPPED for d in res.details),
                     "would_fail": sum(d["status"] == "would fail" for d in res.details)}

    def _send_queue(self, views: dict[str, CustomerView], res: StageResult, limit: int | None,
                    held: dict[str, list[str]]) -> None:
        ob = self.ws.cfg.outbound
        tz = self.ws.cfg.timezone
        now = self.ctx.clock.now()
        queued = self.store.sends(status=[SendStatus.QUEUED])
        due = [s for s in queued
               if (s.next_attempt_at is None or s.next_attempt_at <= now or s.attempts == 0)
               and s.campaign not in held]
        res.stats.update({"sent": 0, "failed": 0, "retry_later": 0, "uncertain": 0, "skipped_now": 0, "waiting": 0})
        if held:
            res.stats["held"] = sum(s.campaign in held for s in queued)
        if not due:
            return
        if not in_window(now, ob.send_window, tz):
            res.stats["waiting"] = len(due)
            res.stats["note"] = f"outside send_window {ob.send_window} ({tz.key})"
            return
        h = self.history()
        campaigns = {c.id: c for c in self.ws.campaigns}
        recent = deque(self.store.sent_times_since(now - timedelta(minutes=1)))
        day_count = self.store.sent_count_since(now - timedelta(days=1))
        res.stats["waiting"] = len(due)
        transport = self.ws.open_transport()
        transport.open()
        bar = self.ctx.progress("send", len(due))
        try:
            for s in due:
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
                bar.advance()
                self._send_one(s, views, campaigns, h, transport, res)
                if res.error is not None:
                    break
                day_count += 1
                recent.append(self.ctx.clock.now())
        finally:
            self._flush_sent()
            bar.close()
            with suppress(CrmError, OSError):
                transport.close()
        res.stats["waiting"] = len(self.store.sends(status=[SendStatus.QUEUED]))

    def _record_sent(self, s: SendRow, message_id: str, now: datetime, subject: str, body: str) -> None:
        self.store.mark_sent(s.id, now, customer_key=s.customer_key, campaign=s.campaign, step=s.step,
                             message_id=message_id, subject=subject, body=body, source=self.ws.cfg.outbound.transport)

    def _flush_sent(self) -> None:
        """Commit the ``sent`` record still held for the last message handed over."""
        if self._pending_sent is not None:
            args, self._pending_sent = self._pending_sent, None
            self._record_sent(*args)

    def _pace(self, recent: deque[datetime], per_minute: int) -> bool:
        """Wait until one more message fits in the last 60 s; False if asked to stop meanwhile."""
        while True:
            wait = pace_wait(recent, per_minute, self.ctx.clock.now())
            if wait <= 0:
                return True
            self._flush_sent()  # never hold a delivered message's record across a wait
            if self.wait(min(max(wait, 0.05), 5.0)):
                return False

    def _send_one(self, s: SendRow, views: dict[str, CustomerView], campaigns: dict[str, Campaign], h: History,
                  transport: Transport, res: StageResult) -> None:
        view = views.get(s.customer_key)
        camp = campaigns.get(s.campaign)
        if s.campaign == NOTIFY_CAMPAIGN and view is not None:  # an owner notification
            self._deliver(s, transport, res, lambda mid, now: self._notification(s, view, mid, now), s.email or "")
            return
        why = None
        if view is None:
            why = "customer no longer in the sheet"
        elif camp is None or not camp.enabled:
            why = "campaign removed or disabled"
        else:
            why = blocked_reason(view, h)
            if why is None and s.step > 0:
                t0 = h.sent_at.get((s.campaign, 0, s.customer_key))
                if t0 is not None:
                    why = stop_reason(camp, view, t0, h)
        if why is not None or view is None or camp is None:
            self.store.mark_status(s.id, SendStatus.SKIPPED, why)
            res.stats["skipped_now"] += 1
            return
        if s.step >= len(camp.steps):
            self.store.mark_status(s.id, SendStatus.SKIPPED, f"step {s.step} no longer in the campaign")
            return
        template = camp.steps[s.step].template
        self._deliver(s, transport, res,
                      lambda mid, now: self.composer.campaign_email(template, view, s.campaign, s.step, mid, now),
                      view.email or "")

    def _notification(self, s: SendRow, view: CustomerView, message_id: str, now: datetime) -> Composed:
        a = self.store.activity(s.step)
        note = (InboundNote(subject=a.subject or "", body=a.body or "", message_id=a.message_id) if a is not None
                else InboundNote(subject="", body="", message_id=None))
        return self.composer.owner_notification(view, note, s.email or "", message_id, now)

    def _deliver(self, s: SendRow, transport: Transport, res: StageResult,
                 build: Callable[[str, datetime], Composed], recipient: str) -> None:
        """Build, mark ``sending`` (committed), hand over, record: the exactly-once sequence for one send."""
        now = self.ctx.clock.now()
        message_id = s.message_id or self.composer.message_id()
        try:
            composed = build(message_id, now)
        except (DataError, ConfigError) as e:
            self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
            res.stats["failed"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
            return
        with self.store.transaction():
            if self._pending_sent is not None:
                args, self._pending_sent = self._pending_sent, None
                self._record_sent(*args)
            marked = self.store.mark_sending(s.id, message_id, now)
        if not marked:
            return
        try:
            transport.send(composed.data, sender=self.composer.from_addr, recipients=[recipient],
                           message_id=message_id)
        except UncertainSendError as e:
            self.store.mark_status(s.id, SendStatus.UNCERTAIN, str(e))
            res.stats["uncertain"] += 1
            res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: uncertain: {e}")
            return
        except QuotaExceededError as e:
            # The provider refuses more mail for now; failing the queue would be wrong (issue #5): wait.
            self.store.mark_retry(s.id, str(e), now + QUOTA_WAIT)
            res.stats["retry_later"] += 1
            res.error = e
            return
        except TransientSendError as e:
            self.store.mark_retry(s.id, str(e), retry_at(now, s.attempts))
            res.stats["retry_later"] += 1
            return
        except PermanentSendError as e:
            self._refused(s, e, now, res)
            return
        except ServiceError as e:
            # Raised only when the message was not handed over (no connection): safe to queue again.
            self.store.mark_retry(s.id, str(e), now)
            res.error = e
            return
        self._pending_sent = (s, message_id, self.ctx.clock.now(), composed.subject, composed.text)
        res.stats["sent"] += 1
        self._consecutive_5xx = 0

    def _refused(self, s: SendRow, e: PermanentSendError, now: datetime, res: StageResult) -> None:
        """A 5xx answer: the send fails; an unknown recipient is a hard bounce; a streak stops the pass."""
        res.stats["failed"] += 1
        res.problems.append(f"send {s.campaign}/{s.step} to {s.customer_key}: {e}")
        if e.unknown_recipient is not None:
            # Refused at RCPT as non-existent: a hard bounce for that address, not a server problem, so it
            # does not count towards the 5xx streak (issue #11).
            self._refused_recipient(s, e, e.unknown_recipient, now)
            res.stats["bounced_at_rcpt"] = res.stats.get("bounced_at_rcpt", 0) + 1
            return
        self.store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
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
            self.store.suppress(address, "bounced", f"refused at RCPT for {s.message_id}", now)
            self.store.set_email_status(s.customer_key, "bounced")


def _hold(held: dict[str, list[str]], res: StageResult) -> None:
    """A held campaign is a configuration error of this pass (exit 2); the rest of the queue went."""
    if held and res.error is None:
        res.error = ConfigError(f"template problems hold campaign(s) {', '.join(sorted(held))}; their sends "
                                "stay queued and the other campaigns were sent",
                                hint="fix the templates (`crm-automation check` lists the problems); the held "
                                     "sends go out at the next pass")
