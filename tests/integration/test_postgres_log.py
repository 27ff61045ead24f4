"""The log on PostgreSQL (issue #20): the same named migrations, the same tables, clear errors, no password shown.

The behaviour of each part is the contract suite's (tests/unit/test_store.py
and test_store_portable_sql.py run over both engines); here is what is
PostgreSQL's own: the schema it builds, how it is recorded, and what the
admin sees when the server is away or the URL carries a password.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from crm_automation.errors import ConfigError, LogBusyError, ServiceError
from crm_automation.store.migrations import MIGRATIONS, SCHEMA_VERSION
from crm_automation.store.postgres import schema_version
from crm_automation.store.repo import Store
from crm_automation.store.schema_pg import PG_MIGRATIONS
from tests.fixtures.dovecot import free_port

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_every_migration_has_its_postgresql_ddl():
    # A migration added for SQLite only (store/schema.py) fails here, not on a PostgreSQL server later.
    assert list(PG_MIGRATIONS) == [name for name, _ in MIGRATIONS]


def _sqlite_columns(path) -> dict[str, set[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%'")]
        return {t: {r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')} for t in tables}
    finally:
        conn.close()


def _pg_columns(url: str) -> dict[str, set[str]]:
    with psycopg.connect(url) as conn:
        out: dict[str, set[str]] = {}
        for t, c in conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'public'"):
            out.setdefault(t, set()).add(c)
        return out


def test_a_new_database_gets_the_same_tables_and_columns_as_a_new_sqlite_log(pg_database, tmp_path):
    Store.open(tmp_path / "crm.sqlite").close()
    Store.open(pg_database).close()
    pg = _pg_columns(pg_database)
    pg["customers"].discard("seq")  # SQLite's implicit rowid, made explicit (store/schema_pg.py)
    assert pg == _sqlite_columns(tmp_path / "crm.sqlite")


def test_migrations_are_recorded_by_name_once_and_the_version_counts_them(pg_database):
    Store.open(pg_database).close()
    store = Store.open(pg_database)  # nothing left to apply
    try:
        names = [r[0] for r in store.conn.execute("SELECT name FROM _migrations ORDER BY name")]
        assert names == [n for n, _ in MIGRATIONS]
        assert schema_version(store.conn) == SCHEMA_VERSION
        assert store.dialect.name == "postgresql"
        assert len(store.log_id()) == 32
    finally:
        store.close()


def test_a_log_written_by_a_newer_version_is_refused(pg_database):
    Store.open(pg_database).close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("INSERT INTO _migrations VALUES ('0099_from_the_future', 'x')")
    with pytest.raises(ConfigError, match="newer crm-automation.*0099_from_the_future"):
        Store.open(pg_database)


def test_schema_10s_triggers_keep_a_sends_follow_ups_on_postgresql_too(pg_log):
    store = Store.open(pg_log)
    try:
        store.queue_sends([{"campaign": "c", "step": 0, "customer_key": "a@x.com", "status": "sent",
                            "message_id": "<m@x>", "queued_at": "2026-01-01T00:00:00Z", "error": None,
                            "email": "a@x.com"}])
        store.conn.execute("UPDATE sends SET sent_at = '2026-01-01T00:00:00Z'")
        with store.transaction():
            store.conn.execute("INSERT INTO activities (customer_key, kind, occurred_at, logged_at, details) "
                               "VALUES ('a@x.com', 'bounce', ?, ?, ?)",
                               ("2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z", '{"permanent": true}'))
            store.conn.execute("INSERT INTO activities (customer_key, kind, occurred_at, logged_at) "
                               "VALUES ('a@x.com', 'email_in', ?, ?)", ("2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z"))
        assert store.conn.execute("SELECT replied, bounced, unsubscribed FROM sends").fetchone() == (1, 1, 0)
        store.conn.execute("DELETE FROM activities WHERE kind = 'email_in'")
        assert store.conn.execute("SELECT replied, bounced, unsubscribed FROM sends").fetchone() == (0, 1, 0)
    finally:
        store.close()


def test_a_server_that_does_not_answer_is_a_service_error_without_the_password():
    port = free_port()  # nothing listens there
    url = f"postgresql://crm:Tr0ub4dor-secret@127.0.0.1:{port}/crm?connect_timeout=2"
    with pytest.raises(ServiceError) as got:
        Store.open(url)
    assert "cannot connect to the PostgreSQL server" in str(got.value)
    assert "crm:***@127.0.0.1" in str(got.value)
    assert "Tr0ub4dor" not in str(got.value) + str(got.value.hint)


def test_a_server_lost_mid_pass_is_a_service_error_and_the_unit_is_rolled_back(pg_log, postgres):
    store = Store.open(pg_log)
    try:
        store.suppress("kept@x.com", "manual", "test", T0)
        pid = store.conn.raw.info.backend_pid

        def write_while_the_server_goes() -> None:
            with store.transaction():
                store.conn.execute("INSERT INTO suppressions (email, reason, at, source) VALUES ('lost@x.com', "
                                   "'manual', 'x', 'test')")
                with psycopg.connect(postgres.url(), autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                store.conn.execute("SELECT 1")

        with pytest.raises(ServiceError, match="did not answer"):
            write_while_the_server_goes()
    finally:
        store.close()
    again = Store.open(pg_log)
    try:
        assert set(again.suppressions()) == {"kept@x.com"}
    finally:
        again.close()


def test_not_waiting_fails_at_once_on_a_held_row_and_writes_other_rows_beside_it(pg_log, postgres):
    """``not_waiting`` on PostgreSQL (issue #19's serve on the event loop): no whole-log lock, a held row is busy.

    Another session inserts an address and keeps its transaction open: our
    insert of the same address would wait for its outcome. Inside
    ``not_waiting`` it fails at once as LogBusyError and nothing of the unit is
    kept; another address is written beside the open transaction; after it,
    the same write waits for the row as a plain write does.
    """
    store = Store.open(pg_log)
    holder = psycopg.connect(pg_log)  # not autocommit: its INSERT's transaction stays open
    try:
        holder.execute("INSERT INTO suppressions (email, reason, at, source) VALUES ('held@x.com', 'manual', "
                       "'2026-01-01T00:00:00Z', 'other')")

        def first_then_held() -> None:
            with store.transaction():
                store.conn.execute("INSERT INTO suppressions (email, reason, at, source) VALUES ('first@x.com', "
                                   "'manual', '2026-01-01T00:00:00Z', 'test')")
                store.suppress("held@x.com", "manual", "test", T0)

        with store.not_waiting():
            started = time.monotonic()
            with pytest.raises(LogBusyError, match="busy"):
                first_then_held()
            assert time.monotonic() - started < 0.5  # not a wait for the other session
            assert not store.conn.in_transaction
            assert store.suppress("beside@x.com", "manual", "test", T0)  # a row nobody holds: written at once
        assert store.conn.execute("SHOW lock_timeout").fetchone() == ("0",)  # the session waits again
        threading.Timer(0.3, holder.commit).start()
        started = time.monotonic()
        assert not store.suppress("held@x.com", "manual", "test", T0)  # waited for the commit: there already
        assert time.monotonic() - started >= 0.25
        assert set(store.suppressions()) == {"held@x.com", "beside@x.com"}  # "first" rolled back with its unit
    finally:
        holder.close()
        store.close()
