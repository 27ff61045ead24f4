"""Sending rules that must hold across restarts: daily limit, per-minute pacing, send window, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.fixtures.core import REPO, db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


def send_stage(r):
    """The ``send`` stage of a command's --json output (a real ``send`` fetches first, issue #9)."""
    return next(s for s in json.loads(r.out)["stages"] if s["job"] == "send")


def outbox(ws):
    return sorted((ws / "var" / "outbox").glob("*.eml"))


def test_max_per_day_is_a_rolling_24_hours_across_restarts(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    text = cfg.read_text().replace("max_per_day = 0", "max_per_day = 2")
    cfg.write_text(text)
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00", "--json")
    send = next(s for s in json.loads(r.out)["stages"] if s["job"] == "send")
    assert send["stats"]["sent"] == 2 and "max_per_day 2 reached" in send["stats"]["note"]
    # A restart later the same day sends nothing more.
    r = cli("send", "--config", str(cfg), "--now", "2026-11-27T20:00", "--json")
    assert send_stage(r)["stats"]["sent"] == 0
    assert len(outbox(tmp_path / "ws")) == 2
    # 24 hours after the first two, the third goes.
    r = cli("send", "--config", str(cfg), "--now", "2026-11-28T10:01", "--json")
    assert send_stage(r)["stats"]["sent"] == 1
    assert len(outbox(tmp_path / "ws")) == 3


def test_send_window_in_workspace_time_zone(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, extra_config='send_window = "09:00-18:00"\n')
    cli("sync", "--config", str(cfg), "--now", "2026-11-27T19:00")
    r = cli("send", "--config", str(cfg), "--now", "2026-11-27T19:00", "--json")  # 19:00 Shanghai
    st = send_stage(r)["stats"]
    assert st["sent"] == 0 and st["waiting"] == 3 and "outside send_window" in st["note"]
    assert outbox(tmp_path / "ws") == []
    r = cli("send", "--config", str(cfg), "--now", "2026-11-28T01:30+00:00", "--json")  # 09:30 Shanghai
    assert send_stage(r)["stats"]["sent"] == 3


def _popen(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "crm_automation", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_max_per_minute_paces_and_holds_across_a_restart(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    cfg.write_text(cfg.read_text().replace("max_per_minute = 0", "max_per_minute = 2"))
    ws = tmp_path / "ws"
    p = _popen("run", "--once", "--config", str(cfg))
    assert _wait_for(lambda: len(outbox(ws)) >= 2)
    time.sleep(1.0)
    assert len(outbox(ws)) == 2  # the third waits for the minute to pass
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err  # cut short: 128 + SIGTERM, so cron can tell (issue #17)
    # Restarted at once: the two sends of the last minute still count.
    p = _popen("send", "--config", str(cfg))
    time.sleep(2.0)
    assert len(outbox(ws)) == 2
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    db = ws / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT status, COUNT(*) FROM sends GROUP BY status ORDER BY status") == [("queued", 1),
                                                                                                ("sent", 2)]


def test_crash_between_sending_and_sent_is_resolved_not_resent(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    import sqlite3

    conn = sqlite3.connect(db)
    # Two sends as a killed worker would leave them: one whose .eml was written, one whose was not.
    ids = [r[0] for r in conn.execute("SELECT id FROM sends ORDER BY id")]
    conn.execute("UPDATE sends SET status = 'sending', sent_at = NULL WHERE id IN (?, ?)", (ids[0], ids[1]))
    conn.commit()
    mid1 = conn.execute("SELECT message_id FROM sends WHERE id = ?", (ids[1],)).fetchone()[0]
    conn.close()
    # A worker killed mid-pass never recorded these as sent in the workspace's log marker (issue #9).
    (cfg.parent / ".config.log-id.json").unlink()
    from crm_automation.transports.outbox import OutboxTransport

    OutboxTransport(tmp_path / "ws" / "var" / "outbox").path_for(mid1).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in outbox(tmp_path / "ws")}
    r = cli("send", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    rows = dict(db_rows(db, "SELECT id, status FROM sends"))
    assert rows[ids[0]] == "sent" and rows[ids[1]] == "sent"
    after = {p.name: p.stat().st_mtime_ns for p in outbox(tmp_path / "ws")}
    # The one that reached the outbox was not written again; the one that did not was sent once now.
    assert all(after[n] == t for n, t in before.items())
    assert len(after) == 3
