"""The suppression list as the admin edits it (``suppress add/remove``): validation and the status rule.

Why here and not in the CLI (issue #10): the rule "adding an address with
reason ``unsubscribed`` or ``bounced`` also sets the customer's email status
(shown in the sheet); ``manual`` does not; removing sets it back to ``ok``"
is the product's, and the web endpoint for one-click unsubscribes will apply
the same one. Which status a reason sets is written once, in the pure core
(:func:`crm_automation.effects.status_for`, issue #18). Addresses are validated with the sheet's own rule (issue #9:
``suppress add not-an-email`` was accepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crm_automation.effects import status_for
from crm_automation.fieldtypes import address_problem
from crm_automation.models import EmailStatus, SuppressionReason
from crm_automation.store.repo import Store

# What the admin may give as a reason (``soft_bounces`` is the score's alone).
REASONS = tuple(r.value for r in (SuppressionReason.MANUAL, SuppressionReason.UNSUBSCRIBED, SuppressionReason.BOUNCED))


@dataclass(frozen=True, slots=True)
class Added:
    """What ``suppress add`` did: addresses added (new to the list), and the refused ones with why."""

    added: list[str]
    rejected: list[str]


def add(store: Store, emails: list[str] | tuple[str, ...], reason: str, now: datetime, source: str = "cli") -> Added:
    """Suppress the valid addresses; an unsubscribe or bounce also sets the matching customers' email status."""
    rejected = [f"{e!r}: {why}" for e in emails if (why := address_problem(e)) is not None]
    valid = [e for e in emails if address_problem(e) is None]
    why = SuppressionReason(reason)
    status = status_for(why)
    with store.transaction():
        added = [e for e in valid if store.suppress(e, why, source, now)]
        if status is not None:
            store.set_status_by_email(valid, status)
    return Added(added, rejected)


def remove(store: Store, emails: list[str] | tuple[str, ...]) -> list[str]:
    """Take addresses off the list (they may be mailed again); their customers' status goes back to ``ok``."""
    with store.transaction():
        removed = [e for e in emails if store.unsuppress(e)]
        _lifted(store, removed)
    return removed


def withdraw(store: Store, email: str, reason: SuppressionReason, source: str, customer_key: str) -> bool:
    """Take one address off the list only while its entry is the one ``reason`` and ``source`` made (issue #19).

    The undo of an unsubscribe link: an entry that changed since (a bounce,
    the admin's ``suppress add``, an emailed request) stays. When removed,
    the customer's status goes back as ``suppress remove`` puts it; the
    customer the link named (``customer_key``) too, whatever their key.
    """
    with store.transaction():
        removed = store.unsuppress_if(email, reason, source)
        if removed:
            _lifted(store, [email], keys=(customer_key,))
    return removed


def _lifted(store: Store, emails: list[str], keys: tuple[str, ...] = ()) -> None:
    """An address off the list is mailed again: its customers' (and ``keys``') email status goes back to ``ok``."""
    store.set_status_by_email(emails, EmailStatus.OK)
    for key in keys:
        store.set_email_status(key, EmailStatus.OK)
