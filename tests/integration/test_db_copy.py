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
from datetime import UTC, datetime, timedelta
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


def test_every_table_and_row_arrives_as_it_was_and_the_switched_workspace_sends_nothing_twice(
        sqlite_ws, cli, pg_database):
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
    raw = _pg_rows(pg_database, "quarantine", ["raw"])
    assert raw == [(NOT_MAIL,)]
    assert len(_sqlite_rows(db, "send_links")) > 0 and len(_sqlite_rows(db, "suppressions")) == 2

    pg_cfg = _config(folder, pg_database, "config-pg.toml")
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
