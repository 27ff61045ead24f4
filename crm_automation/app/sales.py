"""Sales follow-through (issue #21): stale customers, customer mail waiting for us, one customer's contact.

Use cases over the log, read-only (they work beside a running worker): the
owner digest, ``report pipeline`` and the web dashboard render these
results. The rules are :mod:`crm_automation.contact`'s; the times come from
the store's contact part, read for every customer at once.

- ``stale(ws, now, owner=None)``: customers in a stage with a
  ``[stale_after_days]`` limit, quiet for longer, oldest first.
- ``waiting(ws, now, owner=None)``: replies and enquiries not answered yet,
  with the working hours they have waited and whether that is past
  ``[digest] answer_within_hours``, longest first.
- ``contact(ws, key, now)``: one customer's last contact, days quiet,
  stage, staleness and waiting mail.

``owner`` narrows to the customers whose owner field (the mapping's
``owner`` role) holds that address, compared without case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.contact import (
    Contact,
    Direction,
    Quiet,
    QuietSince,
    WorkingTime,
    answered,
    fresh_since,
    last_contact,
    quiet,
    quiet_from,
    stage_limit,
    waited,
)
from crm_automation.errors import ConfigError
from crm_automation.store.connection import iso, parse_iso
from crm_automation.store.contact import ContactTimes, SalesRow

if TYPE_CHECKING:
    from crm_automation.store.customers import StoredCustomer
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

WAITING_DAYS = 30  # customer mail older than this is not listed as waiting (a first fetch of a years-old inbox)
_NONE = ContactTimes()


def working_time(ws: Workspace) -> WorkingTime:
    """The team's working days and hours: ``[digest]`` (or its defaults) in the workspace's time zone."""
    w = ws.cfg.working
    start, end = w.working_window
    return WorkingTime(ws.cfg.timezone, w.weekday_numbers, start, end)


@dataclass(frozen=True, slots=True)
class CustomerContact:
    """One customer's contact as the rules see it ``now``.

    ``last_contact``: the latest email either way (None: none yet);
    ``quiet``: since when and how many days they have been quiet, and their
    stage's limit (``quiet.stale``); ``stage_since``: when they entered their
    current stage (the last logged change of the stage field, else first seen).
    """

    key: str
    name: str | None
    owner: str | None
    stage: str | None
    last_contact: Contact | None
    quiet: Quiet
    stage_since: datetime

    @property
    def stale(self) -> bool:
        """In a stage with a limit and quiet for longer than it."""
        return self.quiet.stale

    def to_json(self) -> JsonObject:
        """The customer, their stage, last contact (time and who wrote), days quiet, limit, stale."""
        c = self.last_contact
        return {"key": self.key, "name": self.name, "owner": self.owner, "stage": self.stage,
                "stage_since": utc_text(self.stage_since),
                "last_contact": utc_text(c.at) if c else None,
                "last_contact_by": c.direction.value if c else None,
                "days_quiet": self.quiet.days, "quiet_since": utc_text(self.quiet.since),
                "quiet_counted_from": self.quiet.by.value, "stale_after_days": self.quiet.limit,
                "stale": self.stale}


@dataclass(frozen=True, slots=True)
class Stale:
    """Customers stale ``at`` (for ``owner``, or everyone's when None), quiet longest first."""

    at: datetime
    owner: str | None
    customers: tuple[CustomerContact, ...]

    def to_json(self) -> JsonObject:
        """When, for whom, and each stale customer (:meth:`CustomerContact.to_json`)."""
        return {"at": utc_text(self.at), "owner": self.owner, "customers": [c.to_json() for c in self.customers]}


@dataclass(frozen=True, slots=True)
class WaitingMail:
    """A reply or enquiry from a customer that nobody has answered yet.

    ``working_hours``: how long it has waited, counting working hours only;
    ``overdue``: longer than ``answer_within_hours``.
    """

    activity_id: int
    key: str
    name: str | None
    owner: str | None
    stage: str | None
    subject: str | None
    message_id: str | None
    received_at: datetime
    working_hours: float
    overdue: bool

    def to_json(self) -> JsonObject:
        """The mail (activity id, Message-ID, subject, when), whose, and how long it has waited."""
        return {"activity_id": self.activity_id, "key": self.key, "name": self.name, "owner": self.owner,
                "stage": self.stage, "subject": self.subject, "message_id": self.message_id,
                "received_at": utc_text(self.received_at), "working_hours": round(self.working_hours, 2),
                "overdue": self.overdue}


@dataclass(frozen=True, slots=True)
class Waiting:
    """Customer mail waiting for an answer ``at`` (received since ``since``), longest waited first."""

    at: datetime
    owner: str | None
    answer_within_hours: float
    since: datetime
    mail: tuple[WaitingMail, ...]

    @property
    def overdue(self) -> tuple[WaitingMail, ...]:
        """The mail waiting longer than ``answer_within_hours``."""
        return tuple(m for m in self.mail if m.overdue)

    def to_json(self) -> JsonObject:
        """When, for whom, the limit, and each waiting mail (:meth:`WaitingMail.to_json`)."""
        return {"at": utc_text(self.at), "owner": self.owner, "answer_within_hours": self.answer_within_hours,
                "since": utc_text(self.since), "overdue": len(self.overdue),
                "mail": [m.to_json() for m in self.mail]}


@dataclass(frozen=True, slots=True)
class ContactView:
    """``contact(ws, key, now)``: one customer's contact and the mail of theirs waiting for an answer."""

    customer: CustomerContact
    waiting: tuple[WaitingMail, ...]

    def to_json(self) -> JsonObject:
        """The customer's contact and their waiting mail."""
        return {**self.customer.to_json(), "waiting": [m.to_json() for m in self.waiting]}


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _owner_matches(c: StoredCustomer, owner_field: str | None, owner: str | None) -> bool:
    if owner is None:
        return True
    value = _text(c.data.get(owner_field)) if owner_field is not None else None
    return value is not None and value.lower() == owner.strip().lower()


def customer_contact(ws: Workspace, c: StoredCustomer, times: ContactTimes, now: datetime) -> CustomerContact:
    """One customer's :class:`CustomerContact` from their log times (for a use case with the times read)."""
    roles = ws.mapping.roles
    stage = _text(c.data.get(roles.stage)) if roles.stage is not None else None
    return _contact_of(ws, c.key, _text(c.data.get(roles.name)) if roles.name else None,
                       _text(c.data.get(roles.owner)) if roles.owner else None, stage, c.first_seen, times, now,
                       stage_limit(stage, ws.mapping.stale_after_days))


def _contact_of(ws: Workspace, key: str, name: str | None, owner: str | None, stage: str | None,
                first_seen: datetime, times: ContactTimes, now: datetime, limit: int | None) -> CustomerContact:
    contact_ = last_contact(times.last_in, times.last_out)
    q = quiet(contact_, times.stage_changed, first_seen, now, ws.cfg.timezone, limit)
    return CustomerContact(key, name, owner, stage, contact_, q, times.stage_changed or first_seen)


def _latest(a: str | None, b: str | None) -> str | None:
    """The later of two log times (ISO 8601 UTC text of one format, so the text orders as the time: as SQL's MAX)."""
    return max(a, b) if a is not None and b is not None else a or b


def stale_from(ws: Workspace, rows: Iterable[SalesRow], now: datetime, owner: str | None = None
               ) -> tuple[CustomerContact, ...]:
    """The stale customers among ``rows`` (``store.sales_rows``), quiet longest first; ``owner``: theirs only.

    Only a customer whose stage has a limit can be stale, and of them only
    one whose quiet days count from before :func:`crm_automation.contact.fresh_since`
    (compared as the log's text): their times are parsed and the rule
    (:func:`crm_automation.contact.quiet`) decides. On the benchmark's log,
    18,060 of 100,000 customers, for 17,855 stale.
    """
    limits = ws.mapping.stale_after_days
    wanted = owner.strip().lower() if owner is not None else None
    zone = ws.cfg.timezone
    local_now = now.astimezone(zone)  # the rule takes each time's local date: one conversion less
    first_seen: dict[str, datetime] = {}  # customers synced together share one text: parsed once
    stages: dict[object, tuple[str | None, int | None]] = {}  # a few stage values over 100,000 customers
    fresh_from: dict[int, str] = {}  # per limit: quiet since then or later is surely not stale
    found = []
    for key, name, stage_v, owner_v, seen, last_in, sent, replied, changed in rows:
        if (known := stages.get(stage_v)) is None:
            text = _text(stage_v)
            known = stages[stage_v] = (text, stage_limit(text, limits))
        stage, limit = known
        if limit is None:
            continue
        if wanted is not None and ((o := _text(owner_v)) is None or o.lower() != wanted):
            continue
        out = _latest(sent, replied)
        if (fresh := fresh_from.get(limit)) is None:
            fresh = fresh_from[limit] = iso(fresh_since(local_now, zone, limit))
        if quiet_from(_latest(last_in, out), changed, seen)[0] >= fresh:
            continue  # written to lately: surely not stale (the log's ISO text orders as the time)
        if (first := first_seen.get(seen)) is None:
            first = first_seen[seen] = parse_iso(seen) or now
        contact_ = last_contact(parse_iso(last_in), parse_iso(out))
        stage_changed = parse_iso(changed)
        q = quiet(contact_, stage_changed, first, local_now, zone, limit)
        if q.stale:  # as customer_contact makes it, for the stale ones only
            found.append(CustomerContact(key, _text(name), _text(owner_v), stage, contact_, q,
                                         stage_changed or first))
    found.sort(key=lambda c: (c.quiet.since, c.key))
    return tuple(found)


def sales_rows(ws: Workspace, store: Store) -> list[SalesRow]:
    """Every customer present with name, stage, owner and (for the stages with a limit) their contact times."""
    roles = ws.mapping.roles
    return store.sales_rows(roles.name, roles.stage, roles.owner, timed=bool(ws.mapping.stale_after_days))


def stale_in(ws: Workspace, store: Store, now: datetime, owner: str | None = None) -> Stale:
    """:func:`stale` on a log already open (the digest reads more in the same go)."""
    if not ws.mapping.stale_after_days:
        return Stale(now, owner, ())
    return Stale(now, owner, stale_from(ws, sales_rows(ws, store), now, owner))


def stale(ws: Workspace, now: datetime, owner: str | None = None) -> Stale:
    """Customers stale ``now`` (see :mod:`crm_automation.contact`), quiet longest first; ``owner``: theirs only.

    Nobody is stale without ``[stale_after_days]`` in mappings/customers.toml.
    """
    if not ws.mapping.stale_after_days:
        return Stale(now, owner, ())
    with reading(ws) as store:
        return stale_in(ws, store, now, owner)


def waiting_in(ws: Workspace, store: Store, now: datetime, owner: str | None = None, *,
               days: int = WAITING_DAYS, key: str | None = None) -> Waiting:
    """:func:`waiting` on a log already open; ``key``: one customer's mail only."""
    since = now - timedelta(days=days)
    working = working_time(ws)
    within = ws.cfg.working.answer_within_hours
    roles = ws.mapping.roles
    mail = [m for m in store.inbound_after_outbound(since)
            if (key is None or m.customer_key == key) and not answered(m.at, m.named_by_reply, m.last_out)]
    people = {c.key: c for c in store.customers_among({m.customer_key for m in mail})}  # present ones, one read
    out = []
    for m in mail:
        c = people.get(m.customer_key)
        if c is None or not _owner_matches(c, roles.owner, owner):
            continue
        w = waited(m.at, now, working, within)
        out.append(WaitingMail(
            m.id, m.customer_key, _text(c.data.get(roles.name)) if roles.name else None,
            _text(c.data.get(roles.owner)) if roles.owner else None,
            _text(c.data.get(roles.stage)) if roles.stage else None, m.subject, m.message_id, m.at, w.hours,
            w.overdue))
    out.sort(key=lambda m: (-m.working_hours, m.received_at, m.activity_id))
    return Waiting(now, owner, within, since, tuple(out))


def waiting(ws: Workspace, now: datetime, owner: str | None = None, *, days: int = WAITING_DAYS) -> Waiting:
    """Customer mail of the last ``days`` not answered yet ``now``, longest waited first; ``owner``: theirs only.

    Answered means a message of ours names it (In-Reply-To/References, read
    from the Sent folder) or we wrote to that customer after it.
    """
    if days < 1:
        raise ConfigError(f"waiting: {days} is not a number of days (expected 1 or more)")
    with reading(ws) as store:
        return waiting_in(ws, store, now, owner, days=days)


def contact(ws: Workspace, key: str, now: datetime) -> ContactView:
    """One customer's contact ``now``: last contact, days quiet, stage, stale, and their mail waiting for us.

    Raises ConfigError when the log has no customer under ``key``.
    """
    with reading(ws) as store:
        typed = key.strip()
        c = store.customer(typed) or store.customer(typed.lower())
        if c is None:
            raise ConfigError(f"customer {key!r} is not in the log", hint="keys are the mapping's key field")
        times = store.contact_times(ws.mapping.roles.stage).get(c.key, _NONE)
        view = customer_contact(ws, c, times, now)
        return ContactView(view, waiting_in(ws, store, now, key=c.key).mail)


__all__ = ["ContactView", "CustomerContact", "Direction", "QuietSince", "Stale", "Waiting", "WaitingMail",
           "contact", "customer_contact", "sales_rows", "stale", "stale_from", "stale_in", "waiting", "waiting_in",
           "working_time"]
