"""Recovery with several workers (issue #20, rule 4): a live worker's ``sending`` row is never taken.

With the outbox transport, a ``sending`` row whose ``.eml`` is not there yet
is "known never handed over", so recovery requeues it and the pass sends it:
right for a killed worker, a duplicate for one that is handing it over right
now. The live worker here is a session that holds the worker lock with the
key the store uses, and a ``workers`` row with a fresh heartbeat, written
with plain SQL, so this test runs (and fails) on the code before the fleet too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from crm_automation.store.repo import Store
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
NOW = "2026-11-27T10:00"
# The worker lock's key as the store takes it (store/postgres.py).
WORKER_KEY = "hashtext('crm-automation worker ' || current_schema()), hashtext(%s)"


def workspace_on(tmp_path: Path, database: str) -> Path:
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    text = cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"')
    cfg.write_text(text, encoding="utf-8")
    return cfg


def open_log(cfg: Path) -> Store:
    return Workspace.load(cfg).open_store()


def _sends(cfg: Path) -> dict[str, tuple[str, str | None, str]]:
    store = open_log(cfg)
    try:
        return {k: (st, h, mid) for k, st, h, mid in store.conn.execute(
            "SELECT customer_key, status, holder, message_id FROM sends")}
    finally:
        store.close()


def _emls(outbox: Path, message_id: str) -> int:
    return sum(message_id in p.read_text(encoding="utf-8") for p in outbox.glob("*.eml"))


def test_recovery_leaves_a_live_workers_sending_row_alone(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    assert cli("sync", "--config", str(cfg), "--now", NOW).code == 0
    assert cli("send", "--limit", "1", "--config", str(cfg), "--now", NOW).code == 0  # one sent, two queued
    outbox = tmp_path / "ws" / "var" / "outbox"
    queued = sorted(k for k, (st, _, _) in _sends(cfg).items() if st == "queued")
    assert len(queued) == 2
    mine, dead = queued  # mid-hand-over: a live worker's, and a killed one's (no .eml written yet by either)
    with psycopg.connect(pg_log, autocommit=True) as live:  # the live worker: its session holds its lock
        assert live.execute(f"SELECT pg_try_advisory_lock({WORKER_KEY})", ("live/1/a",)).fetchone() == (True,)
        live.execute("INSERT INTO workers (id, host, pid, started_at, heartbeat_at) VALUES ('live/1/a', 'live', 1, "
                     "%s, %s)", (datetime.now(UTC).isoformat(),) * 2)
        for key, holder in ((mine, "live/1/a"), (dead, "gone/2/b")):
            live.execute("UPDATE sends SET status = 'sending', holder = %s WHERE customer_key = %s", (holder, key))
        before = _sends(cfg)
        r = cli("send", "--config", str(cfg), "--now", NOW)  # another worker's pass: its recovery runs first
        assert r.code == 0, r.err
        after = _sends(cfg)
        assert after[mine][:2] == ("sending", "live/1/a")  # left to its live holder: never requeued
        assert _emls(outbox, before[mine][2]) == 0  # not handed over by the other worker (today: a duplicate)
        assert after[dead][0] == "sent"  # the dead worker's row: the outbox never got it, requeued and sent once
        assert _emls(outbox, before[dead][2]) == 1
