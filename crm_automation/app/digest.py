"""The owner digest's contents (issue #21): one owner's morning email as a use-case result.

``digest_for(ws, owner, now)`` is one owner's :class:`Digest`; the send
pass asks :func:`digest_source`'s function for every owner at once (one
reading of the log for 50 owners, not 50), and renders each with the digest
template (:meth:`crm_automation.compose.Composer.owner_digest`). What a
digest says, in this order:

1. ``waiting``: customer mail waiting for us longer than ``[digest]
   answer_within_hours`` (working hours; :func:`crm_automation.app.sales.waiting_in`).
2. ``replies``: replies and enquiries since the owner's last digest, with
   what the customer newly wrote (the log keeps the reply without the quoted
   history: :mod:`crm_automation.reply_text`) and a link to the customer's
   page when ``[serve] public_url`` is set.
3. ``stale``: the owner's customers quiet past their stage's
   ``[stale_after_days]``, quiet longest first (:func:`crm_automation.app.sales.stale_in`).
4. ``bounces`` and ``unsubscribes`` of the owner's customers since the last digest.
5. ``due``: follow-ups going to the owner's customers today: sent already,
   queued, or what the send pass's own planner plans by the end of the local
   day (:class:`crm_automation.send.plan.Planning`, its rules, not a copy).
6. ``assigned``: customers given to the owner since the last digest (added
   with the owner, or their owner field changed to this owner).

"Since the last digest" is the window (the owner's latest digest that was
sent, this one]: by the time the log learnt of each event, so none is told
twice or lost. A first digest starts at the previous workday's digest moment.
The owner is whoever the ``owner`` role's field names now (compared without
case); customers that left the sheet are not reported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.app.sales import CustomerContact, WaitingMail, sales_rows, stale_from, waiting_in
from crm_automation.models import BounceDetails, FieldChangedDetails, Kind, Permanence, SendStatus
from crm_automation.owner_digest import OwnerProblem, first_window_start, owner_address, owner_problem
from crm_automation.owner_digest import owner_problems as refused_owners
from crm_automation.send.digests import DigestContent, DigestSource
from crm_automation.send.plan import Planning
from crm_automation.store.connection import parse_iso
from crm_automation.store.sends import SendKind
from crm_automation.workspace import Clock

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from crm_automation.store.activities import Activity
    from crm_automation.store.contact import SalesRow
    from crm_automation.store.customers import StoredCustomer
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

T = TypeVar("T")
MAX_ITEMS = 50  # per section: a digest after a long outage lists the first 50 and says how many more
EXCERPT_CHARS = 600  # of what a customer newly wrote; the link (or ``timeline``) shows the rest


@dataclass(frozen=True, slots=True)
class DigestCustomer:
    """Who an item is about: the customer's key, name and stage, and their page when ``serve`` is published."""

    key: str
    name: str | None
    stage: str | None
    link: str | None

    def to_json(self) -> JsonObject:
        """Key, name, stage, link."""
        return {"key": self.key, "name": self.name, "stage": self.stage, "link": self.link}


@dataclass(frozen=True, slots=True)
class DigestEvent:
    """A reply, bounce, unsubscribe or assignment of one customer since the last digest.

    ``text``: for a reply, what the customer newly wrote (cut at
    :data:`EXCERPT_CHARS`); for a bounce its evidence; for an assignment the
    previous owner (or ``""`` for a customer new in the sheet).
    """

    customer: DigestCustomer
    at: datetime
    subject: str | None
    text: str

    def to_json(self) -> JsonObject:
        """The customer, when, the subject and the text."""
        return {"customer": self.customer.to_json(), "at": utc_text(self.at), "subject": self.subject,
                "text": self.text}


@dataclass(frozen=True, slots=True)
class DueFollowUp:
    """A follow-up going to one of the owner's customers today: ``sent`` (at ``at``), ``queued`` or ``due``."""

    customer: DigestCustomer
    campaign: str
    step: str
    status: str
    at: datetime | None

    def to_json(self) -> JsonObject:
        """The customer, the campaign and step, its state today."""
        return {"customer": self.customer.to_json(), "campaign": self.campaign, "step": self.step,
                "status": self.status, "at": utc_text(self.at) if self.at else None}


@dataclass(frozen=True, slots=True)
class Digest:
    """One owner's digest of ``day``: events in (``since``, ``until``], the state ``at``.

    ``more``: per section, how many items were left out past :data:`MAX_ITEMS`.
    """

    owner: str
    day: date
    at: datetime
    since: datetime
    until: datetime
    waiting: tuple[WaitingMail, ...]
    replies: tuple[DigestEvent, ...]
    stale: tuple[CustomerContact, ...]
    bounces: tuple[DigestEvent, ...]
    unsubscribes: tuple[DigestEvent, ...]
    due: tuple[DueFollowUp, ...]
    assigned: tuple[DigestEvent, ...]
    more: Mapping[str, int]
    links: Mapping[str, str | None]  # customer key -> their page (waiting and stale customers too)
    tz: ZoneInfo | None = None

    @property
    def empty(self) -> bool:
        """Nothing to say: no digest is sent."""
        return not (self.waiting or self.replies or self.stale or self.bounces or self.unsubscribes or self.due
                    or self.assigned)

    def to_json(self) -> JsonObject:
        """Every section, oldest-first events, as JSON."""
        return {"owner": self.owner, "day": self.day.isoformat(), "at": utc_text(self.at),
                "since": utc_text(self.since), "until": utc_text(self.until), "empty": self.empty,
                "waiting": [m.to_json() for m in self.waiting], "replies": [e.to_json() for e in self.replies],
                "stale": [c.to_json() for c in self.stale], "bounces": [e.to_json() for e in self.bounces],
                "unsubscribes": [e.to_json() for e in self.unsubscribes], "due": [d.to_json() for d in self.due],
                "assigned": [e.to_json() for e in self.assigned], "more": dict(self.more)}

    def context(self) -> dict[str, object]:
        """What the digest template sees: ``owner``, ``digest`` (the sections as plain values, local times)."""
        def local(t: datetime | None) -> datetime | None:
            return t.astimezone(self.tz) if t is not None and self.tz is not None else t

        def event(e: DigestEvent) -> dict[str, object]:
            return {**e.customer.to_json(), "at": local(e.at), "subject": e.subject or "", "text": e.text}

        return {
            "owner": {"email": self.owner},
            "digest": {
                "day": self.day, "since": local(self.since), "empty": self.empty, "more": dict(self.more),
                "waiting": [{"key": m.key, "name": m.name, "stage": m.stage, "subject": m.subject or "",
                             "received_at": local(m.received_at), "working_hours": round(m.working_hours, 1),
                             "link": self.links.get(m.key)} for m in self.waiting],
                "replies": [event(e) for e in self.replies],
                "stale": [{"key": c.key, "name": c.name, "stage": c.stage, "days_quiet": c.quiet.days,
                           "stale_after_days": c.quiet.limit,
                           "last_contact": local(c.last_contact.at) if c.last_contact else None,
                           "link": self.links.get(c.key)} for c in self.stale],
                "bounces": [event(e) for e in self.bounces],
                "unsubscribes": [event(e) for e in self.unsubscribes],
                "due": [{**d.customer.to_json(), "campaign": d.campaign, "step": d.step, "status": d.status,
                         "at": local(d.at)} for d in self.due],
                "assigned": [event(e) for e in self.assigned],
            },
        }


@dataclass(frozen=True, slots=True)
class DigestBook:
    """Every owner's digest read in one go; ``problems``: owners not mailed, and why."""

    digests: Mapping[str, Digest]
    problems: tuple[OwnerProblem, ...]


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _link(public_url: str | None, key: str) -> str | None:
    """The customer's page in ``serve`` (``/customers/{key}``, as web/pages.py builds it) when it is published."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/customers/{quote(key, safe='@')}"


def _excerpt(body: str | None) -> str:
    text = (body or "").strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS].rstrip() + " …"


def owners_of(ws: Workspace, customers: Iterable[StoredCustomer]) -> dict[str, list[StoredCustomer]]:
    """Owner address (lower-case) -> their customers in the sheet, in the sheet's order."""
    field = ws.mapping.roles.owner
    out: dict[str, list[StoredCustomer]] = defaultdict(list)
    if field is None:
        return out
    for c in customers:
        owner = owner_address(c.data.get(field))
        if owner is not None:
            out[owner].append(c)
    return out


def owner_problems_in(ws: Workspace, store: Store) -> tuple[OwnerProblem, ...]:
    """Owners whose digest is never mailed (``check`` and ``report`` list them), by owner value."""
    field_ = ws.mapping.roles.owner
    if field_ is None:
        return ()
    return refused_owners(((c.key, c.data.get(field_)) for c in store.customers().values()),
                          set(store.suppressions()))


def owner_problems(ws: Workspace) -> tuple[OwnerProblem, ...]:
    """:func:`owner_problems_in` on the log opened read-only (nothing when ``[digest]`` is not configured)."""
    if ws.cfg.digest is None:
        return ()
    with reading(ws) as store:
        return owner_problems_in(ws, store)


def _due_today(ws: Workspace, store: Store, now: datetime) -> list[tuple[str, str, str, str, str | None]]:
    """(customer, campaign, step, status, at) of follow-ups going out today, local day.

    Sent since local midnight, queued now, or planned by the send pass's own
    planner as if it ran at the end of the day (reading only: ``record=False``).
    The planner asks the log whom to plan (issue #23): on a log where send
    passes run, the customers whose next look (``plan_due``) falls before
    the end of the day, those with news since the last pass, and the queued
    ones; on a log no pass ever planned, everyone (as a first pass does).
    """
    tz = ws.cfg.timezone
    local = now.astimezone(tz).date()
    midnight = datetime.combine(local, time.min, tzinfo=tz)
    out: list[tuple[str, str, str, str, str | None]] = [  # times as the log's text: only the shown are parsed
        (key, campaign, step, SendStatus.SENT.value, at)
        for key, campaign, step, at in store.follow_ups_sent_since(midnight)]
    for s in store.sends(status=[SendStatus.QUEUED]):
        if s.kind is SendKind.CAMPAIGN_STEP and s.step > 0:
            out.append((s.customer_key, s.campaign, s.step_id or str(s.step), SendStatus.QUEUED.value, None))
    if ws.campaigns:
        end = datetime.combine(local + timedelta(days=1), time.min, tzinfo=tz) - timedelta(seconds=1)
        planned = Planning(ws, store, Clock(end)).plan(record=False)
        for p in planned.plan.sends:
            if p.status == SendStatus.QUEUED and p.step > 0:
                out.append((p.customer_key, p.campaign, p.step_id, "due", None))
    return out


class _People:
    """The customers present, for every owner's digest: whose each is (all of them), who each is (on demand).

    Only a few thousand customers are shown in 50 digests, so their name and
    stage are made into text when asked, not for all 100,000.
    """

    def __init__(self, rows: Iterable[SalesRow]) -> None:
        self.rows = {r[0]: r for r in rows}
        address = {v: owner_address(v) for v in {r[3] for r in self.rows.values()}}  # 50 owners, 100,000 cells
        self.owner = {k: o for k, r in self.rows.items() if (o := address[r[3]]) is not None}

    def who(self, key: str, public_url: str | None) -> DigestCustomer:
        """The customer as an item shows them (a customer no longer in the sheet: by key only)."""
        r = self.rows.get(key)
        return DigestCustomer(key, _text(r[1]) if r else None, _text(r[2]) if r else None, _link(public_url, key))


def digests_in(ws: Workspace, store: Store, now: datetime, owners: Mapping[str, datetime] | None = None
               ) -> DigestBook:
    """Every owner's digest ``now`` (or ``owners``', each with its window's end), read in one go.

    Five reads for all owners together: the customers, the events of the
    widest window, stale, waiting, today's follow-ups; then each owner's share.
    """
    tz = ws.cfg.timezone
    if ws.mapping.roles.owner is None:
        return DigestBook({}, ())
    rows = sales_rows(ws, store)  # every customer once, for all owners: who they are, and the stale rule's times
    people = _People(rows)
    by_owner: dict[str, list[str]] = defaultdict(list)
    for key, owner in people.owner.items():
        by_owner[owner].append(key)
    asked = set(by_owner) if owners is None else set(owners) & set(by_owner)
    suppressed = store.suppressed_among(asked)
    problems = [OwnerProblem(o, why, tuple(by_owner[o]))
                for o in sorted(asked) if (why := owner_problem(o, suppressed)) is not None]
    wanted = asked - {p.owner for p in problems}
    if not wanted:
        return DigestBook({}, tuple(problems))
    day = now.astimezone(tz).date()
    first = first_window_start(day, tz, ws.cfg.working.weekday_numbers, ws.cfg.working.minute_of_day)
    last = store.last_digests()
    since = {o: last.get(o, first) for o in wanted}
    until = {o: (owners or {}).get(o, now) for o in wanted}
    sections = _gather(ws, store, now, rows, people, since, until)
    public_url = ws.cfg.serve.public_url
    out = {}
    for o in sorted(wanted):
        s = sections[o]
        keys = {m.key for m in s.waiting} | {c.key for c in s.stale}
        out[o] = Digest(o, day, now, since[o], until[o], _cut(s.waiting), _cut(s.replies), _cut(s.stale),
                        _cut(s.bounces), _cut(s.unsubscribes), _cut(s.due), _cut(s.assigned), s.more(),
                        {k: _link(public_url, k) for k in keys}, tz)
    return DigestBook(out, tuple(problems))


def _gather(ws: Workspace, store: Store, now: datetime, rows: list[SalesRow], people: _People,
            since: Mapping[str, datetime], until: Mapping[str, datetime]) -> dict[str, _Sections]:
    """Each wanted owner's (the keys of ``since``) items, from one read of each kind for all of them."""
    owner_field = ws.mapping.roles.owner or ""
    events = store.digest_events(min(since.values()), max(until.values()), owner_field)
    stale = stale_from(ws, rows, now) if ws.mapping.stale_after_days else ()
    waiting = waiting_in(ws, store, now).overdue
    due = _due_today(ws, store, now)
    public_url = ws.cfg.serve.public_url

    def who(key: str) -> DigestCustomer:
        return people.who(key, public_url)

    owner_of = people.owner.get

    sections = {o: _Sections() for o in since}
    for a, logged in events:
        key = a.customer_key or ""
        whose = owner_of(key)
        if whose is None or whose not in sections or not since[whose] < logged <= until[whose]:
            continue
        found = _event(a, who(key), whose, owner_field)
        if found is not None:
            getattr(sections[whose], found[0]).append(found[1])
    for m in waiting:
        if (o := owner_address(m.owner)) is not None and o in sections:
            sections[o].waiting.append(m)
    for c in stale:
        if (o := owner_address(c.owner)) is not None and o in sections:
            sections[o].stale.append(c)
    seen: set[tuple[str, str, str]] = set()
    for key, campaign, step, status, at in due:  # a busy morning's tens of thousands: only the shown ones are made
        if (o := owner_of(key)) is not None and o in sections and (key, campaign, step) not in seen:
            seen.add((key, campaign, step))
            if len(sections[o].due) < MAX_ITEMS:
                sections[o].due.append(DueFollowUp(who(key), campaign, step, status, parse_iso(at)))
            else:
                sections[o].left_out["due"] = sections[o].left_out.get("due", 0) + 1
    return sections


@dataclass(slots=True)
class _Sections:
    """One owner's items while they are sorted out (made into a frozen :class:`Digest` at the end)."""

    waiting: list[WaitingMail] = field(default_factory=list)
    replies: list[DigestEvent] = field(default_factory=list)
    stale: list[CustomerContact] = field(default_factory=list)
    bounces: list[DigestEvent] = field(default_factory=list)
    unsubscribes: list[DigestEvent] = field(default_factory=list)
    due: list[DueFollowUp] = field(default_factory=list)
    assigned: list[DigestEvent] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # items counted past MAX_ITEMS but not made

    def more(self) -> dict[str, int]:
        """Per section, how many items :data:`MAX_ITEMS` leaves out."""
        out = {name: len(items) - MAX_ITEMS for name in _SECTIONS if len(items := getattr(self, name)) > MAX_ITEMS}
        for name, n in self.left_out.items():
            out[name] = out.get(name, 0) + n
        return out


_SECTIONS = ("waiting", "replies", "stale", "bounces", "unsubscribes", "due", "assigned")


def _cut(items: list[T]) -> tuple[T, ...]:
    return tuple(items[:MAX_ITEMS])


def _event(a: Activity, who: DigestCustomer, owner: str, owner_field: str | None) -> tuple[str, DigestEvent] | None:
    """The section and item an activity makes in its owner's digest (None: none)."""
    if a.kind is Kind.EMAIL_IN:
        return "replies", DigestEvent(who, a.occurred_at, a.subject, _excerpt(a.body))
    if a.kind is Kind.UNSUBSCRIBE:
        return "unsubscribes", DigestEvent(who, a.occurred_at, a.subject, "")
    if a.kind is Kind.BOUNCE:
        d = a.details
        if isinstance(d, BounceDetails) and d.permanence is Permanence.DELAYED:
            return None  # a delay is no news: the message may still arrive
        evidence = d.evidence if isinstance(d, BounceDetails) and d.evidence else ""
        return "bounces", DigestEvent(who, a.occurred_at, a.subject, evidence)
    if a.kind is Kind.CUSTOMER_ADDED:
        return "assigned", DigestEvent(who, a.occurred_at, None, "")
    if a.kind is Kind.FIELD_CHANGED and isinstance(d := a.details, FieldChangedDetails) and d.field == owner_field:
        if owner_address(d.new) != owner:
            return None  # given to someone else since; their digest says it
        return "assigned", DigestEvent(who, a.occurred_at, None, str(d.old or ""))
    return None


def digest_for(ws: Workspace, owner: str, now: datetime) -> Digest:
    """One owner's digest ``now`` (events since their last digest that was sent), read-only.

    An owner with no customers, or whose address is refused, gets an empty
    digest (``check`` and ``report`` name a refused one).
    """
    o = owner_address(owner) or ""
    with reading(ws) as store:
        book = digests_in(ws, store, now, {o: now})
    found = book.digests.get(o)
    if found is not None:
        return found
    return Digest(o, now.astimezone(ws.cfg.timezone).date(), now, now, now, (), (), (), (), (), (), (), {}, {},
                  ws.cfg.timezone)


def digest_source(ws: Workspace) -> DigestSource:
    """The send pass's way to read digests (:mod:`crm_automation.send.digests`): owner -> digest, or why not."""
    def read(store: Store, now: datetime, owners: Mapping[str, datetime] | None) -> Mapping[str, DigestContent | str]:
        book = digests_in(ws, store, now, owners)
        out: dict[str, DigestContent | str] = dict(book.digests)
        for p in book.problems:
            out[p.owner] = f"the owner's address {p.problem}"
        return out

    return read


__all__ = ["Digest", "DigestBook", "DigestCustomer", "DigestEvent", "DueFollowUp", "OwnerProblem", "digest_for",
           "digest_source", "digests_in", "owner_problems", "owner_problems_in", "owners_of"]
