"""``crm-automation db copy --to postgresql://...`` (issue #20, item 4) against a real server and a real log.

The SQLite log is made by the real worker (``run --once`` through the CLI):
customers from a CSV sheet, a campaign with a follow-up and tracked links
sent to the outbox, a customer's reply, an unsubscribe, a message that goes
to quarantine, a manual suppression, and a click on a tracked link. It is
copied into a fresh PostgreSQL database of the throwaway cluster
(tests/fixtures/postgres.py); the workspace is then switched over by its
config (``[workspace] database`` = the URL), as the README tells an admin.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from email import message_from_bytes
from email.utils import parseaddr
from pathlib import Path

import psycopg
import pytest

from crm_automation.app.access import WorkspaceLock
from crm_automation.app.tracking import TrackOutcome, record_click
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import REPO, make_workspace

pytestmark = pytest.mark.integration

T0 = "2026-11-27T10:00"
CAMPAIGN = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'track_clicks = true\nfollow_up = [{ after_days = 3, template = "again" }]\n')
TEMPLATES = {"hello.txt": "Subject: Hello {{ customer.name }}\n\nOffer: https://example.com/offer?a=1\n",
             "again.txt": "Subject: Again {{ customer.name }}\n\nStill there, {{ customer.name }}?\n"}
SERVE = '[serve]\npublic_url = "https://crm.example.com"\n'
REPLY = (b"From: Customer 0 <C0@Example.com>\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\n"
         b"Message-ID: <reply-1@example.com>\r\nDate: Fri, 27 Nov 2026 11:00:00 +0800\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n\r\n\xe5\xa5\xbd\xe7\x9a\x84, yes please.\r\n")
UNSUB = (b"From: c1@example.com\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\n"
         b"Message-ID: <unsub-1@example.com>\r\nDate: Fri, 27 Nov 2026 11:05:00 +0800\r\n\r\nunsubscribe\r\n")
NOT_MAIL = b"\x00\x01 this is not an email at all\r\n\xff\xfe binary tail\r\n"
ROWS = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
        for i in range(5)]


def _config(folder: Path, database: str, name: str) -> Path:
    """A second config in the same workspace folder, on another log (what the admin edits at the switch)."""
    text = (folder / "config.toml").read_text(encoding="utf-8")
    cfg = folder / name
    cfg.write_text(text.replace('database = "var/crm.sqlite"', f'database = "{database}"'), encoding="utf-8")
    return cfg


@pytest.fixture
def sqlite_ws(tmp_path: Path, cli) -> Path:
    """A workspace whose SQLite log the real worker wrote: sends, replies, quarantine, suppressions, a click."""
    cfg = make_workspace(tmp_path / "ws", rows=ROWS, campaigns=CAMPAIGN, templates=TEMPLATES, extra_config=SERVE)
    assert cli("run", "--once", "--config", str(cfg), "--now", T0).code == 0
    inbox = tmp_path / "ws" / "inbox" / "new"
    for n, raw in enumerate((REPLY, UNSUB, NOT_MAIL)):
        (inbox / f"17000000{n}.M{n}P1.host").write_bytes(raw)
    assert cli("suppress", "add", "blocked@example.com", "--config", str(cfg)).code == 0
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T12:00").code in (0, 1)
    ws = Workspace.load(cfg)
    first = sorted((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))[2]
    token = token_of(str(message_from_bytes(first.read_bytes())["Message-ID"]))
    assert record_click(ws, token, 0, datetime(2026, 11, 27, 6, 0, tzinfo=UTC)).outcome is TrackOutcome.RECORDED
    return cfg


def _tables(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _sqlite_rows(db: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        cols = [r[1] for r in c.execute(f"PRAGMA table_info({table})")]
        extra = "rowid, " if table == "customers" else ""
        return sorted(c.execute(f"SELECT {extra}{', '.join(cols)} FROM {table}").fetchall(), key=repr)


def _pg_rows(url: str, table: str, cols: list[str]) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as c:
        return sorted(c.execute(f"SELECT {', '.join(cols)} FROM {table}".encode()).fetchall(), key=repr)


def _columns(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as c:
        cols = [r[1] for r in c.execute(f"PRAGMA table_info({table})")]
    return ["seq", *cols] if table == "customers" else cols


def _recipients(outbox: Path) -> list[tuple[str, str]]:
    msgs = [message_from_bytes(p.read_bytes()) for p in sorted(outbox.glob("*.eml"))]
    return sorted((parseaddr(m["To"])[1], str(m["Subject"])) for m in msgs)


def _indexes(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as c:
        return c.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                         "ORDER BY indexname").fetchall()


def test_every_table_and_row_arrives_as_it_was_and_the_switched_workspace_sends_nothing_twice(
        sqlite_ws, cli, pg_database, pg_log):
    folder, db = sqlite_ws.parent, sqlite_ws.parent / "var" / "crm.sqlite"
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws), "--json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["outcome"] == "copied"
    tables = {t["table"]: t for t in out["tables"]}
    assert set(tables) == set(_tables(db)) >= {"customers", "activities", "sends", "quarantine", "suppressions",
                                               "send_links", "meta", "_migrations", "workers", "plan_due"}
    for name in tables:  # byte for byte: BLOB -> BYTEA, JSON text as written, customers.seq = SQLite's rowid
        mine = _sqlite_rows(db, name)
        assert tables[name]["rows"] == tables[name]["copied"] == len(mine)
        theirs = _pg_rows(pg_database, name, _columns(db, name))
        if name == "meta":  # beside SQLite's rows: the workspace marker and the copy's stamp
            theirs = [r for r in theirs if r[0] not in ("workspace_marker", "copied_from")]
        assert theirs == mine, name
    assert _indexes(pg_database) == _indexes(pg_log)  # every index built again, as the migrations made them
    raw = _pg_rows(pg_database, "quarantine", ["raw"])
    assert raw == [(NOT_MAIL,)]
    assert len(_sqlite_rows(db, "send_links")) > 0 and len(_sqlite_rows(db, "suppressions")) == 2

    pg_cfg = _config(folder, pg_database, "config-pg.toml")
    r = cli("check", "--config", str(pg_cfg))
    assert r.code == 0, r.out + r.err
    assert f"PostgreSQL {pg_database}: this workspace's log, schema version" in r.out and "5 message(s) sent" in r.out
    for args in (("report", "--json"), ("timeline", "c0@example.com", "--json"),
                 ("timeline", "c2@example.com", "--json"), ("suppress", "list", "--json")):
        a, b = cli(*args, "--config", str(sqlite_ws)), cli(*args, "--config", str(pg_cfg))
        assert a.code == b.code == 0, (args, a.err, b.err)
        assert json.loads(a.out) == json.loads(b.out), args

    outbox = folder / "var" / "outbox"
    before = _recipients(outbox)
    assert len(before) == 5
    r = cli("run", "--once", "--config", str(pg_cfg), "--now", "2026-11-27T13:00")
    assert r.code in (0, 1), r.err
    assert _recipients(outbox) == before  # nothing already sent goes out again from the PostgreSQL log
    r = cli("send", "--config", str(pg_cfg), "--now", "2026-12-01T10:00")  # the follow-ups are due
    assert r.code == 0, r.err
    after = _recipients(outbox)
    assert len(after) == len(set(after))  # no message twice
    again = {to for to, subject in after if subject.startswith("Again")}
    assert again == {"c0@example.com", "c2@example.com", "c3@example.com", "c4@example.com"} - {"c0@example.com"}


def _stamp_and_counts(url: str) -> tuple[str, dict[str, int]]:
    with psycopg.connect(url) as c:
        stamp = c.execute("SELECT value || xmin::text FROM meta WHERE key = 'copied_from'").fetchone()
        counts = {t: c.execute(f"SELECT COUNT(*) FROM {t}".encode()).fetchone()[0]
                  for t in ("customers", "activities", "sends", "runs", "meta")}
    return (stamp[0] if stamp else ""), counts


def test_a_second_copy_copies_nothing_and_says_so(sqlite_ws, cli, pg_database):
    assert cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws)).code == 0
    before = _stamp_and_counts(pg_database)
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 0, r.err
    assert "nothing new to copy" in r.out
    assert _stamp_and_counts(pg_database) == before  # not even rewritten: the stamp's row is the first copy's
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws), "--json", "--dry-run")
    assert json.loads(r.out)["outcome"] == "up_to_date" and json.loads(r.out)["copied"] == 0


def test_a_log_that_moved_on_before_the_switch_is_copied_again_whole(sqlite_ws, cli, pg_database):
    assert cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws)).code == 0
    assert cli("suppress", "add", "late@example.com", "--config", str(sqlite_ws)).code == 0  # the SQLite log changed
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outcome"] == "copied_again"
    assert ("late@example.com",) in _pg_rows(pg_database, "suppressions", ["email"])
    db = sqlite_ws.parent / "var" / "crm.sqlite"
    for name in ("sends", "activities", "suppressions"):
        assert _pg_rows(pg_database, name, _columns(db, name)) == _sqlite_rows(db, name)


def test_a_postgresql_log_written_since_the_copy_is_never_copied_over(sqlite_ws, cli, pg_database):
    assert cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws)).code == 0
    pg_cfg = _config(sqlite_ws.parent, pg_database, "config-pg.toml")
    assert cli("run", "--once", "--config", str(pg_cfg), "--now", "2026-11-27T13:00").code in (0, 1)
    before = _stamp_and_counts(pg_database)
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 2
    assert "has been written since the copy" in r.err and "runs" in r.err
    assert _stamp_and_counts(pg_database) == before


def test_a_database_holding_another_workspaces_log_is_refused_by_name(sqlite_ws, cli, pg_database, tmp_path):
    other = make_workspace(tmp_path / "other", database=pg_database)
    assert cli("run", "--once", "--config", str(other), "--now", T0).code == 0
    with psycopg.connect(pg_database) as c:
        other_id = c.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
    before = _stamp_and_counts(pg_database)
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 2
    assert f"already holds another activity log (log id {other_id}" in r.err
    assert pg_database in r.err and "Traceback" not in r.err
    assert _stamp_and_counts(pg_database) == before


def test_another_workspaces_marker_alone_is_refused(sqlite_ws, cli, pg_log):
    with psycopg.connect(pg_log) as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('workspace_marker', %s)",
                  (json.dumps({"log_id": "0" * 32, "database": "x", "sent": 3}),))
    r = cli("db", "copy", "--to", pg_log, "--config", str(sqlite_ws))
    assert r.code == 2
    assert "already holds another activity log" in r.err
    assert _pg_rows(pg_log, "customers", ["key"]) == []


def test_a_workspace_already_on_postgresql_is_not_a_source(tmp_path, cli, pg_log, pg_database):
    cfg = make_workspace(tmp_path / "ws", database=pg_log)
    r = cli("db", "copy", "--to", pg_database, "--config", str(cfg))
    assert r.code == 2
    assert "already on PostgreSQL" in r.err
    with psycopg.connect(pg_database) as c:
        assert c.execute("SELECT to_regclass('_migrations')").fetchone() == (None,)


def test_a_running_worker_is_told_to_stop_first(sqlite_ws, cli, pg_database):
    with WorkspaceLock(Workspace.load(sqlite_ws)):  # what every run, sync, fetch and send holds
        r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 2
    assert "another crm-automation worker is running on this workspace" in r.err
    assert "stop the worker first" in r.err
    with psycopg.connect(pg_database) as c:
        assert c.execute("SELECT to_regclass('_migrations')").fetchone() == (None,)


def test_a_worker_running_on_the_target_is_refused_too(sqlite_ws, cli, pg_log, tmp_path):
    on_pg = Workspace.load(make_workspace(tmp_path / "pg", database=pg_log))
    with WorkspaceLock(on_pg):
        r = cli("db", "copy", "--to", pg_log, "--config", str(sqlite_ws))
    assert r.code == 2
    assert "a crm-automation worker is running on this PostgreSQL log" in r.err and "stop the worker first" in r.err


@pytest.mark.parametrize("url", ["postgresql://crm:s3cret-pw@127.0.0.1:1/crm",
                                 "postgresql://crm@127.0.0.1:1/crm?password=s3cret-pw"])
def test_a_password_in_the_url_is_refused_and_never_shown(sqlite_ws, cli, url):
    r = cli("db", "copy", "--to", url, "--config", str(sqlite_ws))
    assert r.code == 2
    assert "a password in the database URL is refused" in r.err
    assert "s3cret-pw" not in r.out + r.err


def test_the_password_comes_from_the_variable_password_env_names(sqlite_ws, cli, postgres, monkeypatch):
    """A role that must give a password (scram-sha-256, tests/fixtures/postgres.py), owning its database."""
    from tests.fixtures.postgres import PASSWORD_ROLE, TEMPLATE

    secret = "S3cret-only-in-the-environment"  # the role's password, as test_workspace_backends.py makes it
    name = f"t_pw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,)).fetchone() is None:
            admin.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{secret}'".encode())
        admin.execute(f'CREATE DATABASE "{name}" OWNER {PASSWORD_ROLE} TEMPLATE "{TEMPLATE}"'.encode())
    try:
        url = f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{postgres.port}/{name}"
        for var in ("PGPASSWORD", "PGPASSFILE"):
            monkeypatch.delenv(var, raising=False)
        args = ("db", "copy", "--to", url, "--password-env", "CRM_TEST_COPY_PW", "--config", str(sqlite_ws))
        r = cli(*args)
        assert r.code == 2 and "$CRM_TEST_COPY_PW, which is not set" in r.err
        monkeypatch.setenv("CRM_TEST_COPY_PW", "Wr0ng-guess-not-for-logs")
        r = cli(*args)
        assert r.code == 3 and "Wr0ng-guess" not in r.out + r.err
        monkeypatch.setenv("CRM_TEST_COPY_PW", secret)
        r = cli(*args)
        assert r.code == 0, r.err
        assert secret not in r.out + r.err
    finally:
        postgres.drop_database(name)


def test_a_dry_run_lists_each_table_and_writes_nothing(sqlite_ws, cli, pg_database):
    r = cli("db", "copy", "--to", pg_database, "--dry-run", "--config", str(sqlite_ws))
    assert r.code == 0, r.err
    assert "would copy" in r.out and "dry run: nothing was written" in r.out
    assert ["sends", "5"] in [line.split() for line in r.out.splitlines()], r.out
    with psycopg.connect(pg_database) as c:
        assert c.execute("SELECT to_regclass('_migrations')").fetchone() == (None,)


def test_a_count_that_differs_after_the_copy_is_an_error_naming_the_table_and_both_counts(
        sqlite_ws, cli, pg_log):
    with psycopg.connect(pg_log) as c:  # a server-side trigger of someone else's that drops rows as they arrive
        c.execute("CREATE FUNCTION drop_odd() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                  "IF NEW.id % 2 = 1 THEN RETURN NULL; END IF; RETURN NEW; END $$")
        c.execute("CREATE TRIGGER drop_odd BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION drop_odd()")
    db = sqlite_ws.parent / "var" / "crm.sqlite"
    n = len(_sqlite_rows(db, "runs"))
    r = cli("db", "copy", "--to", pg_log, "--config", str(sqlite_ws))
    assert r.code == 1
    assert f"runs: {n} row(s) in the SQLite log, {n // 2} in PostgreSQL" in r.err
    assert "nothing was kept" in r.err
    assert _pg_rows(pg_log, "customers", ["key"]) == []  # rolled back whole


def _grow(db: Path, n: int) -> None:
    """Many more activities, so that a copy lasts long enough to be killed in the middle of a table."""
    with sqlite3.connect(db) as c:
        c.executemany("INSERT INTO activities (customer_key, kind, occurred_at, source, details, logged_at) "
                      "VALUES (?, 'field_changed', ?, 'sheet', ?, ?)",
                      ((f"c{i % 5}@example.com", f"2026-11-2{i % 7}T0{i % 10}:00:00Z",
                        json.dumps({"field": "stage", "old": "lead", "new": f"stage {i}", "note": "x" * 200}),
                        "2026-11-27T04:00:00Z") for i in range(n)))


def _counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as c:
        return {t: c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _tables(db)}


def _copy_process(cfg: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "crm_automation", "db", "copy", "--to", url, "--config", str(cfg)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _backend_copying(url: str, table: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE %s "
                        "AND pid <> pg_backend_pid()", (f'COPY "{table}"%',)).fetchone()
    return None if row is None else int(row[0])


def _gone(url: str, pid: int) -> bool:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None


def test_a_copy_killed_in_the_middle_leaves_nothing_and_running_it_again_completes_it(sqlite_ws, cli, pg_database):
    db = sqlite_ws.parent / "var" / "crm.sqlite"
    _grow(db, 200_000)
    proc = _copy_process(sqlite_ws, pg_database)
    deadline = time.monotonic() + 120
    pid = None
    while pid is None and proc.poll() is None and time.monotonic() < deadline:
        pid = _backend_copying(pg_database, "activities")
        time.sleep(0.02)
    assert pid is not None, "the copy finished or failed before it could be killed: grow the log"
    time.sleep(0.3)  # well inside the table's rows
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    while not _gone(pg_database, pid) and time.monotonic() < deadline:  # the server rolls the transaction back
        time.sleep(0.05)
    with psycopg.connect(pg_database) as c:  # migrated (its own transactions), but no row of the log kept
        assert c.execute("SELECT COUNT(*) FROM activities").fetchone() == (0,)
        assert c.execute("SELECT COUNT(*) FROM customers").fetchone() == (0,)
        assert c.execute("SELECT COUNT(*) FROM meta WHERE key IN ('copied_from', 'workspace_marker')").fetchone() \
            == (0,)
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outcome"] == "copied"
    assert {t["table"]: t["copied"] for t in json.loads(r.out)["tables"]} == _counts(db)
    assert _stamp_and_counts(pg_database)[1]["activities"] == _counts(db)["activities"]
    for name in ("customers", "sends", "quarantine", "send_links"):
        assert _pg_rows(pg_database, name, _columns(db, name)) == _sqlite_rows(db, name)
    assert "copy activities:" in r.err  # progress, as log lines off a terminal
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 0 and "nothing new to copy" in r.out


def test_a_row_postgresql_cannot_hold_stops_the_copy_naming_the_table_and_keeps_nothing(sqlite_ws, cli, pg_database):
    db = sqlite_ws.parent / "var" / "crm.sqlite"
    with sqlite3.connect(db) as c:  # SQLite keeps a NUL inside a text; PostgreSQL's TEXT cannot
        c.execute("INSERT INTO activities (customer_key, kind, occurred_at, body) VALUES "
                  "('c3@example.com', 'email_in', '2026-11-27T05:00:00Z', ?)", ("before\x00after",))
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))
    assert r.code == 1
    assert "table activities: a row cannot be written to PostgreSQL" in r.err and "nothing was copied" in r.err
    assert "Traceback" not in r.err
    assert _pg_rows(pg_database, "customers", ["key"]) == []


def test_the_readmes_switch_over_in_place_goes_on_where_the_sqlite_log_stopped(sqlite_ws, cli, pg_database):
    """The README's steps to the letter: copy, edit config.toml itself (its marker file stays), check, run."""
    outbox = sqlite_ws.parent / "var" / "outbox"
    before = _recipients(outbox)
    assert cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws)).code == 0
    text = sqlite_ws.read_text(encoding="utf-8")
    sqlite_ws.write_text(text.replace('database = "var/crm.sqlite"', f'database = "{pg_database}"'), encoding="utf-8")
    r = cli("check", "--config", str(sqlite_ws))
    assert r.code == 0 and "5 message(s) sent" in r.out, r.out + r.err
    r = cli("run", "--once", "--config", str(sqlite_ws), "--now", "2026-11-27T13:00")
    assert r.code in (0, 1), r.err
    assert _recipients(outbox) == before
    r = cli("db", "copy", "--to", pg_database, "--config", str(sqlite_ws))  # the config now names the server
    assert r.code == 2 and "already on PostgreSQL" in r.err
