"""A whole workspace on each backend (issue #20): ``[workspace] database`` a SQLite path or a PostgreSQL URL.

The worker's passes through the real CLI - sync from a CSV, fetch from a
Maildir, send to the outbox, then a second run that finds nothing new - give
the same log on both engines; ``check`` names the engine and the schema
version; several workers join a PostgreSQL workspace (stage 2), and a
killed worker's session lock is free at once.
"""

from __future__ import annotations

import email
import time
import uuid
from email.utils import parseaddr
from pathlib import Path

import psycopg
import pytest

from crm_automation.app.access import WorkspaceLock
from crm_automation.store.migrations import SCHEMA_VERSION
from crm_automation.store.repo import Store
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import PASSWORD_ROLE, TEMPLATE

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
REPLY = (b"From: Customer 0 <C0@Example.com>\r\nTo: sales@example.com\r\nSubject: Re: hello\r\n"
         b"Message-ID: <reply-1@example.com>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nYes please.\r\n")


def workspace_on(tmp_path: Path, database: str, extra: str = "") -> Path:
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    text = cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"{extra}')
    cfg.write_text(text, encoding="utf-8")
    return cfg


@pytest.fixture
def database(log_location: str, tmp_path: Path) -> str:
    """``[workspace] database``: a relative SQLite path (resolved against the config's folder), or the URL."""
    return "var/crm.sqlite" if not log_location.startswith("postgresql://") else log_location


def test_sync_fetch_and_send_give_the_same_log_on_each_backend(tmp_path, cli, database):
    cfg = workspace_on(tmp_path, database)
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(REPLY)
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.err
    outbox = sorted((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))
    assert len(outbox) == 3  # three customers, one message each
    assert {parseaddr(email.message_from_bytes(p.read_bytes())["To"])[1] for p in outbox} == {
        f"c{i}@example.com" for i in range(3)}
    store = Store.open(database if database.startswith("postgresql://") else tmp_path / "ws" / database)
    try:
        assert store.dialect.name == ("postgresql" if database.startswith("postgresql://") else "sqlite")
        assert sorted(store.customers()) == [f"c{i}@example.com" for i in range(3)]
        assert store.sent_count() == 3
        assert [(a.kind.value, a.customer_key) for a in store.timeline("c0@example.com")
                if a.kind.value == "email_in"] == [("email_in", "c0@example.com")]
    finally:
        store.close()
    # a second pass: nothing new to send, the reply is not logged twice, nothing sent twice
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:05")
    assert r.code == 0, r.err
    assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 3
    store = Store.open(database if database.startswith("postgresql://") else tmp_path / "ws" / database)
    try:
        assert store.sent_count() == 3
        assert sum(a.kind.value == "email_in" for a in store.timeline("c0@example.com")) == 1
    finally:
        store.close()


def test_check_names_the_backend_and_the_schema_version(tmp_path, cli, database):
    cfg = workspace_on(tmp_path, database)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out
    engine = "PostgreSQL " + database if database.startswith("postgresql://") else "SQLite crm.sqlite"
    assert f"{engine}: this workspace's log, schema version {SCHEMA_VERSION}, 3 message(s) sent" in r.out


def test_before_the_first_run_check_and_a_dry_run_write_nothing_to_the_server(tmp_path, cli, pg_database):
    cfg = workspace_on(tmp_path, pg_database)
    r = cli("check", "--config", str(cfg))
    assert r.code == 0, r.out
    assert f"PostgreSQL {pg_database}: this workspace's log, not created yet (the first run creates it)" in r.out
    r = cli("send", "--dry-run", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.err
    with psycopg.connect(pg_database) as conn:  # read-only: not even the migrations' table was made
        assert conn.execute("SELECT to_regclass('_migrations')").fetchone() == (None,)


def test_several_workers_join_a_postgresql_workspace_and_make_no_file(tmp_path, pg_log):
    ws = Workspace.load(workspace_on(tmp_path, pg_log))
    with WorkspaceLock(ws) as first, WorkspaceLock(ws) as second:  # issue #20, stage 2: no longer exclusive
        assert first.fleet.worker_id != second.fleet.worker_id
    assert not (tmp_path / "ws" / "var").exists()  # no lock file, no SQLite file made from the URL


def test_a_killed_workers_session_lets_its_worker_lock_go_at_once(tmp_path, pg_log, postgres):
    ws = Workspace.load(workspace_on(tmp_path, pg_log))
    held = WorkspaceLock(ws).__enter__()
    member = held.fleet.member
    assert member is not None
    pid = member._session().raw.info.backend_pid
    store = Store.open(pg_log)
    try:
        assert store.unlocked_workers([held.fleet.worker_id]) == set()
        with psycopg.connect(postgres.url(), autocommit=True) as admin:  # what a SIGKILLed worker's session becomes
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5  # pg_terminate_backend only signals the backend: it ends a moment later
        while store.unlocked_workers([held.fleet.worker_id]) != {held.fleet.worker_id}:  # no stale lock
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        store.close()
        held.__exit__(None, None, None)


def test_the_password_comes_from_the_variable_database_password_env_names(tmp_path, cli, pg_log, monkeypatch):
    cfg = workspace_on(tmp_path, pg_log, '\ndatabase_password_env = "CRM_TEST_DB_PASSWORD"')
    monkeypatch.delenv("CRM_TEST_DB_PASSWORD", raising=False)
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2
    assert "workspace.database_password_env names $CRM_TEST_DB_PASSWORD, which is not set" in r.err
    monkeypatch.setenv("CRM_TEST_DB_PASSWORD", "Tr0ub4dor-not-for-logs")  # the test cluster trusts loopback
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.err
    assert "Tr0ub4dor" not in r.out + r.err


def test_database_password_env_with_a_sqlite_file_is_refused(tmp_path, cli):
    cfg = workspace_on(tmp_path, "var/crm.sqlite", '\ndatabase_password_env = "CRM_TEST_DB_PASSWORD"')
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "workspace.database_password_env is for a PostgreSQL database" in r.out + r.err


def test_a_server_that_asks_for_a_password_gets_it_from_database_password_env(tmp_path, cli, postgres, monkeypatch):
    """A role that must give a password (scram-sha-256): wrong -> exit 3, never shown; right -> the run goes on."""
    secret, wrong = "S3cret-only-in-the-environment", "Wr0ng-guess-not-for-logs"
    name = f"t_pw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,)).fetchone() is None:
            admin.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{secret}'".encode())
        admin.execute(f'CREATE DATABASE "{name}" OWNER {PASSWORD_ROLE} TEMPLATE "{TEMPLATE}"'.encode())
    try:
        url = f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres.port}/{name}"
        cfg = workspace_on(tmp_path, url, '\ndatabase_password_env = "CRM_TEST_DB_PASSWORD"')
        for var in ("PGPASSWORD", "PGPASSFILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))  # not the machine's ~/.pgpass
        monkeypatch.setenv("CRM_TEST_DB_PASSWORD", wrong)
        r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
        assert r.code == 3, r.out + r.err
        assert "cannot connect to the PostgreSQL server" in r.err
        assert wrong not in r.out + r.err and secret not in r.out + r.err
        monkeypatch.setenv("CRM_TEST_DB_PASSWORD", secret)
        r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
        assert r.code == 0, r.err
        assert secret not in r.out + r.err
        assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 3
    finally:
        postgres.drop_database(name)
