"""The owner digest's pure rules (issue #21): the day a pass plans, a first window's start, refused owners."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from crm_automation.owner_digest import (
    digest_day,
    first_window_start,
    owner_address,
    owner_problem,
    owner_problems,
)

SH = ZoneInfo("Asia/Shanghai")
WORKDAYS = frozenset(range(5))
AT = 8 * 60 + 30


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


@pytest.mark.parametrize(("now", "day"), [
    ("2026-11-02T08:29", None),  # Monday before 08:30
    ("2026-11-02T08:30", date(2026, 11, 2)),  # at it
    ("2026-11-02T23:59", date(2026, 11, 2)),  # a worker back late the same day still sends that day's
    ("2026-11-07T09:00", None),  # Saturday
    ("2026-11-08T09:00", None),  # Sunday
])
def test_the_day_a_pass_plans(now, day):
    assert digest_day(local(now), SH, WORKDAYS, AT) == day


def test_the_day_is_the_workspace_s_not_utc_s():
    # 2026-11-02 00:40 UTC is Monday 08:40 in Shanghai (Sunday in UTC)
    assert digest_day(datetime.fromisoformat("2026-11-02T00:40+00:00"), SH, WORKDAYS, AT) == date(2026, 11, 2)


def test_a_first_digest_covers_the_time_since_the_previous_workday_s_digest():
    assert first_window_start(date(2026, 11, 2), SH, WORKDAYS, AT) == local("2026-10-30T08:30")  # Mon: from Fri
    assert first_window_start(date(2026, 11, 4), SH, WORKDAYS, AT) == local("2026-11-03T08:30")
    assert first_window_start(date(2026, 11, 4), SH, frozenset({2}), AT) == local("2026-10-28T08:30")  # weekly


def test_refused_owners():
    assert owner_address("  Bob@Example.COM ") == "bob@example.com" and owner_address(" ") is None
    assert owner_problem("bob@example.com", set()) is None
    assert owner_problem("bob@example.com", {"bob@example.com"}) == "is on the suppression list"
    assert (owner_problem("bob", set()) or "").startswith("is not an address")
    found = owner_problems([("c1", "Bob"), ("c2", "bob"), ("c3", "ann@example.com"), ("c4", None),
                            ("c5", "ANN@example.com")], {"ann@example.com"})
    assert [(p.owner, p.customers) for p in found] == [("ann@example.com", ("c3", "c5")), ("bob", ("c1", "c2"))]
    assert found[1].line.startswith("owner 'bob' is not an address") and found[1].line.endswith(": c1, c2")
