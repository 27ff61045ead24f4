"""The application layer's writing use cases (issue #18): requeue, suppress, unsuppress, unsubscribe by token.

They take no workspace lock (issue #19: ``serve`` writes while the worker
runs), so each is also checked with the lock held by a worker: it goes
through. A log kept busy by another writer is waited for; one busy past the
timeout gives a clear LockedError, nothing written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from filelock import FileLock

from crm_automation.app import reports, sends, suppressions
from crm_automation.app.suppressions import Outcome
from crm_automation.errors import ConfigError, LockedError
from crm_automation.models import SendStatus
from crm_automation.store import connection
from crm_automation.store.repo import Store
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "hello", id = "again" }]\n')
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture
def ws(tmp_path, cli) -> Workspace:
    """Three customers, each sent the first step at T0 (outbox transport)."""
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    return Workspace.load(cfg)


def _sends(ws: Workspace) -> dict[str, tuple[int, str, str]]:
    """customer -> (send id, status, message id)."""
    return {k: (i, s, m) for i, k, s, m in db_rows(ws.cfg.database, "SELECT id, customer_key, status, message_id "
                                                                    "FROM sends ORDER BY id")}


def _held(ws: Workspace) -> FileLock:
    lock = FileLock(str(ws.cfg.database) + ".lock")
    lock.acquire(timeout=0)
    return lock


# ---------------------------------------------------------------- requeue


def test_requeue_by_id_puts_an_uncertain_send_back_and_names_what_it_cannot(ws):
    s = _sends(ws)
    store = Store.open(ws.cfg.database)
    try:
        store.mark_status(s["c0@example.com"][0], SendStatus.UNCERTAIN, "connection lost after DATA")
    finally:
        store.close()
    result = sends.requeue(ws, [s["c0@example.com"][0], s["c1@example.com"][0], 999])
    assert result.count == 1
    assert len(result.problems) == 2
    assert f"send #{s['c1@example.com'][0]} (hello/0 to c1@example.com) is sent" in result.problems[0]
    assert "send #999 does not exist" in result.problems[1]
    assert _sends(ws)["c0@example.com"][1] == "queued"
    assert result.to_json() == {"requeued": 1, "problems": list(result.problems)}


def test_requeue_all_failed_leaves_uncertain_ones_alone(ws):
    s = _sends(ws)
    store = Store.open(ws.cfg.database)
    try:
        store.mark_status(s["c0@example.com"][0], SendStatus.UNCERTAIN)
        store.mark_status(s["c1@example.com"][0], SendStatus.FAILED, "550")
    finally:
        store.close()
    assert sends.requeue(ws, failed=True).count == 1
    after = _sends(ws)
    assert (after["c0@example.com"][1], after["c1@example.com"][1]) == ("uncertain", "queued")
    assert sends.requeue(ws, uncertain=True).count == 1
    assert _sends(ws)["c0@example.com"][1] == "queued"


def test_requeue_needs_sends_named_and_goes_through_beside_a_running_worker(ws):
    with pytest.raises(ConfigError, match="name the sends"):
        sends.requeue(ws)
    s = _sends(ws)
    store = Store.open(ws.cfg.database)
    try:
        store.mark_status(s["c1@example.com"][0], SendStatus.FAILED, "550")
    finally:
        store.close()
    lock = _held(ws)
    try:
        assert sends.requeue(ws, failed=True).count == 1
    finally:
        lock.release()
    assert _sends(ws)["c1@example.com"][1] == "queued"


# ---------------------------------------------------------------- the suppression list


def test_suppress_list_and_unsuppress_round_trip_with_the_email_status(ws):
    result = suppressions.suppress(ws, ["C1@example.com", "bob@"], "unsubscribed", T0 + timedelta(hours=1))
    assert result.added == ("C1@example.com",)
    assert len(result.rejected) == 1 and "'bob@'" in result.rejected[0]
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers WHERE key = 'c1@example.com'") == [
        ("unsubscribed",)]
    listed = suppressions.suppressions(ws)
    assert [(i.email, i.reason, i.at, i.source) for i in listed.items] == [
        ("c1@example.com", "unsubscribed", T0 + timedelta(hours=1), "cli")]
    assert listed.to_json() == {"suppressions": [{"email": "c1@example.com", "reason": "unsubscribed",
                                                  "at": "2026-11-27T03:00:00Z", "source": "cli"}]}
    assert suppressions.unsuppress(ws, ["c1@example.com", "c2@example.com"]).removed == ("c1@example.com",)
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers WHERE key = 'c1@example.com'") == [("ok",)]
    assert suppressions.suppressions(ws).items == ()


def test_suppress_and_unsuppress_go_through_beside_a_running_worker(ws):
    lock = _held(ws)
    try:
        assert suppressions.suppress(ws, ["c1@example.com"], "manual", T0).added == ("c1@example.com",)
        assert [i.email for i in suppressions.suppressions(ws).items] == ["c1@example.com"]
        assert suppressions.unsuppress(ws, ["c1@example.com"]).removed == ("c1@example.com",)
    finally:
        lock.release()
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]


# ---------------------------------------------------------------- another writer holding the log


def _hold_write_lock(db, seconds: float) -> threading.Thread:
    """Another program's write transaction on the log, committed after ``seconds`` (returns once it holds it)."""
    started = threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("UPDATE meta SET value = value WHERE key = 'log_id'")
            started.set()
            time.sleep(seconds)
            con.execute("COMMIT")
        finally:
            con.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert started.wait(10)
    return t


def test_a_write_waits_for_another_writers_short_transaction(ws):
    holder = _hold_write_lock(ws.cfg.database, 0.5)
    t0 = time.monotonic()
    assert suppressions.suppress(ws, ["c1@example.com"], "manual", T0).added == ("c1@example.com",)
    assert time.monotonic() - t0 >= 0.3  # it waited for the other transaction, then went through
    holder.join(10)
    assert db_rows(ws.cfg.database, "SELECT email FROM suppressions") == [("c1@example.com",)]


def test_a_log_busy_past_the_timeout_gives_a_clear_message_and_changes_nothing(ws, cli, monkeypatch):
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.3)
    holder = _hold_write_lock(ws.cfg.database, 3.0)
    try:
        with pytest.raises(LockedError, match="stayed busy") as e:
            suppressions.suppress(ws, ["c1@example.com"], "unsubscribed", T0)
        assert "nothing was changed" in str(e.value) and str(ws.cfg.database) in str(e.value)
        assert e.value.hint and "try again" in e.value.hint
        r = cli("suppress", "add", "c2@example.com", "--config", str(ws.cfg.path))
        assert r.code == 2, r.err
        assert "stayed busy" in r.err and "Traceback" not in r.err + r.out
    finally:
        holder.join(10)
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM customers WHERE email_status != 'ok'") == [(0,)]


# ---------------------------------------------------------------- unsubscribe links (RFC 8058)


def test_an_unsubscribe_link_suppresses_the_tokens_customer_once(ws, cli):
    _, _, mid = _sends(ws)["c2@example.com"]
    clicked = T0 + timedelta(hours=2)
    result = suppressions.unsubscribe_by_token(ws, token_of(mid), clicked)
    assert (result.outcome, result.customer, result.email, result.campaign, result.step) == (
        Outcome.UNSUBSCRIBED, "c2@example.com", "c2@example.com", "hello", 0)
    assert json.loads(json.dumps(result.to_json()))["outcome"] == "unsubscribed"
    db = ws.cfg.database
    assert db_rows(db, "SELECT email, reason FROM suppressions") == [("c2@example.com", "unsubscribed")]
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c2@example.com'") == [("unsubscribed",)]
    acts = db_rows(db, "SELECT campaign, step, source, json_extract(details, '$.token') FROM activities "
                       "WHERE kind = 'unsubscribe'")
    assert acts == [("hello", 0, "unsubscribe link", token_of(mid))]
    # It counts in the funnel, and the follow-up is not sent to them.
    (row,) = reports.funnel(ws).rows
    assert row.unsubscribed == 1
    r = cli("send", "--dry-run", "--now", "2026-12-01T10:00", "--config", str(ws.cfg.path), "--json")
    details = json.loads(r.out)["stages"][-1]["details"]
    assert {d["customer"] for d in details if d["status"] == "queued"} == {"c0@example.com", "c1@example.com"}
    # A second click changes nothing.
    again = suppressions.unsubscribe_by_token(ws, token_of(mid), clicked + timedelta(minutes=1))
    assert again.outcome is Outcome.ALREADY
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(1,)]


@pytest.mark.parametrize("token", ["crm.0123456789abcdef0123456789abcdef", "", "a@b", "<x>"])
def test_a_token_that_names_no_send_changes_nothing(ws, token):
    result = suppressions.unsubscribe_by_token(ws, token, T0 + timedelta(hours=1))
    assert result.outcome is Outcome.UNKNOWN_TOKEN and result.customer is None
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(0,)]


def test_an_unsubscribe_link_sets_the_status_of_a_customer_not_keyed_by_address(tmp_path, cli):
    mapping = ('key = "cid"\n[fields]\ncid = { column = "ID", required = true }\n'
               'email = { column = "Email", type = "email", required = true }\nname = { column = "Name" }\n'
               '[writeback]\nemail_status = "Email status"\n')
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, mapping=mapping,
                         rows=[{"ID": "C-7", "Email": "Wang.Wu@Example.com", "Name": "Wang"}])
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    ws = Workspace.load(cfg)
    (mid,) = [m for (m,) in db_rows(ws.cfg.database, "SELECT message_id FROM sends")]
    result = suppressions.unsubscribe_by_token(ws, token_of(mid), T0 + timedelta(hours=1))
    assert (result.outcome, result.customer, result.email) == (Outcome.UNSUBSCRIBED, "C-7", "wang.wu@example.com")
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers WHERE key = 'C-7'") == [("unsubscribed",)]
    assert db_rows(ws.cfg.database, "SELECT email FROM suppressions") == [("wang.wu@example.com",)]


def test_an_unsubscribe_link_goes_through_beside_a_running_worker(ws):
    _, _, mid = _sends(ws)["c0@example.com"]
    lock = _held(ws)
    try:
        result = suppressions.unsubscribe_by_token(ws, token_of(mid), T0 + timedelta(hours=1))
    finally:
        lock.release()
    assert result.outcome is Outcome.UNSUBSCRIBED
    assert db_rows(ws.cfg.database, "SELECT email FROM suppressions") == [("c0@example.com",)]
