"""The suppression list as people change it: ``suppress``, ``unsuppress``, the list, an unsubscribe link (issue #18).

Writes go through while a worker runs (:func:`~crm_automation.app.access.writing`,
issue #19): each is one short transaction, and the send pass looks the
address up again at the moment it hands a message over, so a suppression
recorded mid-pass is honoured. The rule of
what a reason does to the customer's email status is
:mod:`crm_automation.suppression`'s, applied here, never restated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_automation import suppression
from crm_automation.app.access import reading, writing
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.effects import status_for
from crm_automation.fieldtypes import address_problem
from crm_automation.models import InboundDetails, Kind, SuppressionReason

if TYPE_CHECKING:
    from crm_automation.store.repo import Store
    from crm_automation.store.sends import SentRef
    from crm_automation.workspace import Workspace

REASONS = suppression.REASONS
_UNSUBSCRIBED = SuppressionReason.UNSUBSCRIBED  # an unsubscribe link's reason: as an emailed request's


@dataclass(frozen=True, slots=True)
class Suppressed:
    """What ``suppress add`` did: addresses newly on the list, and the refused ones with why."""

    added: tuple[str, ...]
    rejected: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """``suppress add --json``."""
        return {"added": list(self.added), "rejected": list(self.rejected)}


@dataclass(frozen=True, slots=True)
class Unsuppressed:
    """What ``suppress remove`` did: the addresses taken off the list (they may be mailed again)."""

    removed: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """``suppress remove --json``."""
        return {"removed": list(self.removed)}


@dataclass(frozen=True, slots=True)
class SuppressedAddress:
    """One entry of the list: the address, why, since when and who said so."""

    email: str
    reason: str
    at: datetime | None
    source: str


@dataclass(frozen=True, slots=True)
class Suppressions:
    """The suppression list, oldest first."""

    items: tuple[SuppressedAddress, ...]

    def to_json(self) -> JsonObject:
        """``suppress list --json``."""
        return {"suppressions": [{"email": i.email, "reason": i.reason, "at": utc_text(i.at), "source": i.source}
                                 for i in self.items]}


class Outcome(enum.StrEnum):
    """What an unsubscribe link did."""

    UNSUBSCRIBED = "unsubscribed"  # the address is suppressed now, the customer's status set, the click logged
    ALREADY = "already"  # the address was on the list already: nothing changed
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - not a secret: the token names no send (mistyped, or from another workspace)
    NO_ADDRESS = "no_address"  # the token's customer has no valid address in the log


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The result of an unsubscribe link: the outcome, and whose send the token named."""

    token: str
    outcome: Outcome
    customer: str | None = None
    email: str | None = None
    campaign: str | None = None
    step: int | None = None

    def to_json(self) -> JsonObject:
        """The outcome and the send it concerned (no other customer data)."""
        return {"outcome": self.outcome.value, "customer": self.customer, "email": self.email,
                "campaign": self.campaign, "step": self.step}


def suppress(ws: Workspace, emails: Sequence[str], reason: str, now: datetime, *, source: str = "cli") -> Suppressed:
    """Suppress the valid addresses; ``unsubscribed``/``bounced`` also set the matching customers' email status."""
    with writing(ws) as store:
        result = suppression.add(store, tuple(emails), reason, now, source)
    return Suppressed(tuple(result.added), tuple(result.rejected))


def unsuppress(ws: Workspace, emails: Sequence[str]) -> Unsuppressed:
    """Take addresses off the list; their customers' email status goes back to ``ok``."""
    with writing(ws) as store:
        return Unsuppressed(tuple(suppression.remove(store, tuple(emails))))


def suppressions(ws: Workspace) -> Suppressions:
    """The suppression list (read-only: works beside a running worker)."""
    with reading(ws) as store:
        return Suppressions(tuple(SuppressedAddress(e, s.reason, s.at, s.source)
                                  for e, s in store.suppressions().items()))


def _address(ws: Workspace, store: Store, ref: SentRef) -> str | None:
    """The token's customer's address as the log has it now (as an emailed request's effects use it)."""
    c = store.customer(ref.customer_key)
    field = ws.email_field
    value = c.data.get(field) if c is not None and field is not None else None
    if not isinstance(value, str) or address_problem(value) is not None:
        return None
    return value.strip().lower()


def unsubscribe_by_token(ws: Workspace, token: str, now: datetime) -> Unsubscribed:
    """Unsubscribe the customer a send's token names: the one-click link (RFC 8058) of ``unsubscribe_url``.

    The token is the send's (:mod:`crm_automation.tokens`): it names the
    customer the message was meant for, whoever clicks. What it does is
    what an emailed unsubscribe request carrying the token does (issue #17):
    the address is suppressed as ``unsubscribed``, the customer's email
    status set, and an ``unsubscribe`` activity logged against the send's
    campaign and step, which stops the sequence and counts in the funnel —
    all in one transaction. A second click changes nothing (``already``);
    a token that names no send changes nothing either (``unknown_token``).
    """
    token = token.strip()
    with writing(ws) as store:
        ref = store.send_for_token(token)
        if ref is None:
            return Unsubscribed(token, Outcome.UNKNOWN_TOKEN)
        email = _address(ws, store, ref)
        if email is None:
            return Unsubscribed(token, Outcome.NO_ADDRESS, ref.customer_key, None, ref.campaign, ref.step)
        with store.transaction():
            if not store.suppress(email, _UNSUBSCRIBED, f"unsubscribe link {ref.campaign}/{ref.step}", now):
                return Unsubscribed(token, Outcome.ALREADY, ref.customer_key, email, ref.campaign, ref.step)
            if (status := status_for(_UNSUBSCRIBED)) is not None:
                store.set_email_status(ref.customer_key, status)
            store.add_activity(kind=Kind.UNSUBSCRIBE.value, occurred_at=now, now=now, customer_key=ref.customer_key,
                               campaign=ref.campaign, step=ref.step, source="unsubscribe link",
                               details=InboundDetails(email, (), "unsubscribe link", "token", token=token,
                                                      token_customer=ref.customer_key,
                                                      token_send=f"{ref.campaign}/{ref.step}",
                                                      sender_customer=ref.customer_key))
    return Unsubscribed(token, Outcome.UNSUBSCRIBED, ref.customer_key, email, ref.campaign, ref.step)
