"""``unsubscribe_by_tokens``: several one-click unsubscribes in one transaction (issue #19, group commit).

The rules are ``unsubscribe_by_token``'s; these tests check that a batch gives every token exactly what the
tokens one after another would have given, records each once, and is all-or-nothing.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.app import suppressions
from crm_automation.app.suppressions import Outcome
from crm_automation.errors import LockedError
from crm_automation.store import connection
from crm_automation.tokens import token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, holding_the_log, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
T1 = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
UNKNOWN = "crm.0123456789abcdef0123456789abcdef"  # shaped as ours, names no send


@pytest.fixture
def ws(tmp_path, cli) -> Workspace:
    """Four customers, each sent one message (outbox transport)."""
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
            for i in range(4)]
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, rows=rows)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    return Workspace.load(cfg)


def _tokens(ws: Workspace) -> dict[str, str]:
    return {k: token_of(m) for k, m in db_rows(ws.cfg.database, "SELECT customer_key, message_id FROM sends")}


def _log(ws: Workspace) -> tuple[list[tuple[object, ...]], ...]:
    db = ws.cfg.database
    return (db_rows(db, "SELECT customer_key, campaign, step, occurred_at, source, details FROM activities "
                        "WHERE kind = 'unsubscribe' ORDER BY customer_key"),
            db_rows(db, "SELECT email, reason, at, source FROM suppressions ORDER BY email"),
            db_rows(db, "SELECT key, email_status FROM customers ORDER BY key"))


def test_a_batch_records_each_token_once_with_mixed_known_unknown_and_repeated_tokens(ws):
    t = _tokens(ws)
    suppressions.suppress(ws, ["c3@example.com"], "unsubscribed", T1 - timedelta(hours=1))  # on the list already
    batch = [t["c0@example.com"], UNKNOWN, t["c1@example.com"], t["c0@example.com"], "a@b", t["c3@example.com"],
             t["c1@example.com"]]
    results = suppressions.unsubscribe_by_tokens(ws, batch, T1)
    assert [(r.token, r.outcome, r.customer) for r in results] == [
        (t["c0@example.com"], Outcome.UNSUBSCRIBED, "c0@example.com"),
        (UNKNOWN, Outcome.UNKNOWN_TOKEN, None),
        (t["c1@example.com"], Outcome.UNSUBSCRIBED, "c1@example.com"),
        (t["c0@example.com"], Outcome.ALREADY, "c0@example.com"),  # the same token again in the batch
        ("a@b", Outcome.UNKNOWN_TOKEN, None),  # not shaped as a token
        (t["c3@example.com"], Outcome.ALREADY, "c3@example.com"),
        (t["c1@example.com"], Outcome.ALREADY, "c1@example.com"),
    ]
    acts, sups, customers = _log(ws)
    assert [(a[0], a[1], a[2], a[4]) for a in acts] == [("c0@example.com", "hello", 0, "unsubscribe link"),
                                                        ("c1@example.com", "hello", 0, "unsubscribe link")]
    assert [(s[0], s[1]) for s in sups] == [("c0@example.com", "unsubscribed"), ("c1@example.com", "unsubscribed"),
                                            ("c3@example.com", "unsubscribed")]
    assert customers == [("c0@example.com", "unsubscribed"), ("c1@example.com", "unsubscribed"),
                         ("c2@example.com", "ok"), ("c3@example.com", "unsubscribed")]
    # Idempotent: the same batch again changes nothing.
    again = suppressions.unsubscribe_by_tokens(ws, batch, T1 + timedelta(minutes=5))
    assert [r.outcome for r in again] == [Outcome.ALREADY, Outcome.UNKNOWN_TOKEN, Outcome.ALREADY, Outcome.ALREADY,
                                          Outcome.UNKNOWN_TOKEN, Outcome.ALREADY, Outcome.ALREADY]
    assert _log(ws) == (acts, sups, customers)


def test_a_batch_leaves_the_log_as_the_tokens_one_after_another_would(ws, tmp_path):
    """Same results, same rows: the batch applies unsubscribe_by_token's rules, restating none."""
    t = _tokens(ws)
    other_root = tmp_path / "copy"
    shutil.copytree(ws.cfg.path.parent, other_root)
    other = Workspace.load(other_root / ws.cfg.path.name)
    tokens = [t["c2@example.com"], t["c0@example.com"], UNKNOWN, t["c2@example.com"], ""]
    one_by_one = [suppressions.unsubscribe_by_token(other, token, T1) for token in tokens]
    batch = suppressions.unsubscribe_by_tokens(ws, tokens, T1)
    assert batch == one_by_one
    assert _log(ws) == _log(other)


def test_a_batch_of_malformed_tokens_or_none_does_not_open_the_log(tmp_path):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    ws = Workspace.load(cfg)
    assert suppressions.unsubscribe_by_tokens(ws, [], T1) == []
    results = suppressions.unsubscribe_by_tokens(ws, ["", "<x>", "a@b"], T1)
    assert [r.outcome for r in results] == [Outcome.UNKNOWN_TOKEN] * 3
    assert not ws.cfg.database.exists()


def test_a_batch_is_all_or_nothing_when_the_log_stays_busy(ws, monkeypatch):
    t = _tokens(ws)
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.3)
    started = threading.Event()

    def hold() -> None:  # another program's write transaction, longer than the busy timeout
        con = sqlite3.connect(ws.cfg.database, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            started.set()
            time.sleep(2.0)
            con.execute("COMMIT")
        finally:
            con.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert started.wait(10)
    try:
        with pytest.raises(LockedError, match="nothing was changed"):
            suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"], t["c1@example.com"]], T1)
    finally:
        holder.join(10)
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(0,)]
    # and once the log is free, the same batch goes through
    results = suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"], t["c1@example.com"]], T1)
    assert [r.outcome for r in results] == [Outcome.UNSUBSCRIBED, Outcome.UNSUBSCRIBED]


def test_tokens_a_read_answers_need_no_write_lock(ws, monkeypatch):
    """A provider's retry (already unsubscribed), an unknown token: answered while another writer holds the log.

    Why it matters: the worker's send loop waits for every write transaction, and half of a one-click burst is
    retries (issue #19). On the old code the batch waited for the write lock and failed after the busy timeout.
    """
    t = _tokens(ws)
    suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1)
    suppressions.suppress(ws, ["c1@example.com"], "bounced", T1)  # on the list another way
    before = _log(ws)
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.5)
    with holding_the_log(ws.cfg.database):
        started = time.monotonic()
        results = suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"], UNKNOWN, t["c1@example.com"]],
                                                     T1 + timedelta(minutes=1))
        assert time.monotonic() - started < 0.4  # not a wait for the write lock
        # a token that does need writing still waits for the lock, and gives up after the busy timeout
        with pytest.raises(LockedError, match="nothing was changed"):
            suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"], t["c2@example.com"]], T1)
    assert [(r.outcome, r.customer) for r in results] == [
        (Outcome.ALREADY, "c0@example.com"), (Outcome.UNKNOWN_TOKEN, None), (Outcome.ALREADY, "c1@example.com")]
    assert _log(ws) == before


def test_without_waiting_a_busy_log_fails_at_once_and_the_next_try_writes_once(ws):
    """``wait=False`` (serve's event loop): LogBusyError at once, nothing written; tried again, written once."""
    from crm_automation.app.access import KeptWriter, writing
    from crm_automation.errors import LogBusyError

    t = _tokens(ws)
    kept = KeptWriter(ws)
    try:
        with holding_the_log(ws.cfg.database):
            started = time.monotonic()
            with pytest.raises(LogBusyError):
                suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept, wait=False)
            assert time.monotonic() - started < 0.5  # not the busy timeout (30 s)
            assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]
        results = suppressions.unsubscribe_by_tokens(ws, [t["c0@example.com"]], T1, kept=kept, wait=False)
        assert [r.outcome for r in results] == [Outcome.UNSUBSCRIBED]
        # the kept connection, used waiting (the default), waits for a busy log again
        with holding_the_log(ws.cfg.database) as release:
            threading.Timer(0.3, release.set).start()
            results = suppressions.unsubscribe_by_tokens(ws, [t["c1@example.com"]], T1, kept=kept)
        assert [r.outcome for r in results] == [Outcome.UNSUBSCRIBED]
    finally:
        kept.close()
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(2,)]
    with pytest.raises(ValueError, match="kept"), writing(ws, wait=False):
        pass
