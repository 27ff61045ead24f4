"""Contact with a customer, staleness, and mail waiting for an answer (issue #21): the rules, on values, once.

No I/O and no clock: the store hands in times, the caller hands in ``now``.

**Last contact** is the latest email between us and the customer: a reply or
enquiry *from* them (``email_in``: never an auto-reply, a bounce or an
unsubscribe, which the classifier sorted out, RFC 3834 / RFC 3464), or an
email *we* sent them: a campaign's step or follow-up (``sends.kind =
campaign_step``), or a reply the team wrote in its own mail program, read
from the mailbox's Sent folder (``reply_out``). Mail the worker sends to
the *owner* about the customer (a forwarded reply, a digest) is not contact
with the customer: the customer never saw it.

**Stale** (Pipedrive's "rotting" deals; the reminders of Chinese CRMs): a
customer whose stage has a limit in ``[stale_after_days]`` and whose last
contact — or, with none, the moment they entered that stage, or were first
seen — is more than that many days ago. Days are calendar days in the
workspace's time zone, so a customer is stale or not for the whole of a
day (a morning digest and an afternoon look at the dashboard agree):
with ``报价 = 7``, a quote last discussed on a Monday is stale from the
Tuesday of the next week.

**Waiting**: a reply or enquiry from the customer is answered by a message
of ours whose ``In-Reply-To``/``References`` names it (RFC 5322 §3.6.4),
or by any later email of ours to that customer; until then it is waiting.
How long it waited counts *working* hours (:class:`WorkingTime`), so mail
that came in on Friday evening has not waited all weekend.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

T = TypeVar("T")


class Direction(enum.StrEnum):
    """Who wrote the last email: the customer (``in``) or we (``out``)."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class Contact:
    """The latest email between us and one customer, and who wrote it."""

    at: datetime
    direction: Direction


def last_contact(inbound: datetime | None, outbound: datetime | None) -> Contact | None:
    """The later of the customer's latest mail to us and ours to them (None: no email either way).

    On a tie the customer's mail wins: it is the one that may need an answer.
    """
    if inbound is not None and (outbound is None or inbound >= outbound):
        return Contact(inbound, Direction.IN)
    return Contact(outbound, Direction.OUT) if outbound is not None else None


class QuietSince(enum.StrEnum):
    """What a customer's quiet days count from: their last contact, else entering their stage, else first seen."""

    CONTACT = "contact"
    STAGE = "stage"
    FIRST_SEEN = "first_seen"


@dataclass(frozen=True, slots=True)
class Quiet:
    """How long a customer has been quiet: since when, counted from what, in days, and their stage's limit.

    ``days`` are whole calendar days in the workspace's zone (0: today);
    ``limit`` is their stage's ``[stale_after_days]`` (None: no limit).
    """

    since: datetime
    by: QuietSince
    days: int
    limit: int | None

    @property
    def stale(self) -> bool:
        """More days quiet than the stage allows (never for a stage without a limit)."""
        return self.limit is not None and self.days > self.limit


def days_between(earlier: datetime, later: datetime, zone: ZoneInfo) -> int:
    """Calendar days from ``earlier`` to ``later`` in ``zone`` (0 on the same local day; never negative)."""
    return max((later.astimezone(zone).date() - earlier.astimezone(zone).date()).days, 0)


def quiet_from(contact_at: T | None, stage_since: T | None, first_seen: T) -> tuple[T, QuietSince]:
    """What quiet days count from (the module's rule): the last contact, else entering the stage, else first seen.

    Generic in the time's type: :func:`quiet` gives it datetimes; a reader
    of 100,000 customers may give it the log's ISO text (which orders as the
    time) to skip the customers :func:`fresh_since` proves not stale.
    """
    if contact_at is not None:
        return contact_at, QuietSince.CONTACT
    if stage_since is not None:
        return stage_since, QuietSince.STAGE
    return first_seen, QuietSince.FIRST_SEEN


def quiet(contact: Contact | None, stage_since: datetime | None, first_seen: datetime, now: datetime,
          zone: ZoneInfo, limit: int | None) -> Quiet:
    """How long the customer has been quiet ``now`` (see the module's rule): ``limit`` is their stage's."""
    since, by = quiet_from(contact.at if contact is not None else None, stage_since, first_seen)
    return Quiet(since, by, days_between(since, now, zone), limit)


def fresh_since(now: datetime, zone: ZoneInfo, limit: int) -> datetime:
    """A time from which on a customer's quiet days surely stay within ``limit``: not stale, whatever else.

    Local midnight of the day ``limit - 1`` days before ``now``'s local
    day. Stale is ``days_between(since, now) > limit``: a ``since`` on or
    after the day ``limit`` days before is not stale, and this bound is a
    day later than that, so a midnight that a DST change skips or repeats
    (some zones change at 00:00) never makes it wrong. Lets a reader skip
    the rule for the customers written to lately; the rest get :func:`quiet`.
    """
    day = now.astimezone(zone).date() - timedelta(days=limit - 1)
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def stage_limit(stage: object, limits: dict[str, int]) -> int | None:
    """The ``[stale_after_days]`` limit of a stage value as the sheet holds it (None: none, or no stage)."""
    if stage is None or stage == "":
        return None
    return limits.get(str(stage).strip())


@functools.lru_cache(maxsize=4096)
def _day_window(zone: ZoneInfo, day: date, start: int, end: int) -> tuple[datetime, datetime]:
    """One day's working window, aware: kept, as the waiting list asks the same days for thousands of mails."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    # Wall-clock arithmetic on an aware datetime: 09:00 local stays 09:00 across a DST change.
    return midnight + timedelta(minutes=start), midnight + timedelta(minutes=end)


@dataclass(frozen=True, slots=True)
class WorkingTime:
    """The team's working time: days of the week and a daily window, in the workspace's zone.

    ``weekdays`` are ``datetime.weekday()`` numbers (Monday 0); ``start`` and
    ``end`` minutes after local midnight (``[digest] working_hours``, default
    09:00-18:00, Monday to Friday). Public holidays are not known: a day off
    on a weekday counts as a working day.
    """

    zone: ZoneInfo
    weekdays: frozenset[int]
    start: int
    end: int

    def _window(self, day: date) -> tuple[datetime, datetime]:
        return _day_window(self.zone, day, self.start, self.end)

    def hours_between(self, a: datetime, b: datetime) -> float:
        """Working hours from ``a`` to ``b`` (0 when ``b`` is not after ``a``).

        Each working day adds its window's overlap with [a, b]. Whole weeks in
        the middle of a long span are counted at once (a week's hours), so a
        message a year old costs a few dozen steps, not 365.
        """
        if b <= a:
            return 0.0
        day, last = a.astimezone(self.zone).date(), b.astimezone(self.zone).date()
        seconds = 0.0
        per_week = len(self.weekdays) * (self.end - self.start) * 60.0
        while day <= last:
            if (last - day).days > 14:
                weeks = ((last - day).days - 7) // 7
                # the first day is counted one by one (its window may start before ``a``); the rest in weeks
                if day > a.astimezone(self.zone).date():
                    seconds += weeks * per_week
                    day += timedelta(days=7 * weeks)
                    continue
            if day.weekday() in self.weekdays:
                w0, w1 = self._window(day)
                lo, hi = max(a, w0), min(b, w1)
                if hi > lo:
                    seconds += (hi - lo).total_seconds()
            day += timedelta(days=1)
        return seconds / 3600.0


def answered(mail_at: datetime, named_by_reply: bool, last_outbound: datetime | None) -> bool:
    """Whether a customer's mail received at ``mail_at`` is answered (see the module's rule).

    ``named_by_reply``: a message of ours names it in ``In-Reply-To`` or
    ``References``; ``last_outbound``: our latest email to that customer.
    """
    return named_by_reply or (last_outbound is not None and last_outbound > mail_at)


@dataclass(frozen=True, slots=True)
class Wait:
    """How long one unanswered mail has waited: working hours, and whether that is past the limit."""

    hours: float
    overdue: bool


def waited(received: datetime, now: datetime, working: WorkingTime, within_hours: float) -> Wait:
    """Working hours since ``received``, and whether more than ``within_hours`` (``answer_within_hours``)."""
    hours = working.hours_between(received, now)
    return Wait(hours, hours > within_hours)
