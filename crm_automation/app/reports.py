"""Reading the log: the funnel, what needs attention, one customer's timeline, the worker's health (issue #18).

Every function here only reads: the log is opened read-only and without the
workspace lock (:func:`~crm_automation.app.access.reading`), so these work
beside a running worker and never create a log that does not exist yet (a
missing log reads as an empty one). ``report`` is what ``crm-automation
report`` shows; the others are the pieces the web app (issue #19) shows on
their own pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, JsonValue, json_value, utc_text
from crm_automation.errors import ConfigError
from crm_automation.models import FieldChangedDetails, Kind, SendStatus
from crm_automation.owner_digest import OwnerProblem, owner_problems

if TYPE_CHECKING:
    from crm_automation.store.activities import Activity
    from crm_automation.store.repo import Store
    from crm_automation.store.reports import DayCounts, FunnelRow, QuarantineRow, QueueDepth, ReplyRow, RunRow
    from crm_automation.workspace import Workspace

ATTENTION_STATUSES = (SendStatus.UNCERTAIN, SendStatus.FAILED)  # sends only an admin can move on (`requeue`)
REPLY_DAYS = 7  # "recent" replies: logged within this many days
LIST_LIMIT = 50  # quarantined messages and recent replies shown at most
CHART_DAYS = 30  # the dashboard's charts: this many days, today included
MAX_CHART_DAYS = 366  # one query per kind and day: a year at most
_EXCERPT_LINES = 6  # lines of a reply's text a timeline shows


@dataclass(frozen=True, slots=True)
class Funnel:
    """Per campaign and step: sends by status, and who bounced, replied or unsubscribed after the send."""

    rows: tuple[FunnelRow, ...]

    def to_json(self) -> list[JsonObject]:
        """``report --json``'s ``campaigns``: one object per step, fields in the CSV's order."""
        return [dict(r.to_dict()) for r in self.rows]


@dataclass(frozen=True, slots=True)
class SendProblem:
    """A send that is ``uncertain`` or ``failed``: it goes out again only when the admin requeues it."""

    id: int
    campaign: str
    step: int
    customer: str
    status: SendStatus
    error: str | None
    message_id: str | None

    def to_json(self) -> JsonObject:
        """``report --json``'s ``attention`` items."""
        return {"id": self.id, "campaign": self.campaign, "step": self.step, "customer": self.customer,
                "status": self.status.value, "error": self.error, "message_id": self.message_id}


@dataclass(frozen=True, slots=True)
class Attention:
    """What a person should look at: sends to decide on, messages not understood, replies to answer.

    ``quarantine`` is the newest quarantined messages (``quarantined`` is
    how many there are in all); ``replies`` are those logged since ``since``.
    """

    sends: tuple[SendProblem, ...]
    quarantine: tuple[QuarantineRow, ...]
    quarantined: int
    replies: tuple[ReplyRow, ...]
    since: datetime

    def to_json(self) -> JsonObject:
        """The lists by name; times in the log's format."""
        return {
            "sends": [s.to_json() for s in self.sends],
            "quarantine": {"total": self.quarantined, "newest": [
                {"id": q.id, "source": q.source, "received_at": utc_text(q.received_at), "error": q.error,
                 "from": q.from_addr, "customer": q.customer_key, "size": q.size} for q in self.quarantine]},
            "replies": {"since": utc_text(self.since), "items": [
                {"id": r.id, "customer": r.customer_key, "logged_at": utc_text(r.logged_at), "subject": r.subject,
                 "body": r.body, "campaign": r.campaign, "step": r.step} for r in self.replies]},
        }


@dataclass(frozen=True, slots=True)
class Health:
    """Is the worker doing its job: each stage's last run (and last good one), the queue, the quarantine."""

    at: datetime
    runs: tuple[RunRow, ...]
    queue: QueueDepth
    quarantined: int

    def to_json(self) -> JsonObject:
        """``report --json``'s ``health``: stages by job name, the queue by state."""
        stages: dict[str, JsonValue] = {
            r.job: {"started_at": utc_text(r.started_at), "finished_at": utc_text(r.finished_at), "ok": r.ok,
                    "error": r.error, "last_ok_at": utc_text(r.last_ok_at), "stats": json_value(r.stats)}
            for r in self.runs}
        q = self.queue
        return {"at": utc_text(self.at), "stages": stages,
                "queue": {"queued": q.queued, "due": q.due, "waiting": q.queued - q.due, "sending": q.sending,
                          "uncertain": q.uncertain, "failed": q.failed},
                "quarantined": self.quarantined}


@dataclass(frozen=True, slots=True)
class Report:
    """``crm-automation report``: the funnel, the sends that need a decision, and the worker's health."""

    funnel: Funnel
    attention: tuple[SendProblem, ...]
    health: Health
    owners: tuple[OwnerProblem, ...] = ()  # owners never mailed a digest (issue #21), with their customers

    def to_json(self) -> JsonObject:
        """``report --json``: ``campaigns`` and ``attention`` as before issue #18, ``health``; ``owner_problems``."""
        return {"campaigns": self.funnel.to_json(), "attention": [a.to_json() for a in self.attention],
                "health": self.health.to_json(), "owner_problems": [o.to_json() for o in self.owners]}


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One activity as a person reads it: a ``headline`` (the subject, or what changed) and the reply's start."""

    activity: Activity
    headline: str
    excerpt: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Timeline:
    """One customer's activities, oldest first, under the key the log knows them by."""

    customer: str
    entries: tuple[TimelineEntry, ...]

    def to_json(self) -> JsonObject:
        """``timeline --json``: the customer's key and each activity as the log holds it."""
        return {"customer": self.customer, "activities": [json_value(e.activity.to_dict()) for e in self.entries]}


@dataclass(frozen=True, slots=True)
class Day:
    """One local day of the charts: messages sent, and the replies, bounces, unsubscribes and clicks logged."""

    day: date
    counts: DayCounts

    def to_json(self) -> JsonObject:
        """The day (workspace time zone), when it starts (UTC), and the counts."""
        c = self.counts
        return {"date": self.day.isoformat(), "start": utc_text(c.start), "sent": c.sent, "replied": c.replied,
                "bounced": c.bounced, "unsubscribed": c.unsubscribed, "clicked": c.clicked}


@dataclass(frozen=True, slots=True)
class Daily:
    """The dashboard's charts (issue #19): per day of the workspace's time zone, oldest first, today last.

    ``campaign`` None: every campaign. With a campaign, its messages, and
    the events logged against it or, for a reply matched only by its sender,
    from a customer it had mailed before (as the funnel counts a reply after
    a step's send). Bounces leave delay warnings out; replies are from known
    customers; clicks are ``click`` activities (tracked links).
    """

    campaign: str | None
    timezone: str
    days: tuple[Day, ...]

    def to_json(self) -> JsonObject:
        """The series as plain JSON: one object per day."""
        return {"campaign": self.campaign, "timezone": self.timezone, "days": [d.to_json() for d in self.days]}


def _send_problems(store: Store) -> tuple[SendProblem, ...]:
    # One status at a time: each is a seek on its partial index, where both at once read every send (issue #19).
    rows = sorted((s for st in ATTENTION_STATUSES for s in store.sends(status=(st,))), key=lambda s: s.id)
    return tuple(SendProblem(s.id, s.campaign, s.step, s.customer_key, s.status, s.error, s.message_id) for s in rows)


def _health(store: Store, now: datetime) -> Health:
    return Health(now, tuple(store.last_runs()), store.queue_depth(now), store.quarantine_count())


def funnel(ws: Workspace) -> Funnel:
    """Per campaign and step: queued, sent, failed, uncertain, skipped; bounced, replied, unsubscribed after."""
    with reading(ws) as store:
        return Funnel(tuple(store.funnel()))


def attention(ws: Workspace, now: datetime, *, reply_days: int = REPLY_DAYS, limit: int = LIST_LIMIT) -> Attention:
    """Uncertain and failed sends (all), the newest quarantined messages, replies of the last ``reply_days``."""
    since = now - timedelta(days=reply_days)
    with reading(ws) as store:
        return Attention(_send_problems(store), tuple(store.quarantined(limit)), store.quarantine_count(),
                         tuple(store.replies_since(since, limit)), since)


def health(ws: Workspace, now: datetime) -> Health:
    """Each stage's last run and last good run, sends by state (how many are due ``now``), quarantined messages."""
    with reading(ws) as store:
        return _health(store, now)


def report(ws: Workspace, now: datetime) -> Report:
    """The funnel, the uncertain and failed sends, and the health, read in one go."""
    with reading(ws) as store:
        owner = ws.mapping.roles.owner
        owners = owner_problems(((c.key, c.data.get(owner)) for c in store.customers().values()),
                                set(store.suppressions())) if ws.cfg.digest is not None and owner else ()
        return Report(Funnel(tuple(store.funnel())), _send_problems(store), _health(store, now), owners)


def daily(ws: Workspace, now: datetime, days: int = CHART_DAYS, campaign: str | None = None) -> Daily:
    """Sent, replied, bounced, unsubscribed and clicked per local day, the last ``days`` days up to ``now``'s.

    Days are the workspace's (``[workspace] timezone``): the team reads
    "Monday" as its own Monday, not UTC's. Read-only, like every report.
    """
    if not 1 <= days <= MAX_CHART_DAYS:
        raise ConfigError(f"daily chart: {days} days is out of range (expected 1 to {MAX_CHART_DAYS})")
    tz = ws.cfg.timezone
    today = now.astimezone(tz).date()
    dates = [today - timedelta(days=days - 1 - i) for i in range(days + 1)]
    bounds = [datetime.combine(d, time.min, tzinfo=tz) for d in dates]
    with reading(ws) as store:
        counts = store.daily(bounds, campaign)
    return Daily(campaign, str(tz), tuple(Day(d, c) for d, c in zip(dates, counts, strict=False)))


def _shown(value: object) -> str:
    """A stage value as the sheet shows it; an empty cell as ``(empty)``."""
    return "(empty)" if value is None or value == "" else str(value)


def _entry(a: Activity, stage_field: str | None = None) -> TimelineEntry:
    headline = a.subject or ""
    if isinstance(d := a.details, FieldChangedDetails):
        if stage_field is not None and d.field == stage_field:
            # issue #21: a move in the pipeline reads as one ("stage: 意向 -> 报价"), whatever the field is called
            label = "stage" if d.field == "stage" else f"stage ({d.field})"
            headline = f"{label}: {_shown(d.old)} -> {_shown(d.new)}"
        else:
            headline = f"{d.field}: {d.old!r} -> {d.new!r}"
    if a.campaign:
        headline = f"[{a.campaign}/{a.step}] {headline}"
    excerpt: tuple[str, ...] = ()
    if a.body and a.kind in {Kind.EMAIL_IN, Kind.UNSUBSCRIBE}:
        excerpt = tuple(a.body.strip().splitlines()[:_EXCERPT_LINES])
    return TimelineEntry(a, headline, excerpt)


def timeline(ws: Workspace, key: str) -> Timeline:
    """One customer's activities, oldest first; ``key`` as typed, or lower-cased when that is how it is logged.

    Raises ConfigError when the log knows neither the customer nor any
    activity under ``key`` (exit 2: the key is the user's mistake).
    """
    with reading(ws) as store:
        return timeline_in(store, key, stage_field=ws.mapping.roles.stage)


def timeline_in(store: Store, key: str, *, stage_field: str | None = None) -> Timeline:
    """:func:`timeline` on a log already open (for a use case that reads more in the same go).

    ``stage_field``: the mapping's stage role; its changes read "stage: old -> new" (issue #21).
    """
    typed = key.strip()
    k = typed.lower() if store.customer(typed.lower()) else typed
    items = store.timeline(k)
    known = store.customer(k) is not None
    if not items and not known:
        raise ConfigError(f"customer {key!r} is not in the log", hint="keys are the mapping's key field")
    return Timeline(k, tuple(_entry(a, stage_field) for a in items))
