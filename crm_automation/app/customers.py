"""Finding customers in the log, and one customer as the web app's customer page shows them.

``search`` by key or any mapped value (issue #18, the search box);
``profile``: one customer with their timeline and whether their address is
suppressed (issue #19, the customer page and its suppress button).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_automation.app.access import reading
from crm_automation.app.reports import Timeline, timeline_in
from crm_automation.app.results import JsonObject, JsonValue, json_value, utc_text
from crm_automation.errors import ConfigError
from crm_automation.fieldtypes import address_problem

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace

SEARCH_LIMIT = 50


@dataclass(frozen=True, slots=True)
class CustomerHit:
    """A customer as the log knows it: key, sheet row at the last sync, mapped fields, email status."""

    key: str
    row: int
    fields: dict[str, JsonValue]
    email_status: str
    present: bool  # still in the sheet at the last sync (False: removed, history kept)
    first_seen: datetime

    def to_json(self) -> JsonObject:
        """One search result."""
        return {"key": self.key, "row": self.row, "fields": self.fields, "email_status": self.email_status,
                "present": self.present, "first_seen": utc_text(self.first_seen)}


@dataclass(frozen=True, slots=True)
class CustomerSearch:
    """The customers matching ``query``, at most the limit asked for; ``more``: there are others beyond it."""

    query: str
    customers: tuple[CustomerHit, ...]
    more: bool

    def to_json(self) -> JsonObject:
        """The query, the customers found and whether there are more."""
        return {"query": self.query, "customers": [c.to_json() for c in self.customers], "more": self.more}


def search(ws: Workspace, query: str, *, limit: int = SEARCH_LIMIT) -> CustomerSearch:
    """Customers whose key or any mapped value contains ``query`` (ASCII letters in any case; ``""``: everyone).

    Customers still in the sheet come first, then by key. Read-only, so it
    works beside a running worker.
    """
    if limit < 1:
        raise ConfigError(f"customer search: limit {limit} is not a number of customers (expected 1 or more)")
    text = query.strip()
    with reading(ws) as store:
        found = store.search_customers(text, limit + 1)
    hits = tuple(CustomerHit(c.key, c.row, {k: json_value(v) for k, v in c.data.items()}, c.email_status, c.present,
                             c.first_seen) for c in found[:limit])
    return CustomerSearch(text, hits, len(found) > limit)


@dataclass(frozen=True, slots=True)
class Profile:
    """One customer for the web app's customer page: what the log knows, their timeline, their suppression.

    ``customer`` is None when the log has activities under the key but no
    customer (an unknown sender's key). ``email`` is the address the
    mapping's email field holds (None: none, or not an address), and
    ``suppressed`` the reason it is on the suppression list (None: it is
    not), so the page offers the one button that applies.
    """

    customer: CustomerHit | None
    email: str | None
    suppressed: str | None
    timeline: Timeline

    def to_json(self) -> JsonObject:
        """The customer, the address and its suppression, and ``timeline --json`` as ``timeline``."""
        return {"customer": self.customer.to_json() if self.customer else None, "email": self.email,
                "suppressed": self.suppressed, "timeline": self.timeline.to_json()}


def profile(ws: Workspace, key: str) -> Profile:
    """The customer under ``key`` (as :func:`~crm_automation.app.reports.timeline` finds it), read in one go.

    Raises ConfigError as ``timeline`` does when the log knows nothing
    under ``key``.
    """
    with reading(ws) as store:
        line = timeline_in(store, key, stage_field=ws.mapping.roles.stage)
        c = store.customer(line.customer)
        field = ws.email_field
        value = c.data.get(field) if c is not None and field is not None else None
        email = value.strip().lower() if isinstance(value, str) and address_problem(value) is None else None
        entry = store.suppression(email) if email is not None else None
    hit = None if c is None else CustomerHit(c.key, c.row, {k: json_value(v) for k, v in c.data.items()},
                                             c.email_status, c.present, c.first_seen)
    return Profile(hit, email, None if entry is None else str(entry.reason), line)
