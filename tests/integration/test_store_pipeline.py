"""The send loop's units pipelined (issue #20: one PostgreSQL worker within 1.5x of one SQLite worker).

The commit a message (``mark_sent_and_sending``) and the claim run as
pipelined units: on PostgreSQL the statements travel together, answered
where the unit reads rows and at its end, with no ``BEGIN``/``COMMIT`` (the
pipeline's implicit transaction). These pin what that must not change: a
unit that fails anywhere keeps nothing, on both engines; a session the
server ended between two units is replaced at the next unit; and what it
buys on PostgreSQL: two waits for the server a message instead of six.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg.errors
import pytest
from psycopg import pq

from crm_automation.errors import ServiceError
from crm_automation.models import SendStatus
from crm_automation.store.repo import Store
from crm_automation.store.sends import Claim, Gate, Sent
from tests.unit.test_claims import queue, worker

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
ME = "host-a/1/aaaa"


def _open(log_location: str) -> Store:
    store = Store.open(log_location)
    worker(store, ME)
    return store


def _sent(send_id: int, n: int) -> Sent:
    return Sent(send_id, T0, f"k{n:03d}@x.com", "c", 0, f"<m{n}@x>", "Hello", "Body", "smtp")


def _ok(_suppressed: bool, _status: str | None) -> str | None:
    return None


def _gate(n: int) -> Gate:
    return Gate(f"k{n:03d}@x.com", f"k{n:03d}@x.com", _ok)


def _status(store: Store, send_id: int) -> SendStatus:
    return next(s.status for s in store.sends() if s.id == send_id)


def _email_out(store: Store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM activities WHERE kind = 'email_out'").fetchone()[0])


def test_the_commit_a_message_marks_sends_and_records_the_last_one_sent(log_location):
    store = _open(log_location)
    try:
        ids = queue(store, 3)
        assert [s.id for s in store.claim_sends(ME, T0, 16)] == ids
        assert store.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, ME, _gate(0)) is Claim.SENDING
        assert store.mark_sent_and_sending(_sent(ids[0], 0), ids[1], "<m1@x>", T0, ME, _gate(1)) is Claim.SENDING
        # A new Message-ID (none queued, or another): the mark's second statement sets it.
        assert store.mark_sent_and_sending(_sent(ids[1], 1), ids[2], "<new@x>", T0, ME, _gate(2),
                                           links=["https://example.com/a"]) is Claim.SENDING
        assert [_status(store, i) for i in ids] == [SendStatus.SENT, SendStatus.SENT, SendStatus.SENDING]
        assert next(s.message_id for s in store.sends() if s.id == ids[2]) == "<new@x>"
        assert _email_out(store) == 2
        assert store.conn.execute("SELECT url FROM send_links WHERE send_id = ?", (ids[2],)).fetchall() == [
            ("https://example.com/a",)]
        # Not queued any more: nothing is marked, and its links are left alone; the ``sent`` record still goes.
        assert store.mark_sent_and_sending(_sent(ids[2], 2), ids[2], "<new@x>", T0, ME, _gate(2),
                                           links=["https://example.com/b"]) is Claim.NOT_QUEUED
        assert _status(store, ids[2]) is SendStatus.SENT
        assert store.conn.execute("SELECT url FROM send_links WHERE send_id = ?", (ids[2],)).fetchall() == [
            ("https://example.com/a",)]
    finally:
        store.close()


def test_a_unit_that_fails_in_the_middle_keeps_nothing_and_the_next_one_goes(log_location):
    """A rule that raises after the ``sent`` record was sent: nothing of the unit is committed (no Sync of half)."""
    store = _open(log_location)
    try:
        ids = queue(store, 2)
        store.claim_sends(ME, T0, 16)
        assert store.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, ME, _gate(0)) is Claim.SENDING

        def broken(_suppressed: bool, _status: str | None) -> str | None:
            raise RuntimeError("a bug in the rule")

        with pytest.raises(RuntimeError, match="a bug in the rule"):
            store.mark_sent_and_sending(_sent(ids[0], 0), ids[1], "<m1@x>", T0, ME,
                                        Gate("k001@x.com", "k001@x.com", broken))
        assert _status(store, ids[0]) is SendStatus.SENDING  # its ``sent`` record was not kept
        assert _email_out(store) == 0
        assert _status(store, ids[1]) is SendStatus.QUEUED
        assert store.mark_sent_and_sending(_sent(ids[0], 0), ids[1], "<m1@x>", T0, ME, _gate(1)) is Claim.SENDING
        assert [_status(store, i) for i in ids] == [SendStatus.SENT, SendStatus.SENDING]
        assert _email_out(store) == 1
    finally:
        store.close()


def test_a_statement_the_server_refuses_undoes_the_whole_pipelined_unit(log_location):
    store = Store.open(log_location)

    def unit() -> None:
        with store.transaction(pipelined=True):
            store.conn.execute("INSERT INTO meta (key, value) VALUES ('probe', '1')")
            store.conn.execute("INSERT INTO meta (key, value) VALUES ('other', '1')")
            store.conn.execute("INSERT INTO meta (key, value) VALUES ('probe', '2')")  # the key exists

    try:
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)):
            unit()
        assert store.meta("probe") is None
        assert store.meta("other") is None
        store.set_meta("probe", "3")  # the log is usable at once
        assert store.meta("probe") == "3"
    finally:
        store.close()


def _end_session(url: str, store: Store) -> None:
    """End the store's session from another one, as a server restart does, and wait until it is gone."""
    pid = store.conn.raw.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.01)


def test_a_session_the_server_ended_between_two_messages_is_replaced_at_the_next(pg_log):
    """As a ``BEGIN`` does: the first statement of a pipelined unit cannot find out, so the socket is looked at."""
    store = _open(pg_log)
    try:
        ids = queue(store, 3)
        store.claim_sends(ME, T0, 2)
        assert store.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, ME, _gate(0)) is Claim.SENDING
        _end_session(pg_log, store)
        assert store.mark_sent_and_sending(_sent(ids[0], 0), ids[1], "<m1@x>", T0, ME, _gate(1)) is Claim.SENDING
        _end_session(pg_log, store)
        assert [s.id for s in store.claim_sends(ME, T0, 2, after=ids[1])] == [ids[2]]
        assert [_status(store, i) for i in ids] == [SendStatus.SENT, SendStatus.SENDING, SendStatus.QUEUED]
    finally:
        store.close()


def test_a_session_lost_inside_a_unit_fails_it_whole(pg_log):
    store = _open(pg_log)
    try:
        ids = queue(store, 2)
        store.claim_sends(ME, T0, 2)
        assert store.mark_sent_and_sending(None, ids[0], "<m0@x>", T0, ME, _gate(0)) is Claim.SENDING

        def server_gone(_suppressed: bool, _status: str | None) -> str | None:
            _end_session(pg_log, store)  # after the first answer: the mark would go to a dead session
            return None

        with pytest.raises(ServiceError, match="PostgreSQL server did not answer"):
            store.mark_sent_and_sending(_sent(ids[0], 0), ids[1], "<m1@x>", T0, ME,
                                        Gate("k001@x.com", "k001@x.com", server_gone))
        assert [_status(store, i) for i in ids] == [SendStatus.SENDING, SendStatus.QUEUED]  # nothing of the unit
        assert _email_out(store) == 0
    finally:
        store.close()


def _sent_by_client(trace: Path, kind: str) -> int:
    """How many protocol messages of ``kind`` the client sent (libpq's trace: ``F``, length, type, ...).

    Each ``Sync`` ends a batch and waits for the server's ReadyForQuery; a
    ``Flush`` asks for the answers so far (psycopg sends one to read rows
    inside a pipeline, and at a pipeline's end when answers are still owed,
    which depends on timing): counted as messages, not as observed waits,
    so the count does not depend on how fast the server answers.
    """
    return sum(1 for line in trace.read_text(errors="replace").splitlines()
               if line.startswith("F\t") and line.split("\t")[2].split(" ")[0] == kind)


def test_one_message_costs_two_waits_for_the_server_and_no_begin_or_commit(pg_log, tmp_path):
    """Six statements, six round trips a message before; now the writes travel with the gate's read and the mark.

    Waits: the gate's read (a Flush) and the end of the unit (its one Sync).
    """
    store = _open(pg_log)
    try:
        n = 12
        ids = queue(store, n)
        store.claim_sends(ME, T0, n)
        for i in range(6):  # psycopg prepares a statement at its fifth use: count the steady state
            assert store.mark_sent_and_sending(_sent(ids[i - 1], i - 1) if i else None, ids[i], f"<m{i}@x>", T0, ME,
                                               _gate(i)) is Claim.SENDING
        seen: list[str] = []
        store.conn.trace = seen.append  # type: ignore[attr-defined]
        trace = tmp_path / "libpq.trace"
        raw = store.conn.raw  # type: ignore[attr-defined]
        with trace.open("w") as fh:
            raw.pgconn.trace(fh.fileno())
            raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            for i in range(6, n):
                assert store.mark_sent_and_sending(_sent(ids[i - 1], i - 1), ids[i], f"<m{i}@x>", T0, ME,
                                                   _gate(i)) is Claim.SENDING
            raw.pgconn.untrace()
        messages = n - 6
        assert not {"BEGIN", "COMMIT"} & set(seen)
        assert _sent_by_client(trace, "Sync") == messages  # one batch ends a message (six, one a statement, before)
        assert _sent_by_client(trace, "Flush") <= 2 * messages  # the gate's read (+ the end's, if answers are owed)
    finally:
        store.close()
