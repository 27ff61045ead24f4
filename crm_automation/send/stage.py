"""The send stage: the order of one pass - recovery, the log's guards, plan and queue, dispatch - nothing else.

Each part is its own module (:mod:`crm_automation.send`); this one only
says in which order they run and what holds a pass (SPEC §10, issues #9, #17).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from contextlib import ExitStack

from crm_automation.compose import Composer
from crm_automation.errors import ConfigError, CrmError, DataError, ServiceError, StorageError
from crm_automation.planner import Plan
from crm_automation.send.digests import DigestSource, queue_digests
from crm_automation.send.dispatch import Dispatcher
from crm_automation.send.plan import CampaignOutlook, Planning, Ready, dry_run_report
from crm_automation.send.recovery import recover
from crm_automation.stage import StageContext, StageResult, recorded, skipped
from crm_automation.store import identity
from crm_automation.store.sends import DIGEST_LABEL
from crm_automation.workspace import Workspace

log = logging.getLogger("crm_automation")


class SendPass:
    """One worker's send stage: plans and queues (:class:`Planning`), then sends (:class:`Dispatcher`)."""

    def __init__(self, ws: Workspace, ctx: StageContext, composer: Composer,
                 wait: Callable[[float], bool] | None = None, *, accept_new_log: bool = False,
                 digests: DigestSource | None = None) -> None:
        self.ws = ws
        self.digests = digests  # the owner digests' contents (issue #21), from the layer above; None: no digests
        self.ctx = ctx
        self.store = ctx.store
        self.composer = composer
        self.accept_new_log = accept_new_log  # --accept-new-log: the sheet's evidence of earlier mail holds nothing
        self.planning = Planning(ws, ctx.store, ctx.clock)
        self.dispatcher = Dispatcher(ws, ctx, composer, wait or ctx.stop.wait)

    def plan(self, *, record: bool = True) -> Plan:
        """What is due now (pure planning over the log); ``record`` notes campaigns and edits seen first now."""
        return self.planning.plan(record=record).plan

    def edit_outlook(self) -> dict[str, CampaignOutlook]:
        """What campaigns.toml, as it is now, means for customers already in a sequence (``check --plan``)."""
        return self.planning.edit_outlook()

    def recover(self) -> StageResult:
        """Resolve sends left in ``sending`` by a killed worker: found handed over, or ``uncertain``; never resent."""
        return recover(self.ws, self.ctx)

    def run(self, *, dry_run: bool = False, limit: int | None = None) -> StageResult:
        """Queue what is due and send it, exactly once each (``dry_run``: render and report, record nothing).

        Recovery, the log's guards, planning and queueing run under the
        ``send-plan`` stage lock (issue #20, rule 2): one worker of the
        fleet at a time, so a dead worker's row is resolved once and no
        customer is planned twice. Dispatch runs after it is let go: sends
        are claimed in small batches, never handed to two workers. A worker
        whose ``send-plan`` another holds only dispatches (:meth:`_dispatch_only`).
        """
        if dry_run:  # records nothing, not even its run: it runs lock-free on a read-only log (issue #17)
            with recorded(self.ctx, "send-dry-run", record=False) as res:
                self._planned(res, dry_run=True, limit=limit)
            return res
        with ExitStack() as planning:
            holder = planning.enter_context(self.ctx.fleet.exclusive("send-plan"))
            if holder is not None:
                planning.close()
                return self._dispatch_only(holder, limit)
            rec = self.recover()
            with recorded(self.ctx, "send") as res:
                res.problems += rec.problems
                identity.guard(self.store, self.ws.cfg)  # emptied under a running worker: stop before mailing
                queued = self._planned(res, dry_run=False, limit=limit)
                planning.close()  # send-plan is let go: dispatch claims, it takes no stage lock
                if queued is not None:
                    ready, held, plan_held = queued
                    try:
                        self.dispatcher.send_queue(ready, res, limit)
                    finally:
                        self._record_sent_count()
                    _hold(held, plan_held, res)
        return res

    def _dispatch_only(self, holder: str, limit: int | None) -> StageResult:
        """Hand over what is queued while another worker plans (issue #20): no recovery, nothing planned or queued.

        The log is read as a pass's planning reads it (``record=False``:
        nothing written), for the hand-over's own checks of each send (its
        customer, the campaign's rules, a reply or suppression meanwhile).
        The guards hold here too. Owner digests wait for the worker that
        planned them: their contents are read by that pass only.
        """
        with recorded(self.ctx, "send") as res:
            res.stats["sent"] = 0
            skipped(res, "send-plan", holder)
            identity.guard(self.store, self.ws.cfg)
            if self._held_by_evidence(res, dry_run=False):
                return res
            held = self.planning.template_problems()
            res.problems += [p for problems in held.values() for p in problems]
            planned = self.planning.plan(record=False)
            waiting = ["owner digests are handed over by the worker that plans them"]
            ready = Ready(planned.views, {c.id: c for c in self.ws.campaigns}, planned.history, frozenset(),
                          {**held, DIGEST_LABEL: waiting})
            try:
                self.dispatcher.send_queue(ready, res, limit)
            finally:
                self._record_sent_count()
            _hold(held, {}, res)
        return res

    def _planned(self, res: StageResult, *, dry_run: bool, limit: int | None
                 ) -> tuple[Ready, dict[str, list[str]], dict[str, list[str]]] | None:
        """The guards, the plan, and (not ``dry_run``) the queue: what dispatch needs, or None (held or dry)."""
        if self._held_by_evidence(res, dry_run=dry_run):
            return None
        held = self.planning.template_problems()
        res.problems += [p for problems in held.values() for p in problems]
        planned = self.planning.plan(record=not dry_run)
        result = planned.plan
        res.problems += [p for problems in result.held.values() for p in problems]
        res.notes += [n for notes in result.notes.values() for n in notes]
        if dry_run:
            now = self.ctx.clock.now()
            dry_run_report(result.sends, planned.views, res, limit, held,
                           lambda p, view: self.composer.campaign_email(
                               p.template, view, p.campaign, p.step, "<dry-run@localhost>", now).subject)
            _hold(held, result.held, res)
            return None
        ready = self.planning.queue(planned, self.composer.message_id, held)
        if self.digests is not None:
            ready = self._queue_digests(ready, res, self.digests)
        res.stats["planned"] = sum(p.status == "queued" for p in result.sends)
        res.stats["skipped"] = sum(p.status == "skipped" for p in result.sends)
        return ready, held, result.held

    def _queue_digests(self, ready: Ready, res: StageResult, source: DigestSource) -> Ready:
        """Plan the day's owner digests when due, after the campaigns (issue #21); their contents for dispatch.

        A digest template with problems holds the digests (none planned,
        queued ones stay queued, as a campaign's with a broken template) and
        never the campaigns; nor does a digest whose contents cannot be read:
        the problem is reported and the next pass tries again.
        """
        if self.ws.cfg.digest is None or self.ws.mapping.roles.owner is None:
            return ready  # no digests: not even their template is read
        problems = self.composer.digest_problems()
        if problems:
            lines = [f"owner digests held, nothing planned or sent until the template is fixed: {p}" for p in problems]
            res.problems += lines
            return dataclasses.replace(ready, held={**ready.held, DIGEST_LABEL: lines})
        try:
            contents = queue_digests(self.ws, self.store, self.ctx.clock.now(), source,
                                     self.composer.message_id, res)
        except (DataError, ConfigError) as e:
            res.problems.append(f"owner digests: {e}")
            return ready
        return dataclasses.replace(ready, digests=contents) if contents else ready

    def held_for_failed_fetch(self, fetch_error: CrmError) -> StageResult:
        """The send stage of a cycle whose fetch failed: nothing sent, and why (issue #9, exit 3)."""
        with recorded(self.ctx, "send") as res:
            res.stats = {"sent": 0, "note": "held: the fetch stage failed"}
            res.error = ServiceError(
                f"nothing was sent: the mailbox could not be read ({fetch_error}), so a reply, bounce or "
                "unsubscribe waiting there would be missed", hint=fetch_error.hint or "the next pass tries again")
        return res

    def _held_by_evidence(self, res: StageResult, *, dry_run: bool) -> bool:
        """Whether the sheet shows mail this log never sent (issue #17: a new or lost log must not mail everyone)."""
        if self.accept_new_log:
            if not dry_run:
                identity.accept(self.store, self.ctx.clock.now())
            return False
        missing = identity.sheet_evidence_hold(self.store, self.ws.cfg)
        if missing is None:
            return False
        res.stats = {"sent": 0, "note": "held: the sheet shows mail this log never sent"}
        res.error = missing
        return True

    def _record_sent_count(self) -> None:
        """Let the workspace's log marker know how many messages this log has sent (issue #9)."""
        try:
            identity.record(self.store, self.ws.cfg)
        except StorageError as e:  # not dangerous: the marker only guards against a log with *fewer* sends
            log.warning("%s", e)


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
