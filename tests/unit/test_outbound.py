"""The send pass's pure rules, and its one waiting seam (issue #10): pacing tested without real waits."""

from __future__ import annotations

import time
from collections import deque
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from crm_automation.send.dispatch import RETRY_MAX, in_window, pace_wait, retry_at
from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import make_workspace

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
SH = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize(("window", "local", "inside"), [
    (None, "03:00", True),
    ("09:00-18:00", "09:00", True),
    ("09:00-18:00", "17:59", True),
    ("09:00-18:00", "18:00", False),
    ("09:00-18:00", "08:59", False),
    ("22:00-06:00", "23:30", True),   # wraps midnight
    ("22:00-06:00", "05:59", True),
    ("22:00-06:00", "06:00", False),
    ("22:00-06:00", "12:00", False),
])
def test_in_window_is_local_time_and_may_wrap_midnight(window, local, inside):
    h, m = map(int, local.split(":"))
    now = datetime(2026, 11, 27, h, m, tzinfo=SH).astimezone(UTC)
    assert in_window(now, window, SH) is inside


def test_pace_wait_counts_the_last_minute_and_drops_older_hand_overs():
    recent = deque([T0 - timedelta(seconds=70), T0 - timedelta(seconds=50), T0 - timedelta(seconds=10)])
    assert pace_wait(recent, 3, T0) == 0.0  # the 70 s old one no longer counts
    assert list(recent) == [T0 - timedelta(seconds=50), T0 - timedelta(seconds=10)]
    assert pace_wait(recent, 2, T0) == pytest.approx(10.0)  # the 50 s old one leaves the window in 10 s
    assert pace_wait(recent, 0, T0) == 0.0  # 0 = no limit


def test_retry_at_doubles_and_is_capped_even_after_many_attempts():
    assert retry_at(T0, 0) == T0 + timedelta(minutes=5)
    assert retry_at(T0, 1) == T0 + timedelta(minutes=10)
    assert retry_at(T0, 3) == T0 + timedelta(minutes=40)
    assert retry_at(T0, 7) == T0 + RETRY_MAX
    assert retry_at(T0, 60) == T0 + RETRY_MAX  # 2**60 x 5 min would overflow a timedelta


class FakeClock(Clock):
    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.t = start

    def now(self) -> datetime:
        return self.t


def test_pacing_waits_through_the_seam_not_the_wall_clock(tmp_path):
    cfg = make_workspace(tmp_path / "ws", campaigns='[[campaign]]\nid = "hello"\ntemplate = "hello"\n'
                                                     'trigger = "new"\ninclude_existing = true\n')
    cfg.write_text(cfg.read_text().replace("max_per_minute = 0", "max_per_minute = 2"), encoding="utf-8")
    clock = FakeClock(T0)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock.t += timedelta(seconds=seconds)
        return False  # not asked to stop

    w = Worker(Workspace.load(cfg), clock=clock, wait=wait)
    started = time.monotonic()
    try:
        w.sync()
        res = w.send()
    finally:
        w.close()
    assert res.stats["sent"] == 3
    assert time.monotonic() - started < 10  # a real minute was never waited
    assert sum(waits) == pytest.approx(60.0, abs=0.1)  # the third waited for the first to leave the minute
    assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 3


def test_a_stop_during_the_wait_ends_the_pass_and_keeps_the_rest_queued(tmp_path):
    cfg = make_workspace(tmp_path / "ws", campaigns='[[campaign]]\nid = "hello"\ntemplate = "hello"\n'
                                                     'trigger = "new"\ninclude_existing = true\n')
    cfg.write_text(cfg.read_text().replace("max_per_minute = 0", "max_per_minute = 2"), encoding="utf-8")
    w = Worker(Workspace.load(cfg), clock=FakeClock(T0), wait=lambda seconds: True)  # asked to stop at once
    try:
        w.sync()
        res = w.send()
    finally:
        w.close()
    assert res.stats["sent"] == 2 and res.stats["waiting"] == 1
