"""What a refusal at ``RCPT`` means for the customer (issues #11, #17): a hard bounce, or a full mailbox.

Apart from :mod:`crm_automation.send.dispatch` so each is one commit of the
log's writes that an inbound bounce would make, written once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from crm_automation.config import InboundSection
from crm_automation.effects import bounce_effects
from crm_automation.errors import PermanentSendError
from crm_automation.models import BounceFailure, Kind, Permanence
from crm_automation.store.repo import Store
from crm_automation.store.sends import SendRow


def refused_recipient(store: Store, s: SendRow, e: PermanentSendError, address: str, now: datetime) -> None:
    """The send failed, and the address is a hard bounce: activity, suppression, email_status, one commit."""
    with store.transaction():
        store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
        store.add_activity(
            kind=Kind.BOUNCE.value, occurred_at=now, now=now, customer_key=s.customer_key,
            subject=f"refused at RCPT: {e.code} {e.enhanced or ''}".strip(), campaign=s.campaign, step=s.step,
            message_id=s.message_id, source="smtp",
            details={"recipient": address.lower(), "permanence": Permanence.HARD.value, "permanent": True,
                     "status": e.enhanced or str(e.code or ""), "evidence": f"refused at RCPT: {e}",
                     "recipients": [address.lower()], "original_message_id": s.message_id})
        for eff in bounce_effects(BounceFailure(address, Permanence.HARD), soft_count=0, soft_limit=0):
            store.suppress(eff.email, eff.reason, f"refused at RCPT for {s.message_id}", now)
            if eff.status:
                store.set_email_status(s.customer_key, eff.status)


def mailbox_full(store: Store, policy: InboundSection, s: SendRow, e: PermanentSendError, address: str,
                 now: datetime) -> None:
    """The send failed, and that mailbox is full: a soft bounce, scored as a fetched one is, in one commit.

    Issue #17: ``552 5.2.2`` for one recipient is that mailbox, not our
    sending quota. Logged like an inbound soft bounce (``permanence``
    soft, ``original_message_id`` this send's), so it stops the campaign's
    sequence (planner ``History.lost``) and counts in ``[inbound]
    soft_bounce_limit`` / ``soft_bounce_days`` (:func:`effects.bounce_effects`).
    """
    addr = address.lower()
    status = e.enhanced or str(e.code or "")
    with store.transaction():
        store.mark_failed(s.id, str(e), now, customer_key=s.customer_key, campaign=s.campaign, step=s.step)
        store.add_activity(
            kind=Kind.BOUNCE.value, occurred_at=now, now=now, customer_key=s.customer_key,
            subject=f"mailbox full at send: {e.code} {e.enhanced or ''}".strip(), campaign=s.campaign,
            step=s.step, message_id=s.message_id, source="smtp",
            details={"recipient": addr, "permanence": Permanence.SOFT.value, "permanent": False,
                     "status": status, "evidence": f"mailbox full: {e}", "recipients": [addr],
                     "original_message_id": s.message_id})
        if not policy.soft_bounce_limit:
            return
        n = store.soft_bounce_count(addr, s.customer_key, now - timedelta(days=policy.soft_bounce_days))
        for eff in bounce_effects(BounceFailure(addr, Permanence.SOFT, status), soft_count=n,
                                  soft_limit=policy.soft_bounce_limit):
            store.suppress(eff.email, eff.reason,
                           f"{n} soft bounces within {policy.soft_bounce_days} days (last {s.message_id})", now)
            if eff.status:
                store.set_email_status(s.customer_key, eff.status)
