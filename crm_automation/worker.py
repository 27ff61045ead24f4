"""The worker: the order of the stages, their run records, the schedule and the stop flag — nothing else.

One cycle is sync, fetch, send, write-back (SPEC §7): sync first so inbound
mail can match new rows, fetch before send so a fresh reply or bounce stops
a send, and send only when that fetch succeeded (issue #9). Each stage lives
in its own module and can be used without the worker (issue #10):

    sheetsync.py       SheetSession   sync, write-back, new rows from unknown senders
    inbound.py         InboundPass    source -> parse -> classify -> match -> decision -> store
    send/              SendPass       plan -> queue -> compose -> hand over -> record; crash recovery
    compose.py         Composer       Message-IDs, template context, unsubscribe links, rendering

A stage that cannot reach its service is recorded as stopped and retried at
the next pass; a per-item failure is a problem and the stage carries on.

A running worker uses what is on disk at each pass (issue #17): the
mappings are reloaded when they changed (:meth:`Workspace.refresh`), the
templates are checked and compiled again by each send pass. What a stage
needs and cannot have holds that stage alone, recorded with why: a broken
``customers.toml`` holds sync, send and write-back; a broken
``campaigns.toml`` holds send; a failed sync (a renamed column, a mapping
key the log was not built on) holds send and write-back until a sync
succeeds. Fetch always runs, so replies, bounces and unsubscribes are logged.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from crm_automation.compose import Composed, Composer
from crm_automation.config import parse_duration
from crm_automation.effects import status_for
from crm_automation.errors import ConfigError, CrmError, ServiceError
from crm_automation.fleet import Fleet, Solo
from crm_automation.models import CustomerView
from crm_automation.sheetsync import Rekeyed, SheetSession
from crm_automation.stage import (
    Progress,
    StageContext,
    StageResult,
    address_index,
    held,
    no_progress,
    recorded,
    skipped,
)
from crm_automation.store import identity
from crm_automation.store.dialect import SQLITE
from crm_automation.workspace import Clock, Workspace

log = logging.getLogger("crm_automation")

if TYPE_CHECKING:
    from crm_automation.inbound import InboundPass
    from crm_automation.planner import Plan
    from crm_automation.send.stage import SendPass
    from crm_automation.store.repo import Store


class Worker:
    """Runs the stages against one workspace. Library entry point; the CLI is a thin layer over it."""

    def __init__(self, ws: Workspace, *, clock: Clock | None = None, progress: Progress = no_progress,
                 stop: threading.Event | None = None, wait: Callable[[float], bool] | None = None,
                 store: Store | None = None, accept_new_log: bool = False, read_only: bool = False,
                 fleet: Fleet | None = None) -> None:
        self.ws = ws
        if store is None:
            # read_only: dry runs, which take no lock and so must write nothing, not even the marker (issue #17)
            store = ws.open_store(read_only=read_only)
            try:
                identity.guard(store, ws.cfg, accept_new=accept_new_log, write=not read_only)
            except CrmError:
                store.close()
                raise
        self.store = store
        # fleet: this worker among those sharing the log (issue #20); a library caller's worker is Solo, alone
        # on a SQLite log as before (recovery takes every `sending` row), one among others on PostgreSQL
        self.ctx = StageContext(store, clock or Clock(), progress, stop or threading.Event(),
                                fleet or Solo(alone=store.dialect is SQLITE))
        self.stop = self.ctx.stop
        self.composer = Composer(ws.cfg, ws.templates, name_field=lambda: ws.mapping.roles.name)
        self.session = SheetSession(ws, self.ctx)
        self._send_options = (wait, accept_new_log)

    @functools.cached_property
    def inbound(self) -> InboundPass:
        """The fetch stage, made on first use: a send or its dry run never loads the classifier (issue #23)."""
        from crm_automation.inbound import InboundPass

        return InboundPass(self.ws, self.ctx, self.composer.message_id)

    @functools.cached_property
    def outbound(self) -> SendPass:
        """The send pass, made on first use: a ``fetch`` never loads the planner (a poll starts faster)."""
        from crm_automation.app.digest import digest_source
        from crm_automation.send.stage import SendPass

        wait, accept_new_log = self._send_options
        return SendPass(self.ws, self.ctx, self.composer, wait=wait, accept_new_log=accept_new_log,
                        digests=digest_source(self.ws))

    def close(self) -> None:
        """Close the log."""
        self.store.close()

    # ------------------------------------------------------------------ what is on disk
    def refresh(self) -> None:
        """At each pass: reload the mappings that changed on disk (issue #17); see :meth:`Workspace.refresh`."""
        if self.ws.refresh() and "inbound" in self.__dict__:  # a fetch stage not made yet reads the new mapping
            from crm_automation.inbound import InboundPolicy

            self.inbound.policy = InboundPolicy.of(self.ws)  # the addresses are read from the mapping's email fields

    def send_hold(self) -> tuple[CrmError, str] | None:
        """Why sending must wait now, or None: an edited mapping that cannot be loaded, a changed key, a failed sync.

        A failed sync holds sending as a failed fetch does (issue #9, #17): the
        log may not show the sheet as it is (a row deleted, a stage changed),
        so nothing is sent until a sync succeeds.
        """
        ws = self.ws
        if ws.mapping_error is not None:
            return ws.mapping_error, f"{ws.mapping.path.name} cannot be loaded"
        if ws.campaigns_error is not None:
            return ws.campaigns_error, "campaigns.toml cannot be loaded"
        from crm_automation.rekey import key_change

        recorded_key = self.store.key_field()
        changed = key_change(recorded_key, ws.mapping)
        if changed is not None and self.store.has_customers():
            return changed, f"the mapping's key changed from {recorded_key} to {ws.mapping.key}"
        e = self.session.last_error()
        if e is None:
            return None
        kind = ServiceError if isinstance(e, ServiceError) else ConfigError
        return kind(f"nothing was sent: the last sync failed ({e}), so the log may not show the sheet as it is now "
                    "(a row deleted, a stage changed)",
                    hint=e.hint or "fix the sheet; sending resumes after the next sync that succeeds"), \
            "the last sync failed"

    # ------------------------------------------------------------------ stages
    def sync(self) -> StageResult:
        """Read the sheet, validate, record new customers and field changes."""
        if self.ws.mapping_error is not None:
            return held(self.ctx, "sync", self.ws.mapping_error, f"{self.ws.mapping.path} cannot be loaded")
        with self.ctx.fleet.exclusive("sync") as holder:  # one worker at a time reads the sheet (issue #20)
            if holder is None:
                return self.session.sync(after_added=self.relink)
        return self._skipped("sync", holder)

    def _skipped(self, stage: str, holder: str) -> StageResult:
        """A stage another worker holds this cycle: recorded in ``runs`` with who has it, and nothing done (exit 0)."""
        with recorded(self.ctx, stage) as res:
            skipped(res, stage, holder)
        return res

    def relink(self) -> int:
        """Attach mail logged before its sender was a customer (issue #9); after a sync that added customers."""
        return self.store.relink_inbound(address_index(self.store, list(self.inbound.policy.email_fields)),
                                         self.ctx.clock.now(), status_of=status_for)

    def fetch(self) -> StageResult:
        """Read new mail and log each message exactly once (or quarantine it whole)."""
        return self.inbound.run(on_new_senders=self.session.add_senders)

    def recover(self) -> StageResult:
        """Resolve sends a killed worker left in ``sending`` (never resent)."""
        return self.outbound.recover()

    def send(self, *, dry_run: bool = False, limit: int | None = None) -> StageResult:
        """Queue what is due and send it, exactly once each (``dry_run``: render and report only).

        Held, and nothing planned, while :meth:`send_hold` names a reason.
        The templates are checked against the files once a pass (issue #17):
        an edited template is used from this pass on.
        """
        hold = self.send_hold()
        if hold is not None:
            return held(self.ctx, "send-dry-run" if dry_run else "send", *hold, record=not dry_run)
        self.composer.refresh()
        return self.outbound.run(dry_run=dry_run, limit=limit)

    def fetch_and_send(self, *, limit: int | None = None) -> list[StageResult]:
        """Fetch, then send only if the fetch succeeded: campaigns never go out on a stale inbound view.

        Why (issue #9): with the mailbox unreachable (a wrong path, IMAP down,
        a changed password), an unsubscribe or bounce waiting there would be
        missed and the customer mailed. The send is recorded as held, with
        the fetch's error (exit 3); the next pass tries both again.
        """
        fetched = self.fetch()
        if self.stop.is_set():
            return [fetched]
        if fetched.error is None:
            return [fetched, self.send(limit=limit)]
        return [fetched, self.outbound.held_for_failed_fetch(fetched.error)]

    def writeback(self, *, reuse_read: bool = False) -> StageResult:
        """Fill the worker's own columns in the sheet (skipped while the last sync failed, issue #17)."""
        if self.ws.mapping_error is not None:
            return held(self.ctx, "writeback", self.ws.mapping_error, f"{self.ws.mapping.path} cannot be loaded")
        with self.ctx.fleet.exclusive("writeback") as holder:  # one worker at a time writes the sheet (issue #20)
            if holder is None:
                return self.session.writeback(reuse_read=reuse_read)
        return self._skipped("writeback", holder)

    def rekey(self, *, dry_run: bool = False) -> Rekeyed:
        """Move the log to the mapping's new key, from the sheet (``rekey``; issue #17)."""
        return self.session.rekey(dry_run=dry_run)

    def plan(self, *, record: bool = True) -> Plan:
        """What is due now (pure planning over the log)."""
        return self.outbound.plan(record=record)

    def preview(self, template: str, key: str, campaign: str = "preview") -> Composed:
        """Render one campaign email for one customer (``preview``); sends and records nothing."""
        c = self.store.customer(key.strip().lower()) or self.store.customer(key.strip())
        if c is None:
            raise ConfigError(f"customer {key!r} is not in the log", hint="run `crm-automation sync` first; "
                              "the key is the mapping's key field (e.g. the email address)")
        ef = self.ws.email_field
        view = CustomerView(c.key, c.data.get(ef) if ef else None, c.data, c.first_seen, c.email_status)
        return self.composer.campaign_email(template, view, campaign, 0, self.composer.message_id(),
                                            self.ctx.clock.now())

    # ------------------------------------------------------------------ cycles
    def run_once(self, *, dry_run: bool = False) -> list[StageResult]:
        """One cycle: sync, fetch, send, write-back. A failed stage does not stop the later ones.

        A metered sheet (Google) is written back right after the sync, on the
        sync's read: one read and at most one write per cycle (issue #3); what
        fetch and send change reaches the sheet at the next cycle's sync.
        """
        self.refresh()
        metered = self.session.metered
        out = [self.sync()]
        if metered and not self.stop.is_set() and not dry_run:
            out.append(self.writeback(reuse_read=True))
        if not self.stop.is_set():
            if dry_run:
                out += [self.fetch(), self.send(dry_run=True)]
            else:
                out += self.fetch_and_send()  # no send on a stale inbound view (issue #9)
        if not metered and not self.stop.is_set() and not dry_run:
            out.append(self.writeback())
        return out

    def run_forever(self, on_result: Callable[[StageResult], None] = lambda r: None) -> None:
        """The scheduled worker: intervals from ``[schedule]``, one job at a time, until ``stop`` is set.

        Uses its own ``schedule.Scheduler`` (no module-level default, schedule
        issue #151). Job errors are the worker's policy: a stage that fails
        is recorded and retried at its next interval.
        """
        import schedule

        sc = self.ws.cfg.schedule
        sched = schedule.Scheduler()
        # A metered sheet (Google) is written back only on the sync's read; files after every change.
        metered = self.session.metered

        def job(fn: Callable[[], StageResult | list[StageResult]], wb: bool) -> None:
            if self.stop.is_set():
                return
            self.refresh()
            for one in _outlived(fn):
                on_result(one)
            if wb and not self.stop.is_set():
                for one in _outlived(lambda: self.writeback(reuse_read=metered)):
                    on_result(one)

        # The send job fetches first and sends only on a fresh inbound view (issue #9).
        jobs: list[tuple[str, Callable[[], StageResult | list[StageResult]], bool]] = [
            (sc.sync_every, self.sync, metered), (sc.fetch_every, self.fetch, not metered),
            (sc.send_every, self.fetch_and_send, not metered)]
        for every, fn, wb in jobs:
            d = parse_duration(every)
            if d is None:  # pragma: no cover - config.py validated it
                raise ConfigError(f"[schedule] {every!r} is not an interval")
            sched.every(int(d.total_seconds())).seconds.do(job, fn, wb)
        for r in _outlived(self.run_once):
            on_result(r)
        while not self.stop.is_set():
            sched.run_pending()
            idle = sched.idle_seconds
            self.stop.wait(min(max(idle if idle is not None else 1.0, 0.1), 1.0))


def _outlived(fn: Callable[[], StageResult | list[StageResult]]) -> list[StageResult]:
    """Run a scheduled job; a service lost before its stage could even be recorded stops that job, not the worker.

    A stage records its own service errors (:func:`~crm_automation.stage.recorded`);
    what is left is a log whose server is unreachable at the stage's very
    start (PostgreSQL restarting, issue #20): the scheduled worker waits for
    its next interval, as for a mailbox that does not answer.
    """
    try:
        r = fn()
    except ServiceError as e:
        log.warning("%s", e)
        return [StageResult("cycle", error=e)]
    return r if isinstance(r, list) else [r]


__all__ = ["Progress", "StageResult", "Worker"]
