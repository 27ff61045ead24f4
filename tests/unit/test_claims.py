"""Claims (issue #20, stage 2): several workers on one log, each send handed to one of them; limits counted in the log.

Each test runs on SQLite, then on PostgreSQL (``log_location``), with two
connections standing for two workers; the ``workers`` rows that say who is
alive are inserted here (the fleet's registration writes them in production).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.models import SendStatus
from crm_automation.send.dispatch import rate_block
from crm_automation.store.claims import Rate
from crm_automation.store.connection import iso
from crm_automation.store.repo import Store
from crm_automation.store.sends import Claim

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
A, B = "host-a/1/aaaa", "host-b/2/bbbb"


@pytest.fixture
def two(log_location: str) -> Iterator[tuple[Store, Store]]:
    """Two workers' connections to one log."""
    a = Store.open(log_location)
    b = Store.open(log_location)
    yield a, b
    a.close()
    b.close()


def queue(store: Store, n: int, *, campaign: str = "c") -> list[int]:
    store.queue_sends([{"campaign": campaign, "step": 0, "customer_key": f"k{i:03d}@x.com", "status": "queued",
                        "message_id": f"<m{i}@x>", "queued_at": iso(T0), "error": None, "email": f"k{i:03d}@x.com"}
                       for i in range(n)])
    return [s.id for s in store.sends(campaign=campaign)]


def worker(store: Store, wid: str, *, alive: bool = True) -> None:
    """A ``workers`` row, as fleet's registration writes it (``stopped_at`` set: found dead or stopped)."""
    with store.transaction():
        store.conn.execute("INSERT INTO workers (id, host, pid, started_at, heartbeat_at, stopped_at) "
                           "VALUES (?, 'h', 1, ?, ?, ?)", (wid, iso(T0), iso(T0), None if alive else iso(T0)))


def stop(store: Store, wid: str) -> None:
    with store.transaction():
        store.conn.execute("UPDATE workers SET stopped_at = ? WHERE id = ?", (iso(T0), wid))


def holder(store: Store, sid: int) -> str | None:
    return store.conn.execute("SELECT holder FROM sends WHERE id = ?", (sid,)).fetchone()[0]


def test_two_workers_interleaved_claim_disjoint_sends_and_mark_only_their_own(two):
    a, b = two
    ids = queue(a, 10)
    worker(a, A)
    worker(a, B)
    first_a = a.claim_sends(A, T0, 4)
    first_b = b.claim_sends(B, T0, 4)
    second_a = a.claim_sends(A, T0, 4, after=first_a[-1].id)
    assert [s.id for s in first_a] == ids[:4]
    assert [s.id for s in first_b] == ids[4:8]  # a live worker's claims are passed over
    assert [s.id for s in second_a] == ids[8:]
    assert {s.status for s in first_a + first_b + second_a} == {SendStatus.QUEUED}  # a claim leaves it queued
    assert b.claim_sends(B, T0, 4) == first_b  # its own claims again (an earlier pass of B): nothing new
    # Only the claimer may mark a send ``sending``: B cannot take A's, A can.
    assert not b.mark_sending(ids[0], "<m0@x>", T0, B)
    assert a.mark_sending(ids[0], "<m0@x>", T0, A)
    assert not a.mark_sending(ids[0], "<m0@x>", T0, A)  # once
    row = next(s for s in b.sends() if s.id == ids[0])
    assert row.status is SendStatus.SENDING and holder(b, ids[0]) == A  # the ``sending`` row records its holder
    assert b.mark_sent_and_sending(None, ids[1], "<m1@x>", T0, B) is Claim.NOT_QUEUED
    assert b.mark_sent_and_sending(None, ids[4], "<m4@x>", T0, B) is Claim.SENDING


def test_a_dead_workers_claims_are_claimed_again_a_live_ones_never(two):
    a, b = two
    ids = queue(a, 3)
    worker(a, A)
    worker(a, B)
    assert [s.id for s in a.claim_sends(A, T0, 3)] == ids
    assert b.claim_sends(B, T0, 3) == []  # A is alive: its claims are its own
    assert b.queue_counts(B, T0) == (0, 0)
    stop(a, A)  # A found dead (fleet's reaping) or stopped
    assert b.queue_counts(B, T0) == (3, 0)
    assert [s.id for s in b.claim_sends(B, T0, 3)] == ids
    assert not a.mark_sending(ids[0], "<m0@x>", T0, A)  # a worker thought dead cannot hand over what it lost
    assert b.mark_sending(ids[0], "<m0@x>", T0, B)
    # A holder that never registered (a row from an older process, a SQLite worker before its row) is not alive.
    ids2 = queue(a, 2, campaign="d")
    with a.transaction():
        a.conn.execute("UPDATE sends SET holder = 'gone/9/x' WHERE campaign = 'd'")
    assert [s.id for s in b.claim_sends(B, T0, 5)] == ids[1:] + ids2  # and its own, still queued


def test_a_pass_releases_what_it_claimed_and_did_not_hand_over(two):
    a, b = two
    ids = queue(a, 4)
    worker(a, A)
    worker(a, B)
    a.claim_sends(A, T0, 4)
    assert a.mark_sending(ids[0], "<m0@x>", T0, A)
    assert a.release_claims(A) == 3  # the ``sending`` one stays A's
    assert holder(a, ids[0]) == A
    assert [s.id for s in b.claim_sends(B, T0, 4)] == ids[1:]


def test_claims_skip_held_campaigns_and_sends_not_due(two):
    a, _ = two
    (c0,) = queue(a, 1)
    (h0,) = queue(a, 1, campaign="held")
    (r0,) = queue(a, 1, campaign="retry")
    a.claim_sends(A, T0, 5, held=("c", "held"))  # r0 claimed to mark it, then retried later
    assert a.mark_sending(r0, "<m0@x>", T0, A)
    a.mark_retry(r0, "451 later", T0 + timedelta(minutes=5))
    a.release_claims(A)
    assert a.queue_counts(A, T0, ("held",)) == (1, 1)  # c0 due; h0 held; r0 not due yet
    assert [s.id for s in a.claim_sends(A, T0, 5, held=("held",))] == [c0]
    assert [s.id for s in a.claim_sends(A, T0 + timedelta(minutes=6), 5, held=("held",), after=c0)] == [r0]
    assert h0 not in {s.id for s in a.claim_sends(A, T0, 5, held=("held",))}


def test_recovery_takes_only_sending_rows_of_dead_or_unknown_holders_and_its_own(two):
    a, b = two
    ids = queue(a, 4)
    worker(a, A)
    worker(a, B)
    worker(a, "dead/3/c", alive=False)
    with a.transaction():
        for sid, who in zip(ids, [A, B, "dead/3/c", None], strict=True):
            a.conn.execute("UPDATE sends SET status = 'sending', holder = ? WHERE id = ?", (who, sid))
    assert [s.id for s in b.stuck_sends(B)] == [ids[1], ids[2], ids[3]]  # never A's: A is alive and handing over
    assert [s.id for s in a.stuck_sends(A)] == [ids[0], ids[2], ids[3]]


def _rate(per_minute: int, per_day: int = 0) -> Rate:
    return Rate(None, per_minute, per_day, lambda m, d: rate_block(per_minute, per_day, m, d))


def test_the_last_slot_of_max_per_minute_goes_to_one_worker_only(two):
    a, b = two
    ids = queue(a, 5)
    worker(a, A)
    worker(a, B)
    a.claim_sends(A, T0, 2)
    b.claim_sends(B, T0, 3)
    rate = _rate(2)
    assert a.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, A, rate=rate) is Claim.SENDING
    assert b.mark_sent_and_sending(None, ids[2], "<m2@x>", T0 + timedelta(seconds=1), B, rate=rate) is Claim.SENDING
    # Both workers' hand-overs are counted: A's next is over the limit, and stays queued and claimed.
    assert a.mark_sent_and_sending(None, ids[1], "<m1@x>", T0 + timedelta(seconds=2), A, rate=rate) is Claim.LIMITED
    assert (holder(a, ids[1]), a.sends()[1].status) == (A, SendStatus.QUEUED)
    assert b.recent_hand_overs(None, T0 + timedelta(seconds=2)).minute == [T0, T0 + timedelta(seconds=1)]
    # A minute later the first slot is free again.
    later = T0 + timedelta(seconds=61)
    assert a.mark_sent_and_sending(None, ids[1], "<m1@x>", later, A, rate=rate) is Claim.SENDING
    # The day's limit counts the whole day (sent, sending and uncertain alike).
    day = _rate(0, 3)
    assert b.recent_hand_overs(None, later).day == 3
    assert b.mark_sent_and_sending(None, ids[3], "<m3@x>", later, B, rate=day) is Claim.LIMITED


def test_the_limits_are_counted_per_account(two):
    """``sends.account`` keys the count (NULL: [outbound]'s own); another account's hand-overs are its own."""
    a, _ = two
    ids = queue(a, 3)
    a.claim_sends(A, T0, 3)
    other = Rate("second", 1, 0, lambda m, d: rate_block(1, 0, m, d))
    assert a.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, A, rate=other) is Claim.SENDING
    assert a.conn.execute("SELECT account FROM sends WHERE id = ?", (ids[0],)).fetchone()[0] == "second"
    assert a.mark_sent_and_sending(None, ids[1], "<m1@x>", T0, A, rate=_rate(1)) is Claim.SENDING  # default's first
    assert a.mark_sent_and_sending(None, ids[2], "<m2@x>", T0, A, rate=other) is Claim.LIMITED


@pytest.fixture
def pg_two(pg_log: str) -> Iterator[tuple[Store, Store]]:
    a = Store.open(pg_log)
    b = Store.open(pg_log)
    yield a, b
    a.close()
    b.close()


def test_skip_locked_lets_a_second_claimer_pass_rows_being_claimed_without_waiting(pg_two):
    """PostgreSQL: B claims while A's claim is not committed yet; B takes the next rows at once, never A's."""
    a, b = pg_two
    ids = queue(a, 6)
    got: list[list[int]] = []
    took: list[float] = []

    def claim_b() -> None:
        t = time.monotonic()
        got.append([s.id for s in b.claim_sends(B, T0, 3)])
        took.append(time.monotonic() - t)

    with a.transaction():  # A's claim, not committed while B claims
        assert [s.id for s in a.claim_sends(A, T0, 3)] == ids[:3]
        th = threading.Thread(target=claim_b)
        th.start()
        th.join(timeout=10)
        assert not th.is_alive(), "B waited for A's uncommitted claim"
    assert got == [ids[3:]] and took[0] < 2.0


def test_the_rate_lock_makes_two_workers_count_one_after_the_other(pg_two):
    """PostgreSQL: while A's commit that takes a slot is open, B's count waits for it, then sees it."""
    a, b = pg_two
    ids = queue(a, 2)
    a.claim_sends(A, T0, 1)
    b.claim_sends(B, T0, 1, after=ids[0])
    rate = _rate(1)
    seen: list[Claim] = []
    th = threading.Thread(target=lambda: seen.append(b.mark_sent_and_sending(None, ids[1], "<m1@x>", T0, B,
                                                                             rate=rate)))
    with a.transaction():
        assert a.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, A, rate=rate) is Claim.SENDING
        th.start()
        th.join(timeout=0.5)
        assert th.is_alive()  # B waits on the rate lock instead of counting a slot A is taking
    th.join(timeout=10)
    assert seen == [Claim.LIMITED]
