"""The application layer's reading use cases (issue #18): report, funnel, attention, health, timeline.

Each runs against a real workspace whose log was built by a real pass
(``run --once``) and through the store's own methods, never by hand-written
SQL; results are checked as values and as their ``to_json()``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from filelock import FileLock

from crm_automation.app import reports
from crm_automation.errors import ConfigError
from crm_automation.models import SendStatus
from crm_automation.store.repo import Store
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # --now 2026-11-27T10:00 in Asia/Shanghai


@pytest.fixture
def ws(tmp_path: Path, cli, log_location: str) -> Workspace:
    """A CSV workspace of three customers, each mailed once by a real pass at T0."""
    db = log_location if log_location.startswith("postgresql://") else "var/crm.sqlite"
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, database=db)
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.err
    return Workspace.load(cfg)


def _store(ws: Workspace) -> Store:
    return Store.open(ws.cfg.database)


def _queue(store: Store, key: str, campaign: str = "later") -> int:
    store.queue_sends([{"campaign": campaign, "step": 0, "customer_key": key, "status": "queued",
                        "message_id": None, "queued_at": "2026-11-27T02:00:00Z", "error": None, "email": key}])
    return store.sends(campaign=campaign)[-1].id


def test_report_shows_the_funnel_the_sends_to_decide_on_and_health(ws):
    store = _store(ws)
    try:
        ids = [s.id for s in store.sends()]
        store.mark_status(ids[0], SendStatus.UNCERTAIN, "connection lost after DATA")
        store.mark_status(ids[1], SendStatus.FAILED, "550 no such user")
        funnel_before = [r.to_dict() for r in store.funnel()]
    finally:
        store.close()
    result = reports.report(ws, T0 + timedelta(minutes=5))
    assert [r.to_dict() for r in result.funnel.rows] == funnel_before
    assert [(a.id, a.status, a.error) for a in result.attention] == [
        (ids[0], SendStatus.UNCERTAIN, "connection lost after DATA"), (ids[1], SendStatus.FAILED, "550 no such user")]
    data = json.loads(json.dumps(result.to_json()))  # plain JSON, nothing needs default=str
    assert list(data) == ["campaigns", "attention", "health", "owner_problems"]
    assert data["owner_problems"] == []  # no [digest]: no owner is refused (issue #21)
    assert data["campaigns"] == funnel_before
    assert data["attention"][0] == {"id": ids[0], "campaign": "hello", "step": 0, "customer": "c0@example.com",
                                    "status": "uncertain", "error": "connection lost after DATA",
                                    "message_id": data["attention"][0]["message_id"]}
    assert data["attention"][0]["message_id"].startswith("<crm.")
    health = data["health"]
    assert health["at"] == "2026-11-27T02:05:00Z"
    assert {"sync", "fetch", "send", "writeback"} <= set(health["stages"])
    assert health["stages"]["send"]["ok"] is True and health["stages"]["send"]["stats"]["sent"] == 3
    assert health["queue"] == {"queued": 0, "due": 0, "waiting": 0, "sending": 0, "uncertain": 1, "failed": 1}
    assert health["quarantined"] == 0


def test_funnel_is_the_stores_funnel(ws):
    store = _store(ws)
    try:
        expected = tuple(store.funnel())
    finally:
        store.close()
    result = reports.funnel(ws)
    assert result.rows == expected and result.rows[0].sent == 3
    assert result.to_json() == [r.to_dict() for r in expected]


def test_health_tells_due_sends_from_those_waiting_for_a_retry(ws):
    now = T0 + timedelta(hours=1)
    store = _store(ws)
    try:
        _queue(store, "c0@example.com")
        retry = _queue(store, "c1@example.com")
        store.claim_sends("w", now, 100)  # the send pass claims first (issue #20)
        assert store.mark_sending(retry, "<r@example.com>", now, "w")
        store.mark_retry(retry, "451 try later", now + timedelta(minutes=30))
    finally:
        store.close()
    h = reports.health(ws, now)
    assert (h.queue.queued, h.queue.due) == (2, 1)
    assert h.to_json()["queue"]["waiting"] == 1
    # Once the retry time has come, it is due too.
    assert reports.health(ws, now + timedelta(minutes=30)).queue.due == 2


def test_health_keeps_the_last_good_run_beside_a_failed_or_unfinished_one(ws):
    store = _store(ws)
    try:
        ok_id = store.start_run("fetch", T0 + timedelta(hours=1))
        store.finish_run(ok_id, T0 + timedelta(hours=1, seconds=3), ok=True, stats={"fetched": 2}, error=None)
        bad = store.start_run("fetch", T0 + timedelta(hours=2))
        store.finish_run(bad, T0 + timedelta(hours=2, seconds=1), ok=False, stats={}, error="IMAP login failed")
        store.start_run("sync", T0 + timedelta(hours=3))  # still running, or the process died in it
    finally:
        store.close()
    stages = {r.job: r for r in reports.health(ws, T0 + timedelta(hours=3)).runs}
    fetch = stages["fetch"]
    assert (fetch.ok, fetch.error, fetch.started_at) == (False, "IMAP login failed", T0 + timedelta(hours=2))
    assert fetch.last_ok_at == T0 + timedelta(hours=1, seconds=3)
    sync = stages["sync"]
    assert (sync.started_at, sync.finished_at, sync.ok) == (T0 + timedelta(hours=3), None, None)
    assert sync.last_ok_at is not None and sync.last_ok_at < sync.started_at  # the first pass's sync


def test_attention_lists_quarantine_newest_first_and_recent_replies_only(ws):
    now = T0 + timedelta(days=10)
    store = _store(ws)
    try:
        for i in range(3):
            store.quarantine(source="maildir:INBOX", raw=f"broken {i}".encode(), error=f"cannot parse {i}",
                             now=T0 + timedelta(minutes=i), from_addr="c0@example.com", customer_key="c0@example.com",
                             size=8)
        store.add_activity(kind="email_in", occurred_at=now - timedelta(days=8), now=now - timedelta(days=8),
                           customer_key="c1@example.com", subject="old news", message_id="<old@x>", digest="d1")
        store.add_activity(kind="email_in", occurred_at=now - timedelta(days=2), now=now - timedelta(days=2),
                           customer_key="c2@example.com", subject="Re: Hello", body="Yes please",
                           message_id="<new@x>", digest="d2")
        store.add_activity(kind="auto_reply", occurred_at=now - timedelta(days=1), now=now - timedelta(days=1),
                           customer_key="c0@example.com", subject="Out of office", message_id="<ooo@x>", digest="d3")
        failed = _queue(store, "c0@example.com")
        store.mark_failed(failed, "550 mailbox unavailable", now, customer_key="c0@example.com", campaign="later",
                          step=0)
    finally:
        store.close()
    a = reports.attention(ws, now, limit=2)
    assert [q.error for q in a.quarantine] == ["cannot parse 2", "cannot parse 1"] and a.quarantined == 3
    assert [(r.customer_key, r.subject, r.body) for r in a.replies] == [("c2@example.com", "Re: Hello", "Yes please")]
    assert [(s.id, s.status) for s in a.sends] == [(failed, SendStatus.FAILED)]
    data = json.loads(json.dumps(a.to_json()))
    assert data["quarantine"]["total"] == 3
    assert data["quarantine"]["newest"][0] == {"id": a.quarantine[0].id, "source": "maildir:INBOX",
                                               "received_at": "2026-11-27T02:02:00Z", "error": "cannot parse 2",
                                               "from": "c0@example.com", "customer": "c0@example.com", "size": 8}
    assert "raw" not in json.dumps(data)  # a quarantined message's bytes never leave the log through this
    assert data["replies"]["since"] == "2026-11-30T02:00:00Z"
    # The window is the caller's: a longer one finds the older reply too.
    assert len(reports.attention(ws, now, reply_days=9).replies) == 2


def test_timeline_finds_a_key_typed_in_another_case_and_says_what_changed(ws, cli):
    path = ws.cfg.path.parent / "customers.csv"
    text = path.read_text(encoding="utf-8").replace("Customer 1,lead", "Customer 1,won")
    path.write_text(text, encoding="utf-8")
    assert cli("sync", "--config", str(ws.cfg.path), "--now", "2026-11-27T11:00").code == 0
    t = reports.timeline(ws, "  C1@Example.COM ")
    assert t.customer == "c1@example.com"
    kinds = [e.activity.kind.value for e in t.entries]
    assert kinds == ["customer_added", "email_out", "field_changed"]
    assert t.entries[1].headline == "[hello/0] Hello Customer 1"
    assert t.entries[2].headline == "stage: lead -> won"  # the stage role's changes read as moves (issue #21)
    data = t.to_json()
    assert data["customer"] == "c1@example.com"
    assert [a["kind"] for a in data["activities"]] == kinds


def test_timeline_shows_the_start_of_what_a_customer_wrote(ws):
    store = _store(ws)
    try:
        body = "\n".join(f"line {i}" for i in range(10))
        store.add_activity(kind="email_in", occurred_at=T0 + timedelta(hours=1), now=T0 + timedelta(hours=1),
                           customer_key="c0@example.com", subject="Re: Hello", body=body, message_id="<r@x>",
                           digest="d")
    finally:
        store.close()
    entry = reports.timeline(ws, "c0@example.com").entries[-1]
    assert entry.headline == "Re: Hello"
    assert entry.excerpt == tuple(f"line {i}" for i in range(6))


def test_timeline_of_an_unknown_customer_is_a_usage_error(ws):
    with pytest.raises(ConfigError, match="'nobody@example.com' is not in the log"):
        reports.timeline(ws, "nobody@example.com")


def test_reading_use_cases_write_nothing_and_work_beside_a_running_worker(tmp_path):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    ws = Workspace.load(cfg)
    # No log yet: an empty one is read, none is created.
    assert reports.report(ws, T0).to_json()["campaigns"] == []
    assert reports.health(ws, T0).runs == ()
    assert reports.attention(ws, T0).sends == ()
    with pytest.raises(ConfigError):
        reports.timeline(ws, "c0@example.com")
    assert not ws.cfg.database.parent.exists()
    store = Store.open(ws.cfg.database)
    store.close()
    lock = FileLock(str(ws.cfg.database) + ".lock")
    lock.acquire(timeout=0)  # a worker is running
    try:
        assert reports.report(ws, T0).health.queue.queued == 0
        assert reports.attention(ws, T0).quarantined == 0
    finally:
        lock.release()
