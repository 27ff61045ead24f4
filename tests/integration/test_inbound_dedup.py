"""Inbound dedup rests on the unique index and ``ON CONFLICT``, not on one writer at a time (issue #20, rule 6).

Two (or three) connections apply the same fetched batch — as two workers
fetching one folder would — on each engine. SQLite's ``BEGIN IMMEDIATE``
serialises them; PostgreSQL's READ COMMITTED does not: the second worker
reads the digests before the first commits, and only its insert (which waits
for that commit, then does nothing) can say the message is logged already.
Each message must be logged once, counted new by one worker, its owner told
once, its quarantine row kept once.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from datetime import UTC, datetime

import psycopg
import pytest

from crm_automation.effects import soft_bounce_score
from crm_automation.models import (
    ActivityRecord,
    BounceDetails,
    BounceFailure,
    Classification,
    Customer,
    Decision,
    Effect,
    EmailStatus,
    InboundDetails,
    Kind,
    Permanence,
    QuarantineRecord,
    Reading,
    ReplyOutDetails,
    SuppressionReason,
)
from crm_automation.store.repo import SendKind, Store

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
N = 48  # messages in the batch: 12 of each shape below
OWNER = "owner@x.com"


def _customers(store: Store) -> None:
    store.apply_sync("s.csv", [Customer(f"c{i}@x.com", i + 2, {"owner": OWNER}) for i in range(6)], {}, {}, T0)


def _decision(i: int, worker: str) -> Decision:
    """Message ``i`` as worker ``worker`` decides it: the owner's note gets that worker's own Message-ID."""
    shape = i % 4
    mid = f"<m{i}@mail.x>"
    cust = f"c{i % 6}@x.com"
    if shape == 3:  # unreadable: quarantined whole
        return Decision("INBOX", 9, i + 1, None, label="quarantined",
                        quarantine=QuarantineRecord(f"imap/INBOX uid {i + 1}", f"raw {i}".encode(), "unreadable",
                                                    cust, cust, None))
    kind = (Kind.EMAIL_IN, Kind.UNSUBSCRIBE, Kind.REPLY_OUT)[shape]
    msg = Reading(mid, cust, "", (), f"Re: {i}", None, None, (), "ok", Classification(kind, ""), f"d{i}")
    if kind is Kind.REPLY_OUT:
        rec = ActivityRecord(kind=kind, customer_key=cust, message=msg, occurred_at=T0, source="imap/Sent",
                             details=ReplyOutDetails((cust,), ()), digest=f"d{i}")
        return Decision("Sent", 9, i + 1, None, activities=(rec,), label=kind.value)
    effects = ((Effect(cust, SuppressionReason.UNSUBSCRIBED, EmailStatus.UNSUBSCRIBED), cust),) \
        if kind is Kind.UNSUBSCRIBE else ()
    notify = (OWNER, f"<note-{worker}-{i}@x>") if kind is Kind.EMAIL_IN else None
    rec = ActivityRecord(kind=kind, customer_key=cust, message=msg, occurred_at=T0, source="imap/INBOX",
                         details=InboundDetails(cust, (), "", "address"), digest=f"d{i}", effects=effects,
                         notify_owner=notify)
    return Decision("INBOX", 9, i + 1, None, activities=(rec,), label=kind.value)


def _batch(worker: str) -> list[Decision]:
    return [_decision(i, worker) for i in range(N)]


def _logged_once(store: Store) -> None:
    """Every message's record is in the log exactly once; one owner's note per customer email."""
    rows = store.conn.execute("SELECT message_id, COUNT(*) FROM activities WHERE message_id IS NOT NULL "
                              "GROUP BY message_id").fetchall()
    assert {m: c for m, c in rows if c != 1} == {}
    assert len(rows) == N * 3 // 4
    assert store.conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == N // 4
    notes = [s for s in store.sends() if s.kind is SendKind.OWNER_NOTIFICATION]
    assert len(notes) == N // 4, [(n.step_id, n.message_id) for n in notes]
    forwarded = {store.activity(int(n.step_id or 0)).message_id for n in notes}
    assert forwarded == {f"<m{i}@mail.x>" for i in range(0, N, 4)}
    assert store.suppressions().keys() == {f"c{i % 6}@x.com" for i in range(1, N, 4)}


def _blocked(url: str, pid: int, timeout: float = 20) -> None:
    """Wait until the session ``pid`` waits for a lock (its insert met our uncommitted row)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as watch:
        while time.monotonic() < deadline:
            if watch.execute("SELECT COUNT(*) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,)).fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the second worker never waited for the first one's rows")


def test_a_batch_applied_by_two_workers_interleaved_is_logged_once_and_the_owner_told_once(log_location):
    """The second worker reads the digests before the first commits; the first commits while it inserts.

    On PostgreSQL the second worker's insert waits for the first worker's
    uncommitted rows and then inserts nothing: it must count nothing new and
    queue no owner's note (before issue #20's fix it counted every message and
    queued a second note for each). On SQLite it waits at ``BEGIN IMMEDIATE``.
    """
    first = Store.open(log_location)
    _customers(first)
    got: dict[str, object] = {}
    opened = threading.Event()

    def apply_second() -> None:  # its own connection, opened in its thread (sqlite3's rule)
        second = Store.open(log_location)
        try:
            got["pid"] = second.conn.raw.info.backend_pid if second.dialect.name == "postgresql" else None
            opened.set()
            got["second"] = second.apply_inbound_many(_batch("second"), T0)
        except BaseException as e:  # noqa: BLE001 - the test reports what the thread met
            got["second"] = e
        finally:
            opened.set()
            second.close()

    thread = threading.Thread(target=apply_second)
    try:
        with first.transaction():  # the first worker's batch, not committed yet
            got["first"] = first.apply_inbound_many(_batch("first"), T0)
            thread.start()
            assert opened.wait(30)
            if first.dialect.name == "postgresql":
                _blocked(log_location, int(str(got["pid"])))
            else:
                time.sleep(0.3)
            assert thread.is_alive()
        thread.join(60)
        assert not thread.is_alive()
        assert got["first"] == [True] * N
        assert got["second"] == [False] * N
        _logged_once(first)
    finally:
        first.close()


def test_three_workers_applying_the_same_fetch_at_once_log_each_message_once(log_location):
    """Three threads, each with its own connection, apply the same messages in batches of 8, from one start."""
    with closing(Store.open(log_location)) as store:
        _customers(store)
    start = threading.Barrier(3)
    news: list[list[bool]] = [[] for _ in range(3)]
    errors: list[BaseException] = []

    def fetch(w: int) -> None:
        try:
            with closing(Store.open(log_location)) as store:
                batch = _batch(f"w{w}")
                start.wait(30)
                for i in range(0, N, 8):
                    news[w] += store.apply_inbound_many(batch[i:i + 8], T0)
        except BaseException as e:  # noqa: BLE001 - the test reports what the thread met
            errors.append(e)

    threads = [threading.Thread(target=fetch, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    # Each message counted new by exactly one worker, whichever won.
    assert [sum(n[i] for n in news) for i in range(N)] == [1] * N
    with closing(Store.open(log_location)) as store:
        _logged_once(store)


def test_a_message_another_worker_logged_is_a_duplicate_for_this_one(log_location):
    """Committed before this worker read: its digests say so and nothing is counted twice (both engines)."""
    first, second = Store.open(log_location), Store.open(log_location)
    try:
        _customers(first)
        assert first.apply_inbound_many(_batch("first"), T0) == [True] * N
        assert second.apply_inbound_many(_batch("second"), T0) == [False] * N
        _logged_once(second)
    finally:
        first.close()
        second.close()


def test_a_batch_the_server_rolls_back_for_a_deadlock_is_applied_again(pg_log):
    """Two workers insert the same two messages in opposite orders (one fetched from two folders at once).

    Another session holds message 1 and then waits for message 2, which the
    worker's batch holds while it waits for message 1: PostgreSQL rolls the
    worker's batch back (its deadlock check runs first). The batch is applied
    again, waits for the other session's commit and logs nothing twice;
    before, the fetch stopped with "the server did not answer".
    """
    insert = ("INSERT INTO activities (kind, occurred_at, message_id, digest, logged_at) "
              "VALUES ('email_in', '2026-12-07T02:00:00Z', %s, %s, '2026-12-07T02:00:00Z')")
    got: dict[str, object] = {}
    ready = threading.Event()

    def worker() -> None:
        store = Store.open(pg_log)
        try:
            store.conn.raw.execute("SET deadlock_timeout = '2s'")
            got["pid"] = store.conn.raw.info.backend_pid
            ready.set()
            # customer replies 12, then 4 (each with its owner's note): the other session holds 4, and will want 12
            got["new"] = store.apply_inbound_many([_decision(12, "w"), _decision(4, "w")], T0)
        except BaseException as e:  # noqa: BLE001 - the test reports what the thread met
            got["new"] = e
        finally:
            ready.set()
            store.close()

    with psycopg.connect(pg_log) as other:
        other.execute("SET deadlock_timeout = '60s'")  # the worker's check finds the cycle first
        other.execute(insert, ("<m4@mail.x>", "d4"))
        thread = threading.Thread(target=worker)
        thread.start()
        assert ready.wait(30)
        _blocked(pg_log, int(str(got["pid"])))
        other.execute(insert, ("<m12@mail.x>", "d12"))  # waits for the worker, until the server rolls it back
        other.commit()
    thread.join(60)
    assert got["new"] == [False, False]
    with closing(Store.open(pg_log)) as store:
        assert store.conn.execute("SELECT message_id, COUNT(*) FROM activities GROUP BY message_id "
                                  "ORDER BY message_id").fetchall() == [("<m12@mail.x>", 1), ("<m4@mail.x>", 1)]
        assert store.sends() == []  # the other session logged both: no note is the worker's to queue


def _soft_bounce(n: int) -> Decision:
    """A delivery delay for c1@x.com, its score's limit 2 soft bounces (issue #11)."""
    mid = f"<b{n}@mx.x>"
    cls = Classification(Kind.BOUNCE, "DSN", (BounceFailure("c1@x.com", Permanence.SOFT, "4.2.2"),))
    msg = Reading(mid, "mailer-daemon@mx.x", "", (), "Delayed", None, None, (), "", cls, f"b{n}")
    rec = ActivityRecord(
        kind=Kind.BOUNCE, customer_key="c1@x.com", message=msg, occurred_at=T0, source="imap/INBOX",
        details=BounceDetails(msg.from_addr, (), "DSN", "failed recipient c1@x.com", "c1@x.com", Permanence.SOFT,
                              "4.2.2", False, ("c1@x.com",), None, n),
        digest=f"b{n}:c1@x.com", scored=soft_bounce_score(cls.failures[0], limit=2, days=30, message_id=mid))
    return Decision("INBOX", 9, n, None, activities=(rec,), label="bounce")


def test_two_workers_logging_an_addresss_soft_bounces_at_once_both_count(log_location):
    """Each worker logs one soft bounce of c1@x.com, the limit being two: the second to count sees both.

    On PostgreSQL the second worker's count waited for nothing and saw only
    its own bounce (the first's was not committed), and the first's only its
    own: two soft bounces logged, the address never suppressed. Now the count
    waits for the address's lock, held by the first worker until its commit.
    """
    first = Store.open(log_location)
    _customers(first)
    got: dict[str, object] = {}
    opened = threading.Event()

    def apply_second() -> None:
        second = Store.open(log_location)
        try:
            got["pid"] = second.conn.raw.info.backend_pid if second.dialect.name == "postgresql" else None
            opened.set()
            got["second"] = second.apply_inbound_many([_soft_bounce(2)], T0)
        except BaseException as e:  # noqa: BLE001 - the test reports what the thread met
            got["second"] = e
        finally:
            opened.set()
            second.close()

    thread = threading.Thread(target=apply_second)
    try:
        with first.transaction():
            assert first.apply_inbound_many([_soft_bounce(1)], T0) == [True]
            thread.start()
            assert opened.wait(30)
            if first.dialect.name == "postgresql":
                _blocked(log_location, int(str(got["pid"])), timeout=10)
            else:
                time.sleep(0.3)
        thread.join(60)
        assert got["second"] == [True]
        assert first.suppressions()["c1@x.com"].reason is SuppressionReason.SOFT_BOUNCES
        assert first.customer("c1@x.com").email_status is EmailStatus.BOUNCED
    finally:
        first.close()
