"""``KeptWriter``: serve's one write connection, kept open between writes (issue #19), following the file."""

from __future__ import annotations

import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from crm_automation.app import suppressions
from crm_automation.app.access import KeptWriter
from crm_automation.app.suppressions import Outcome
from crm_automation.errors import LockedError
from crm_automation.store import connection
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
T1 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path, cli) -> Workspace:
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
            for i in range(6)]
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, rows=rows)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    return Workspace.load(cfg)


def _tokens(ws: Workspace) -> dict[str, str]:
    return {k: token_of(m) for k, m in db_rows(ws.cfg.database, "SELECT customer_key, message_id FROM sends")}


def _suppressed(db) -> list[str]:
    return [e for (e,) in db_rows(db, "SELECT email FROM suppressions ORDER BY email")]


def test_writes_from_several_threads_share_one_kept_connection(ws):
    t = _tokens(ws)
    kept = KeptWriter(ws)
    try:
        with ThreadPoolExecutor(4) as pool:  # as serve's threadpool runs them: any thread, one at a time
            results = list(pool.map(lambda k: suppressions.unsubscribe_by_tokens(ws, [t[k]], T1, kept=kept)[0],
                                    sorted(t)))
        assert [r.outcome for r in results] == [Outcome.UNSUBSCRIBED] * 6
        with kept.store() as first:
            pass
        with kept.store() as second:
            pass
        assert first is second  # kept open between writes
    finally:
        kept.close()
    assert _suppressed(ws.cfg.database) == sorted(t)


def _remove_log(db) -> None:
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def test_a_log_replaced_underneath_is_followed_by_the_next_write(ws, tmp_path):
    t = _tokens(ws)
    db = ws.cfg.database
    backup = tmp_path / "backup.sqlite"
    with sqlite3.connect(db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    kept = KeptWriter(ws)
    try:
        suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept)
        assert _suppressed(db) == ["c0@example.com"]
        _remove_log(db)  # the admin restores yesterday's backup while serve runs
        shutil.copy(backup, db)
        (r,) = suppressions.unsubscribe_by_tokens(ws, [t["c1@example.com"]], T1, kept=kept)
        assert r.outcome is Outcome.UNSUBSCRIBED
    finally:
        kept.close()
    assert _suppressed(db) == ["c1@example.com"]  # written into the file the path names now


def test_a_deleted_log_is_not_written_into(ws):
    t = _tokens(ws)
    db = ws.cfg.database
    kept = KeptWriter(ws)
    try:
        suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept)
        _remove_log(db)
        (r,) = suppressions.unsubscribe_by_tokens(ws, [t["c1@example.com"]], T1, kept=kept)
    finally:
        kept.close()
    assert r.outcome is Outcome.UNKNOWN_TOKEN  # a new, empty log knows no send
    assert _suppressed(db) == []


def test_after_a_busy_log_the_next_write_goes_through(ws, monkeypatch):
    t = _tokens(ws)
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.2)
    kept = KeptWriter(ws)
    holder = sqlite3.connect(ws.cfg.database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(LockedError, match="nothing was changed"):
            suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept)
        holder.execute("COMMIT")
        (r,) = suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept)
        assert r.outcome is Outcome.UNSUBSCRIBED
    finally:
        holder.close()
        kept.close()
    assert _suppressed(ws.cfg.database) == ["c0@example.com"]


def test_warming_opens_an_existing_log_and_leaves_a_missing_or_unreachable_one_for_later(tmp_path, ws, caplog):
    kept = KeptWriter(ws)
    kept.warm()
    assert kept.is_open
    kept.close()
    fresh = make_workspace(tmp_path / "fresh")  # no run yet: no log file, and warming must not create one
    empty = KeptWriter(Workspace.load(fresh))
    empty.warm()
    assert not empty.is_open and not (fresh.parent / "var" / "crm.sqlite").exists()
    down = make_workspace(tmp_path / "down")  # a PostgreSQL server that does not answer (nothing listens on port 1)
    down.write_text(down.read_text(encoding="utf-8").replace(
        'database = "var/crm.sqlite"', 'database = "postgresql://crm@127.0.0.1:1/crm?connect_timeout=2"'),
        encoding="utf-8")
    unreachable = KeptWriter(Workspace.load(down))
    unreachable.warm()  # serve still starts; the first write tries again and answers for itself
    assert not unreachable.is_open
    assert "127.0.0.1" in caplog.text and "crm@" in caplog.text
