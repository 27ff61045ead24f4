"""The per-client moving window behind the public endpoints and failed logins (crm_automation/web/limits.py)."""

from __future__ import annotations

import threading

from crm_automation.web import limits
from crm_automation.web.limits import Limit


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_client_gets_its_number_of_hits_in_any_window_then_waits_for_the_oldest_to_age_out():
    clock = Clock()
    limit = Limit("t", 3, window=60, clock=clock)
    for step in (0, 10, 20):
        clock.t = 1000 + step
        assert limit.hit("a")
    clock.t = 1059.9
    assert not limit.hit("a")  # 3 hits within the last 60 s: refused, and the refusal is not counted
    assert not limit.allows("a")
    clock.t = 1060.0  # the first hit (at 1000) is a full window old: one place frees
    assert limit.allows("a")
    assert limit.hit("a")
    assert not limit.hit("a")
    clock.t = 1080.0  # the hits at 1010 and 1020 are out: two places
    assert limit.hit("a") and limit.hit("a") and not limit.hit("a")


def test_clients_are_counted_apart_and_allows_counts_nothing():
    clock = Clock()
    limit = Limit("t", 2, clock=clock)
    assert limit.hit("a") and limit.hit("a") and not limit.hit("a")
    for _ in range(10):
        assert limit.allows("b")  # asking counts nothing, and remembers no client
    assert limit.clients() == 1
    assert limit.hit("b") and limit.hit("b") and not limit.hit("b")


def test_clients_gone_quiet_are_forgotten_so_memory_stays_bounded(monkeypatch):
    monkeypatch.setattr(limits, "SWEEP_EVERY", 100)
    clock = Clock()
    limit = Limit("t", 5, window=60, clock=clock)
    for i in range(99):
        assert limit.hit(f"scanner-{i}")  # 99 addresses, one hit each
    assert limit.clients() == 99
    clock.t += 61  # a minute later: all of them out of the window
    assert limit.hit("late")  # the 100th hit sweeps
    assert limit.clients() == 1


def test_hits_from_several_threads_are_all_counted():
    limit = Limit("t", 10_000)
    threads = [threading.Thread(target=lambda: [limit.hit("a") for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(limit.hit("a") for _ in range(3000)) == 2000  # 8,000 counted before: 2,000 places left


def test_counting_hits_starts_no_thread(monkeypatch):
    """The ``limits`` library's memory storage started a timer thread every 10 ms of traffic; counting starts none."""
    rl = limits.RateLimits()
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for i in range(300):
        rl.public.hit(f"10.0.0.{i % 250}")
        if i % 100 == 0:
            threading.Event().wait(0.03)  # traffic over a while, not in one instant
    assert started == []
