"""A PostgreSQL session the server ended: the store connects again only where nothing can be half-done (issue #20).

A long-lived worker outlives a server restart (test_pg_goes_away.py); these
pin the rule that makes that safe: a new session is opened only for a
unit's ``BEGIN`` or a read outside any unit, never for a statement in the
middle of a unit whose first part died with the old session (that part was
rolled back by the server, and the rest must not land alone).
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from crm_automation.errors import ServiceError
from crm_automation.store.repo import Store

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _end_sessions(url: str, store: Store) -> None:
    """End the store's session from another one, as a server restart does."""
    pid = store.conn.raw.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _count(url: str, kind: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM activities WHERE kind = %s", (kind,)).fetchone()
        return int(row[0]) if row else 0


def test_a_unit_whose_session_died_fails_whole_and_the_next_unit_gets_a_new_session(pg_log):
    store = Store.open(pg_log)
    try:
        def half_and_half() -> None:
            with store.transaction():
                store.add_activity(kind="note", occurred_at=NOW, now=NOW, subject="first half")
                _end_sessions(pg_log, store)
                store.add_activity(kind="note", occurred_at=NOW, now=NOW, subject="second half")

        with pytest.raises(ServiceError, match="PostgreSQL server did not answer"):
            half_and_half()
        assert _count(pg_log, "note") == 0  # neither half: the second never ran alone on a new session
        with store.transaction():
            store.add_activity(kind="note", occurred_at=NOW, now=NOW, subject="the next unit")
        assert _count(pg_log, "note") == 1
    finally:
        store.close()


def test_a_read_after_the_server_ended_an_idle_session_is_answered(pg_log):
    store = Store.open(pg_log)
    try:
        _end_sessions(pg_log, store)
        assert store.sent_count() == 0  # found closed only now: tried once on a new session
    finally:
        store.close()


def test_a_write_standing_alone_is_never_tried_twice(pg_log):
    """An autocommit write whose answer was lost may have been committed: it fails, it is not repeated."""
    store = Store.open(pg_log)
    try:
        _end_sessions(pg_log, store)
        with pytest.raises(ServiceError):
            store.conn.execute("INSERT INTO meta (key, value) VALUES ('probe', '1')")
        assert store.conn.execute("SELECT COUNT(*) FROM meta WHERE key = 'probe'").fetchone()[0] == 0
    finally:
        store.close()
