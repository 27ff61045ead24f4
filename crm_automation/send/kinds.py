"""The kinds of message the send pass hands over, each with its own key for exactly-once (issue #18 item 2).

A ``sends`` row is one message of one kind (``sends.kind``,
:class:`~crm_automation.store.sends.SendKind`). Every kind goes through the
same exactly-once sequence in :mod:`crm_automation.send.dispatch`; what
differs is listed here, once:

=====================  ==========================================  =============================================
kind                   its key (unique in ``sends``)               at hand-over
=====================  ==========================================  =============================================
``campaign_step``      (campaign, step_id, customer): a step of a  the planner's rules once more for a send queued
                       sequence, planned by ``send/plan.py``       by an earlier pass; the step's template; the
                                                                   suppression list and email status as the log
                                                                   has them at the hand-over (issue #19)
``owner_notification`` the activity it forwards (``step_id`` =     the forwarded message, from the log, to the
                       its id), queued by the fetch that logged    owner address recorded when it was queued
                       the reply (``[outbound] notify_owner``)
``owner_digest``       (owner address, the local date): one a day  the contents read when it was planned
                       per owner, planned by ``send/digests.py``   (``Ready.digests``), rendered from ``[digest]
                       at ``[digest] at`` (issue #21)              template``; the suppression list at hand-over;
                                                                   logged in no customer's timeline
=====================  ==========================================  =============================================

Owner notifications used to be recognised by their campaign's name
(``owner-notify``) with the activity's id read from ``step``. Schema 5
gives those rows their kind and keeps their key, so a log from before the
upgrade forwards no reply twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from crm_automation.compose import Composed, Composer, InboundNote, Sender
from crm_automation.send.plan import Ready
from crm_automation.store.repo import Store
from crm_automation.store.sends import SendKind, SendRow


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A send ready to go: to whom, and how to build it once its Message-ID and time are known.

    ``customer``: the customer whose address and email status are looked up
    again at the moment of hand-over (issue #19), or None for a message to a
    member of the team (an owner notification), which no campaign rule blocks.
    """

    recipient: str
    build: Callable[[str, datetime, Sender | None], Composed]  # (Message-ID, now, the account's sender)
    customer: str | None = None
    in_timeline: bool = True  # False: its ``email_out`` has no customer (a digest is no contact, issue #21)


class MessageKind(Protocol):
    """What the send pass needs of one kind of message."""

    def prepare(self, s: SendRow, ready: Ready, composer: Composer, store: Store) -> Outgoing | str:
        """The message to hand over, or why it is skipped (recorded as ``skipped`` with that reason)."""
        ...


class CampaignStep:
    """A step of a campaign's sequence (SPEC §5): rechecked if queued earlier, composed from its template."""

    def prepare(self, s: SendRow, ready: Ready, composer: Composer, store: Store) -> Outgoing | str:
        """The step's email, or why it must not go now (:meth:`Ready.recheck`)."""
        why, step = ready.recheck(s)
        view = ready.views.get(s.customer_key)
        if why is not None or step is None or view is None:
            return why or "customer no longer in the sheet"
        template, number, campaign = step.template, step.number, s.campaign
        camp = ready.campaigns[campaign]  # recheck found it
        clicks, opens = camp.track_clicks, camp.track_opens
        return Outgoing(view.email or "", lambda mid, now, sender: composer.campaign_email(
            template, view, campaign, number, mid, now, track_clicks=clicks, track_opens=opens, sender=sender),
            s.customer_key)


class OwnerNotification:
    """A customer's reply forwarded to their owner (``[outbound] notify_owner``); never blocked by campaign rules."""

    def prepare(self, s: SendRow, ready: Ready, composer: Composer, store: Store) -> Outgoing | str:
        """The notification, to the owner address recorded when it was queued."""
        view = ready.views.get(s.customer_key)
        if view is None:
            return "customer no longer in the sheet"
        activity_id = int(s.step_id) if s.step_id is not None else s.step  # its key: the activity it forwards
        owner = s.email or ""

        def build(message_id: str, now: datetime, sender: Sender | None) -> Composed:
            a = store.activity(activity_id)
            note = (InboundNote(subject=a.subject or "", body=a.body or "", message_id=a.message_id) if a is not None
                    else InboundNote(subject="", body="", message_id=None))
            return composer.owner_notification(view, note, owner, message_id, now, sender)

        return Outgoing(owner, build)


class OwnerDigest:
    """An owner's morning digest (issue #21): mail to the team, never contact with a customer.

    ``customer_key`` holds the owner's address: the hand-over's gate looks it
    up on the suppression list in the transaction that marks it ``sending``
    (an owner suppressed since the digest was planned is not mailed). Its
    ``email_out`` is logged without a customer, so no customer's timeline,
    last contact or funnel counts it; :mod:`crm_automation.store.contact`
    reads campaign steps only, so a digest is no contact either way.
    """

    def prepare(self, s: SendRow, ready: Ready, composer: Composer, store: Store) -> Outgoing | str:
        """The digest, from the contents read when it was planned (or again, for one queued by an earlier pass)."""
        content = ready.digests.get((s.customer_key, s.step_id or ""))
        if content is None:
            return "digest contents were not read by this pass"
        owner = s.email or s.customer_key
        return Outgoing(owner, lambda mid, now, sender: composer.owner_digest(
            owner, content.context(), mid, now, sender), s.customer_key, in_timeline=False)


KINDS: dict[SendKind, MessageKind] = {
    SendKind.CAMPAIGN_STEP: CampaignStep(),
    SendKind.OWNER_NOTIFICATION: OwnerNotification(),
    SendKind.OWNER_DIGEST: OwnerDigest(),
}


def kind_of(s: SendRow) -> MessageKind:
    """The registered kind of a send."""
    return KINDS[s.kind]
