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

import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from crm_automation.compose import Composed, Composer, InboundNote
from crm_automation.config import parse_window
from crm_automation.edits import Review, review
from crm_automation.effects import bounce_effects
from crm_automation.errors import (
    About,
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
from crm_automation.models import BounceFailure, CustomerView, Kind, Permanence, SendStatus
from crm_automation.planner import (
    QUARANTINED,
    History,
    Plan,
    PlannedSend,
    StepOutlook,
    at_digest,
    blocked_reason,
    outlook,
    plan,
    stop_reason,
)
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
RECIPIENT_4XX_ATTEMPTS = 10
RECIPIENT_4XX_FOR = timedelta(days=3)


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


# ---------------------------------------------------------------- the pass


@dataclass(frozen=True, slots=True)
class CampaignOutlook:
    """One campaign in ``check --plan``: its edits since the last pass, its holds, and each step's outlook."""

    changes: tuple[str, ...]
    held: tuple[str, ...]
    steps: dict[str, StepOutlook]
    skipped_now: int = 0
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"changes": list(self.changes), "held": list(self.held), "notes": list(self.notes),
                "skipped_now": self.skipped_now, "steps": {k: dataclasses.asdict(v) for k, v in self.steps.items()}}


class SendPass:
    """Plans, queues and sends; one per worker (it carries the 5xx streak and the pending ``sent`` record)."""

    def __init__(self, ws: Workspace, ctx: StageContext, composer: Composer,
                 wait: Callable[[float], bool] | None = None, *, accept_new_log: bool = False) -> None:
        self.ws = ws
        self.accept_new_log = accept_new_log  # --accept-new-log: the sheet's evidence of earlier mail holds nothing
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

    def history(self, aliases: tuple[dict[str, str], dict[tuple[str, str], str]] | None = None, *,
                legacy: dict[tuple[str, int], str] | None = None) -> History:
        """What the log says happened, as the planner's plain values.

        ``aliases`` (old campaign -> new, (campaign, old step) -> new step)
        reads the log as if pending renames were applied: a dry run or
        ``check --plan`` shows what the real pass will do after applying them.
        Rows from before schema 4 have no step_id yet: their step is read
        from its place in campaigns.toml (:meth:`legacy_step_keys`; ``legacy``
        when the caller knows it already: ``{}`` once a real pass adopted them).
        """
        camp_alias, step_alias = aliases or ({}, {})
        if legacy is None:
            legacy = self.legacy_step_keys()
        defined = {c.id for c in self.ws.campaigns} | {NOTIFY_CAMPAIGN}
        recorded = self.store.campaign_steps()
        h = History()
        for s in self.store.sends():
            campaign = camp_alias.get(s.campaign, s.campaign)
            key = s.step_id if s.step_id is not None else legacy.get((s.campaign, s.step), f"#{s.step}")
            key = step_alias.get((campaign, key), key)
            sent = s.sent_at if s.status == SendStatus.SENT else None
            h.add_send(campaign, key, s.customer_key, sent)
            if sent is not None and campaign not in defined:
                # a campaign no longer in the file: the templates it sent, for a new campaign that reuses one
                template = recorded.get(campaign, {}).get(key)
                h.elsewhere.setdefault(s.customer_key, {}).setdefault(
                    template.template if template is not None else key, campaign)
        for e in self.store.inbound_history():
            if e.permanence is Permanence.DELAYED:
                continue  # a delay never stops a sequence: the message may still arrive
            if e.permanence is Permanence.SOFT:
                lost_in = camp_alias.get(e.campaign, e.campaign) if e.campaign is not None else None
                h.lost.setdefault(e.customer_key, []).append((lost_in, e.at))  # that message is lost (issue #11)
                continue
            h.inbound.setdefault(e.customer_key, []).append((e.kind.value, e.at))
        fields = {c.field for c in self.ws.campaigns if c.trigger == "change" and c.field}
        fields |= {f for c in self.ws.campaigns if c.trigger == "at" for f in c.where}
        for f in fields:
            if f:
                h.changes[f] = self.store.field_changes(f)
        h.suppressed = frozenset(self.store.suppressions())
        for q in self.store.quarantined_contacts():
            h.inbound.setdefault(q.customer_key, []).append((QUARANTINED, q.received_at))
            h.quarantine_reasons[q.customer_key] = q.error
        return h

    def legacy_step_keys(self) -> dict[tuple[str, int], str]:
        """(campaign, step) -> step key for rows written before schema 4 (issue #17).

        Those rows know only the step's place; campaigns.toml at the first
        pass after the upgrade says which step was there. A place the file no
        longer has becomes ``#N``, a key no step has.
        """
        legacy = self.store.legacy_steps()
        if not legacy:
            return {}
        defined = {c.id: c for c in self.ws.campaigns}
        out = {}
        for campaign, n in legacy:
            c = defined.get(campaign)
            out[(campaign, n)] = c.steps[n].key if c is not None and 0 <= n < len(c.steps) else f"#{n}"
        return out

    def review(self, *, record: bool) -> Review:
        """What campaigns.toml changed since the last pass (:mod:`crm_automation.edits`); recorded when ``record``."""
        if record:
            legacy = self.legacy_step_keys()
            if legacy:
                n = self.store.adopt_step_ids(legacy)
                log.info("gave %d send(s) from before the upgrade their step's identity (from campaigns.toml)", n)
        found = review(self.ws.campaigns, self.store.campaign_steps(), self.store.sent_step_counts())
        if record and (found.states or found.campaign_renames or found.step_renames):
            self.store.record_campaign_edits(found.states, found.campaign_renames, found.step_renames,
                                             self.ctx.clock.now())
            for campaign, lines in found.changes.items():
                for line in lines:
                    log.info("campaign %r: %s", campaign, line)
        return found

    def plan(self, *, record: bool = True) -> Plan:
        """What is due now (pure planning over the log); ``record`` notes campaigns and edits seen first now."""
        return self._plan(record=record)[2]

    def _plan(self, *, record: bool) -> tuple[Review, History, Plan]:
        found = self.review(record=record)
        now = self.ctx.clock.now()
        first_seen = self.store.campaign_first_seen([c.id for c in self.ws.campaigns], now, record=record)
        if not record:  # the renames a real pass would apply first: a renamed campaign keeps its audience
            for old, new in found.campaign_renames:
                earlier = self.store.campaign_first_seen([old], now, record=False)[old]
                first_seen[new] = min(first_seen.get(new, now), earlier)
        h = self.history(found.aliases(), legacy={} if record else None)  # a real pass adopted them in review()
        return found, h, plan(self.ws.campaigns, self.views(), first_seen, h, now,
                              one_per_cycle=self.ws.cfg.outbound.one_per_cycle, unresolved=found.unresolved,
                              expansions=self.expansions(found, record=record))

    def expansions(self, found: Review, *, record: bool) -> dict[str, tuple[datetime, str]]:
        """When each ``at`` campaign went out to its segment (renames applied; old logs adopted when ``record``).

        An ``at`` campaign that went out before schema 4 has sends but no
        record of it: the time its first send was queued stands for it.
        """
        known = self.store.expansions()
        for old, new in found.campaign_renames:
            if old in known:
                known.setdefault(new, known[old])
        if record:
            for c in self.ws.campaigns:
                if c.trigger == "at" and c.id not in known and self.store.has_sends(c.id):
                    self.store.record_expansion(c.id, self.ctx.clock.now(), at_digest(c), since_sends=True)
            known = self.store.expansions()
        return known

    def edit_outlook(self) -> dict[str, CampaignOutlook]:
        """What campaigns.toml, as it is now, means for customers already in a sequence; records nothing.

        ``check --plan`` shows it (issue #17): the changes since the last
        pass, what is held and why, and per step who had it, who gets it now
        or later, and who is past it.
        """
        found, h, result = self._plan(record=False)
        out = {}
        for c in self.ws.campaigns:
            if not c.enabled:
                continue
            steps = outlook(c, h, result.sends, found.unresolved)
            out[c.id] = CampaignOutlook(changes=tuple(found.changes.get(c.id, ())),
                                        held=tuple(result.held.get(c.id, ())),
                                        steps={s.key: steps[s.key] for s in c.steps},
                                        skipped_now=sum(p.campaign == c.id and p.status == SendStatus.SKIPPED
                                                        for p in result.sends),
                                        notes=tuple(result.notes.get(c.id, ())))
        return out

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
            if self.accept_new_log:
                if not dry_run:
                    identity.accept(self.store, self.ctx.clock.now())
            elif (missing := identity.sheet_evidence_hold(self.store, self.ws.cfg)) is not None:
                res.stats = {"sent": 0, "note": "held: the sheet shows mail this log never sent"}
                res.error = missing  # issue #17: a new or lost log must not mail everyone again
                return res
            held = self.template_problems()
            res.problems += [p for problems in held.values() for p in problems]
            result = self.plan(record=not dry_run)
            planned = result.sends
            res.problems += [p for problems in result.held.values() for p in problems]
            res.notes += [n for notes in result.notes.values() for n in notes]
            views = self.views()
            if dry_run:
                self._dry_run(planned, views, res, limit, held)
                _hold(held, result.held, res)
                return res
            now = self.ctx.clock.now()
            rows = [{"campaign": p.campaign, "step": p.step, "step_id": p.step_id, "customer_key": p.customer_key,
                     "status": p.status, "message_id": self.composer.message_id() if p.status == SendStatus.QUEUED
                     else None, "queued_at": iso(now), "error": p.reason, "email": p.email} for p in planned]
            if rows:
                self.store.queue_sends(rows)
            by_id = {c.id: c for c in self.ws.campaigns}
            for cid in result.went_out:  # after its sends are queued: a kill before this expands it again
                self.store.record_expansion(cid, now, at_digest(by_id[cid]))
            res.stats["planned"] = sum(p.status == SendStatus.QUEUED for p in planned)
            res.stats["skipped"] = sum(p.status == SendStatus.SKIPPED for p in planned)
            try:
                self._send_queue(views, res, limit, held)
            finally:
                self._record_sent_count()
            _hold(held, result.held, res)
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
        h = self.history(legacy={})  # this pass's plan adopted every row from before schema 4
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
            t0 = h.entered(s.campaign, s.customer_key)  # a follow-up: the sequence began with an email sent
            if why is None and t0 is not None:
                why = stop_reason(camp, view, t0, h)
        if why is not None or view is None or camp is None:
            self.store.mark_status(s.id, SendStatus.SKIPPED, why)
            res.stats["skipped_now"] += 1
            return
        step = camp.step(s.step_id) if s.step_id is not None else (
            camp.steps[s.step] if s.step < len(camp.steps) else None)
        if step is None:  # removed from campaigns.toml while it waited in the queue (issue #17)
            self.store.mark_status(s.id, SendStatus.SKIPPED, f"step {s.step_id or s.step!r} is no longer in the "
                                   "campaign")
            res.stats["skipped_now"] += 1
            return
        self._deliver(s, transport, res,
                      lambda mid, now: self.composer.campaign_email(step.template, view, s.campaign, step.number,
                                                                    mid, now),
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
            self._deferred(s, e, now, res)
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


def _hold(held: dict[str, list[str]], edits: dict[str, list[str]], res: StageResult) -> None:
    """A held campaign is a configuration error of this pass (exit 2); the rest of the queue went.

    ``held``: template problems (the campaign's sends stay queued);
    ``edits``: campaigns.toml edits whose meaning is unclear (issue #17: the
    sends they affect are not even queued until the admin says what they meant).
    """
    if res.error is not None or not (held or edits):
        return
    parts = []
    if held:
        parts.append(f"template problems hold campaign(s) {', '.join(sorted(held))}; their sends stay queued")
    if edits:
        parts.append(f"unclear edits of campaigns.toml hold sends of campaign(s) {', '.join(sorted(edits))} "
                     "(see above: nothing of them was queued)")
    hints = []
    if held:
        hints.append("fix the templates (`crm-automation check` lists the problems)")
    if edits:
        hints.append("say what the edit meant in campaigns.toml (renamed_from or resend = true, as the message "
                     "says; `crm-automation check --plan` shows the effect)")
    res.error = ConfigError("; ".join(parts) + "; the other campaigns were sent",
                            hint="; ".join(hints) + "; the held sends go out at the next pass")
