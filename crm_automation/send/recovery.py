"""Recovery: what a killed process left in ``sending`` (SPEC §10: at most once, even if killed at any instant).

A send is marked ``sending`` (committed) before it is handed over, so a
crash leaves evidence. At the next start the transport says what it can
(the outbox sees its files); the mailbox's Sent folder answers for SMTP
when ``sent_folder`` is set. What nobody can confirm becomes ``uncertain``:
reported, never silently repeated.

Several workers (issue #20, rule 4): only ``sending`` rows whose holder is
dead (or unknown: a row from before schema 12, or this worker's own from an
earlier pass) are resolved. A live worker's row is in the middle of its
hand-over: with the outbox transport, requeueing it would send it twice. The
dead are found first (:meth:`crm_automation.fleet.Fleet.reap`); the send pass
runs this under its ``send-plan`` stage lock, so one worker resolves a row once.
"""

from __future__ import annotations

from contextlib import suppress

from crm_automation.errors import CrmError
from crm_automation.models import SendStatus
from crm_automation.stage import StageContext, StageResult, recorded
from crm_automation.store.sends import SendKind
from crm_automation.workspace import Workspace

UNCERTAIN_NOTE = ("the worker stopped while handing this message over; it may or may not have been delivered (see "
                  "`crm-automation report`)")


def recover(ws: Workspace, ctx: StageContext) -> StageResult:
    """Resolve sends left in ``sending`` by a dead worker: found handed over, or ``uncertain``; never resent."""
    with recorded(ctx, "recover") as res:
        ctx.fleet.reap(ctx.store)  # a worker found dead now gives its rows up to the query below
        stuck = ctx.store.stuck_sends(ctx.fleet.worker_id)
        if not stuck:
            return res
        known, found = _handed_over(ws, [s.message_id for s in stuck if s.message_id])
        now = ctx.clock.now()
        n_sent = n_unc = 0
        for s in stuck:
            if s.message_id in found:
                key = None if s.kind is SendKind.OWNER_DIGEST else s.customer_key  # a digest: no customer's
                ctx.store.mark_sent(s.id, now, customer_key=key, campaign=s.campaign, step=s.step,
                                    message_id=s.message_id or "", subject="(recovered after a crash)", body="",
                                    source="found after a crash")
                n_sent += 1
            elif known:  # the carrier knows it never got it (no .eml was renamed into place)
                ctx.store.mark_status(s.id, SendStatus.QUEUED, "requeued after a crash: no .eml was written")
            else:
                ctx.store.mark_status(s.id, SendStatus.UNCERTAIN, UNCERTAIN_NOTE)
                n_unc += 1
        res.stats = {"stuck": len(stuck), "confirmed_sent": n_sent, "uncertain": n_unc}
        if n_unc:
            res.problems.append(f"{n_unc} send(s) marked uncertain after a crash; `crm-automation report` "
                                f"lists them and `crm-automation requeue` sends them again on purpose")
    return res


def _handed_over(ws: Workspace, ids: list[str]) -> tuple[bool, set[str]]:
    """(whether the transport knows every hand-over, the Message-IDs found handed over).

    The transport answers when it can (``handed_over`` not None: the outbox
    knows what it never got); else the Sent folder, when configured, says
    which were delivered and the rest stay unknown.
    """
    known = ws.open_transport().handed_over(ids)
    if known is not None:
        return True, set(known)
    sent_folder = ws.cfg.outbound.sent_folder
    if not sent_folder:
        return False, set()
    source = ws.open_mailbox()
    try:
        return False, set(source.find_message_ids(sent_folder, ids))
    finally:
        with suppress(CrmError, OSError):
            source.close()

