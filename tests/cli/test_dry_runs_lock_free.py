"""Issue #17 item 11: dry runs need no lock: ``send --dry-run`` and ``import --dry-run`` work while a worker holds
the workspace lock, and write nothing (no run record, no campaign first-seen record, no log marker, no log file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from filelock import FileLock

from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


# -- dry runs take no lock and write nothing -----------------------------------------------------------


def _snapshot(ws: Path) -> dict[str, str]:
    """Digest of every file of the workspace but SQLite's shared-memory files (readers create those)."""
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ws.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def test_dry_runs_work_while_a_worker_holds_the_lock_and_write_nothing(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("sync", "--config", str(cfg)).code == 0
    export = tmp_path / "export.csv"
    export.write_text("Email,Name\nnew@example.com,New\n", encoding="utf-8")
    ws = tmp_path / "ws"
    db = ws / "var" / "crm.sqlite"
    before = _snapshot(ws)
    lock = FileLock(str(db) + ".lock")
    lock.acquire(timeout=0)  # a worker is running
    try:
        assert cli("send", "--config", str(cfg)).code == 2  # the lock is really held
        r = cli("send", "--dry-run", "--config", str(cfg), "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["stages"][0]["stats"]["would_send"] == 3
        r = cli("import", str(export), "--dry-run", "--config", str(cfg), "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["add"] == 1
        assert cli("import", str(export), "--config", str(cfg)).code == 2  # a real import still waits
    finally:
        lock.release()
    assert _snapshot(ws) == before  # not the log, not the marker, not the sheet, no .eml
    assert db_rows(db, "SELECT job FROM runs WHERE job LIKE '%dry%'") == []
    assert db_rows(db, "SELECT COUNT(*) FROM campaigns") == [(0,)]


def test_a_dry_run_on_a_new_workspace_creates_nothing(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    r = cli("send", "--dry-run", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    assert not (tmp_path / "ws" / "var").exists()
    assert not list((tmp_path / "ws").glob(".*.log-id.json"))


def test_the_reading_verbs_write_nothing_and_create_no_log(tmp_path, cli):
    """report, timeline, suppress list, preview, check and rekey --dry-run only read (issue #17)."""
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    ws = tmp_path / "ws"
    for verb in (["report"], ["suppress", "list"], ["check"], ["check", "--plan"], ["rekey", "--dry-run"]):
        r = cli(*verb, "--config", str(cfg))
        assert r.code in (0, 1), (verb, r.err)
    assert cli("timeline", "c0@example.com", "--config", str(cfg)).code == 2  # not in a log that does not exist
    assert not (ws / "var").exists() and not list(ws.glob(".*.log-id.json"))
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    before = _snapshot(ws)
    lock = FileLock(str(ws / "var" / "crm.sqlite") + ".lock")
    lock.acquire(timeout=0)  # a worker is running: reading goes on beside it
    try:
        for verb in (["report"], ["suppress", "list"], ["timeline", "c0@example.com"], ["check", "--plan"],
                     ["preview", "hello", "--customer", "c0@example.com"], ["rekey", "--dry-run"]):
            r = cli(*verb, "--config", str(cfg))
            assert r.code == 0, (verb, r.err)
    finally:
        lock.release()
    assert _snapshot(ws) == before
