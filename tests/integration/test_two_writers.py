"""Two writers on one log (issue #19): short writes go through while a worker runs, and a send pass honours them.

The worker is the real CLI in a subprocess (it holds the workspace lock for
its whole life); the short writes are the application layer's use cases
called from this process (as ``serve`` calls them) or the CLI in another
subprocess. The SMTP server is a real aiosmtpd (tests/fixtures/smtpd.py)
that records what it received; its ``on_message`` hook acts between two
messages of one pass.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from crm_automation.app import sends, suppressions
from crm_automation.app.suppressions import Outcome
from crm_automation.models import SuppressionReason
from crm_automation.store.repo import Store
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMO = '[[campaign]]\nid = "promo"\ntemplate = "hello"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'
SCHEDULE = '[schedule]\nsync_every = "1s"\nfetch_every = "1s"\nsend_every = "1s"\n'
NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("CRM_AUTOMATION_CONFIG", None)
    return env


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crm_automation", "--config", str(cfg), *args], env=_env(),
                          cwd=cfg.parent, capture_output=True, text=True, timeout=120, check=False)


def _rows(db: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _wait(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode} while waiting for {what}"
        try:
            if cond():
                return
        except sqlite3.OperationalError:  # the log is still being created
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lock_is_held(db: Path) -> bool:
    lock = FileLock(str(db) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def test_short_writes_go_through_while_crm_automation_run_holds_the_lock(tmp_path, smtpd):
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')
    cfg = make_workspace(tmp_path / "ws", campaigns=PROMO, extra_config=SCHEDULE, outbound=outbound)
    db = cfg.parent / "var" / "crm.sqlite"
    smtpd.handler.reject["c0@example.com"] = "554 5.7.1 <c0@example.com>: message refused by policy"
    log = (cfg.parent / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "crm_automation", "run", "--config", str(cfg)], env=_env(),
                            cwd=cfg.parent, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait("the first pass to send", lambda: _rows(db, "SELECT status, COUNT(*) FROM sends GROUP BY status "
                                                          "ORDER BY status") == [("failed", 1), ("sent", 2)], proc)
        assert _lock_is_held(db)  # the worker holds the workspace lock for its whole life
        ws = Workspace.load(cfg)
        ids = dict(_rows(db, "SELECT customer_key, id FROM sends"))
        mids = dict(_rows(db, "SELECT customer_key, message_id FROM sends"))
        smtpd.handler.reject.clear()  # the admin had the policy fixed, and sends it again

        assert sends.requeue(ws, failed=True).count == 1
        assert suppressions.unsubscribe_by_token(ws, token_of(mids["c1@example.com"]), NOW).outcome \
            is Outcome.UNSUBSCRIBED
        assert suppressions.suppress(ws, ["c2@example.com"], "manual", NOW).added == ("c2@example.com",)
        assert suppressions.unsuppress(ws, ["c2@example.com"]).removed == ("c2@example.com",)
        assert _lock_is_held(db) and proc.poll() is None  # all of that while the worker ran

        # The running worker sends the requeued message at its next pass.
        _wait("the requeued send to go", lambda: _rows(db, "SELECT status FROM sends WHERE id = ?",
                                                        ids["c0@example.com"]) == [("sent",)], proc)
        assert _rows(db, "SELECT email, reason FROM suppressions") == [("c1@example.com", "unsubscribed")]
        assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == [
            "c0@example.com", "c1@example.com", "c2@example.com"]
        assert _rows(db, "SELECT key, email_status FROM customers ORDER BY key") == [
            ("c0@example.com", "ok"), ("c1@example.com", "unsubscribed"), ("c2@example.com", "ok")]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        log.close()
    out = (cfg.parent / "worker.log").read_text(encoding="utf-8", errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.parametrize("how", ["unsubscribe link, this process", "suppress add, another process",
                                 "a bare store connection, this process"])
def test_an_unsubscribe_recorded_mid_pass_by_another_writer_is_honoured_at_hand_over(tmp_path, smtpd, how):
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead",
             "Owner": "owner@example.com"} for i in range(4)]
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')
    cfg = make_workspace(tmp_path / "ws", rows=rows, campaigns=PROMO, outbound=outbound)
    db = cfg.parent / "var" / "crm.sqlite"
    assert _cli(cfg, "sync").returncode == 0
    ws = Workspace.load(cfg)
    target: list[str] = []

    def unsubscribe_another(msg) -> None:
        """At the first message, the last customer of the pass unsubscribes (before the 250 goes out)."""
        if target:
            return
        queued = [k for (k,) in _rows(db, "SELECT customer_key FROM sends WHERE status = 'queued' ORDER BY id")]
        assert queued, "the pass planned and queued its sends before the first hand-over"
        who = queued[-1]
        target.append(who)
        if how.startswith("unsubscribe link"):
            (mid,) = _rows(db, "SELECT message_id FROM sends WHERE customer_key = ?", who)[0]
            assert suppressions.unsubscribe_by_token(ws, token_of(mid), NOW).outcome is Outcome.UNSUBSCRIBED
        elif how.startswith("suppress add"):
            r = _cli(cfg, "suppress", "add", who, "--reason", "unsubscribed")
            assert r.returncode == 0, r.stderr
        else:  # the suppression alone, written by a connection that takes no lock (on any version)
            store = Store.open(db)
            try:
                assert store.suppress(who, SuppressionReason.MANUAL, "test", NOW)
            finally:
                store.close()

    smtpd.handler.on_message = unsubscribe_another
    r = _cli(cfg, "send")
    assert smtpd.handler.hook_errors == []
    assert r.returncode == 0, r.stdout + r.stderr
    (who,) = target
    received = [rcpt for m in smtpd.messages for rcpt in m.rcpt_tos]
    assert sorted(received) == sorted(k["Email"] for k in rows if k["Email"] != who)  # the others once each
    assert who not in smtpd.handler.rcpt_seen  # never even named in a RCPT
    assert _rows(db, "SELECT status, error FROM sends WHERE customer_key = ?", who) == [("skipped", "suppressed")]
    assert _rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'email_out' AND customer_key = ?", who) == [(0,)]
    # The next pass changes nothing for them: recorded once, skipped once.
    assert _cli(cfg, "send").returncode == 0
    assert _rows(db, "SELECT COUNT(*), MIN(status) FROM sends WHERE customer_key = ?", who) == [(1, "skipped")]
    assert len(smtpd.messages) == len(rows) - 1
