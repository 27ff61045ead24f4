"""The contact rules of issue #21 on values: last contact, quiet days and staleness, working hours, answered."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from crm_automation.contact import (
    Contact,
    Direction,
    QuietSince,
    WorkingTime,
    answered,
    days_between,
    last_contact,
    quiet,
    stage_limit,
    waited,
)

SH = ZoneInfo("Asia/Shanghai")
MON_FRI = frozenset(range(5))
WORK = WorkingTime(SH, MON_FRI, 9 * 60, 18 * 60)


def local(text: str, zone: ZoneInfo = SH) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def test_last_contact_is_the_later_mail_either_way_and_a_tie_is_the_customers():
    a, b = local("2026-11-02T10:00"), local("2026-11-03T10:00")
    assert last_contact(None, None) is None
    assert last_contact(a, None) == Contact(a, Direction.IN)
    assert last_contact(None, a) == Contact(a, Direction.OUT)
    assert last_contact(a, b) == Contact(b, Direction.OUT)
    assert last_contact(b, a) == Contact(b, Direction.IN)
    assert last_contact(a, a) == Contact(a, Direction.IN)


def test_a_customer_becomes_stale_on_the_right_local_day():
    """报价 = 7, last contact Monday 2026-11-02 10:00 Shanghai: quiet 7 days next Monday, stale from Tuesday."""
    contact = Contact(local("2026-11-02T10:00"), Direction.OUT)
    seen = local("2026-10-01T10:00")
    assert not quiet(contact, None, seen, local("2026-11-09T23:59"), SH, 7).stale
    assert quiet(contact, None, seen, local("2026-11-09T23:59"), SH, 7).days == 7
    q = quiet(contact, None, seen, local("2026-11-10T00:01"), SH, 7)
    assert (q.stale, q.days, q.by, q.since) == (True, 8, QuietSince.CONTACT, contact.at)
    # the day is the workspace's: 2026-11-09 20:00 UTC is already Tuesday 04:00 in Shanghai
    assert quiet(contact, None, seen, datetime.fromisoformat("2026-11-09T20:00+00:00"), SH, 7).stale


def test_without_contact_quiet_days_count_from_entering_the_stage_else_from_first_seen():
    seen, entered, now = local("2026-10-01T10:00"), local("2026-11-05T10:00"), local("2026-11-10T10:00")
    assert quiet(None, entered, seen, now, SH, 7) == quiet(None, entered, seen, now, SH, 7)
    q = quiet(None, entered, seen, now, SH, 7)
    assert (q.by, q.days, q.stale) == (QuietSince.STAGE, 5, False)
    q = quiet(None, None, seen, now, SH, 7)
    assert (q.by, q.days, q.stale) == (QuietSince.FIRST_SEEN, 40, True)


def test_a_stage_without_a_limit_is_never_stale():
    q = quiet(None, None, local("2020-01-01T00:00"), local("2026-11-10T10:00"), SH, None)
    assert q.days > 2000 and not q.stale
    assert stage_limit(None, {"报价": 7}) is None
    assert stage_limit("", {"报价": 7}) is None
    assert stage_limit(" 报价 ", {"报价": 7}) == 7
    assert stage_limit("意向", {"报价": 7}) is None


def test_days_between_is_never_negative():
    assert days_between(local("2026-11-10T10:00"), local("2026-11-09T10:00"), SH) == 0


def test_working_hours_across_a_weekend():
    """Friday 17:00 to Monday 10:00: one hour on Friday, one on Monday; Saturday and Sunday count nothing."""
    assert WORK.hours_between(local("2026-11-06T17:00"), local("2026-11-09T10:00")) == pytest.approx(2.0)
    # mail that arrived on Saturday has waited one hour at Monday 10:00
    assert WORK.hours_between(local("2026-11-07T12:00"), local("2026-11-09T10:00")) == pytest.approx(1.0)
    # outside the window: Monday 07:00 to 08:30 is no working time
    assert WORK.hours_between(local("2026-11-09T07:00"), local("2026-11-09T08:30")) == 0.0
    assert WORK.hours_between(local("2026-11-09T10:00"), local("2026-11-09T09:00")) == 0.0


def test_a_six_day_week_counts_saturday():
    six = WorkingTime(SH, frozenset(range(6)), 9 * 60, 18 * 60)
    assert six.hours_between(local("2026-11-06T17:00"), local("2026-11-09T10:00")) == pytest.approx(11.0)


def _day_by_day(w: WorkingTime, a: datetime, b: datetime) -> float:
    total, t = 0.0, a
    while t < b:
        nxt = min(t + timedelta(minutes=30), b)
        lt = t.astimezone(w.zone)
        m = lt.hour * 60 + lt.minute
        if lt.weekday() in w.weekdays and w.start <= m < w.end:
            total += (nxt - t).total_seconds()
        t = nxt
    return total / 3600


@pytest.mark.parametrize(("a", "b"), [
    ("2026-01-05T08:00", "2026-03-20T12:30"),  # whole weeks counted at once in the middle
    ("2026-01-10T13:00", "2026-02-28T17:30"),  # starts on a Saturday
    ("2026-01-07T11:00", "2026-01-22T11:00"),  # just over two weeks
])
def test_long_spans_count_the_same_as_day_by_day(a, b):
    assert WORK.hours_between(local(a), local(b)) == pytest.approx(_day_by_day(WORK, local(a), local(b)))


def test_working_hours_follow_local_time_across_a_dst_change():
    """Berlin, 2026-03-29: clocks go forward at 02:00; the window is 09:00-18:00 wall-clock on both days."""
    berlin = ZoneInfo("Europe/Berlin")
    w = WorkingTime(berlin, frozenset(range(7)), 9 * 60, 18 * 60)
    assert w.hours_between(local("2026-03-28T17:00", berlin), local("2026-03-29T10:00", berlin)) == pytest.approx(2.0)


def test_mail_is_answered_by_a_reply_naming_it_or_a_later_email_of_ours():
    got = local("2026-11-09T10:00")
    assert not answered(got, False, None)
    assert not answered(got, False, got - timedelta(hours=1))  # ours was before it: not an answer
    assert not answered(got, False, got)
    assert answered(got, False, got + timedelta(minutes=1))
    assert answered(got, True, None)


def test_waiting_counts_working_hours_against_the_limit():
    w = waited(local("2026-11-06T17:00"), local("2026-11-09T16:00"), WORK, 8)
    assert (w.hours, w.overdue) == (pytest.approx(8.0), False)
    w = waited(local("2026-11-06T17:00"), local("2026-11-09T16:01"), WORK, 8)
    assert w.overdue


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Europe/London", "America/Santiago", "America/Havana"])
def test_fresh_since_never_calls_a_stale_customer_fresh(zone):
    """A quiet start on or after ``fresh_since`` is never stale, and the bound is at most two days early.

    Checked every 20 minutes over a month around DST changes, in zones that
    change at 01:00 (London) and at midnight (Santiago, Havana: midnight
    skipped or repeated), for limits 1, 2, 7 and 30.
    """
    from crm_automation.contact import fresh_since, quiet_from

    z = ZoneInfo(zone)
    for now in (datetime(2026, 3, 30, 10, 0, tzinfo=z), datetime(2026, 4, 6, 0, 30, tzinfo=z),
                datetime(2026, 9, 8, 23, 50, tzinfo=z), datetime(2026, 11, 3, 0, 10, tzinfo=z)):
        for limit in (1, 2, 7, 30):
            fresh = fresh_since(now, z, limit)
            since = now - timedelta(days=limit + 3)
            while since <= now:
                q = quiet(None, None, since, now, z, limit)
                if since >= fresh:
                    assert not q.stale, (zone, now, limit, since)
                elif since < fresh - timedelta(days=2):
                    assert q.stale, (zone, now, limit, since)  # the bound is no more than a day (+ DST) short
                since += timedelta(minutes=20)
    assert quiet_from("2026-01-02T00:00:00Z", "2025-01-01T00:00:00Z", "2024-01-01T00:00:00Z")[1].value == "contact"
    assert quiet_from(None, None, "2024-01-01T00:00:00Z") == ("2024-01-01T00:00:00Z", QuietSince.FIRST_SEEN)
