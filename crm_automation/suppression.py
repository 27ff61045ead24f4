"""The suppression list as the admin edits it (``suppress add/remove``): validation and the status rule.

Why here and not in the CLI (issue #10): the rule "adding an address with
reason ``unsubscribed`` or ``bounced`` also sets the customer's email status
(shown in the sheet); ``manual`` does not; removing sets it back to ``ok``"
is the product's, and the web endpoint for one-click unsubscribes will apply
the same one. Addresses are validated with the sheet's own rule (issue #9:
``suppress add not-an-email`` was accepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from crm_automation.fieldtypes import address_problem
from crm_automation.store.repo import Store

REASONS = ("manual", "unsubscribed", "bounced")


@dataclass(frozen=True, slots=True)
class Added:
    """What ``suppress add`` did: addresses added (new to the list), and the refused ones with why."""

    added: list[str]
    rejected: list[str]


def add(store: Store, emails: list[str] | tuple[str, ...], reason: str, now: datetime, source: str = "cli") -> Added:
    """Suppress the valid addresses; an unsubscribe or bounce also sets the matching customers' email status."""
    rejected = [f"{e!r}: {why}" for e in emails if (why := address_problem(e)) is not None]
    valid = [e for e in emails if address_problem(e) is None]
    with store.transaction():
        added = [e for e in valid if store.suppress(e, reason, source, now)]
        if reason != "manual":
            store.set_status_by_email(valid, reason)
    return Added(added, rejected)


def remove(store: Store, emails: list[str] | tuple[str, ...]) -> list[str]:
    """Take addresses off the list (they may be mailed again); their customers' status goes back to ``ok``."""
    with store.transaction():
        removed = [e for e in emails if store.unsuppress(e)]
        store.set_status_by_email(removed, "ok")
    return removed
