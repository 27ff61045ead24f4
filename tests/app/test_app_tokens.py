"""Tokens from a URL (issue #19): checked for shape before any lookup, resolved by one indexed step; the undo link.

``serve`` takes a send's token from ``/u/{token}``, ``/c/{token}/{n}`` and
``/o/{token}.gif``: anyone can send anything there. A token not shaped as
ours is "unknown" without the log being opened (or created); a real one is
found through the ``sends.message_id`` index however large the log is.
``resubscribe_by_token`` undoes the unsubscribe that token's link made, and
only that one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from crm_automation.app import reports, suppressions
from crm_automation.app.suppressions import Outcome, UndoOutcome
from crm_automation.models import Kind, ResubscribeDetails
from crm_automation.store.repo import Store
from crm_automation.tokens import is_token, token_of
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "hello", id = "again" }]\n')
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
HEX = "0123456789abcdef" * 2

MALFORMED = ["", "crm.", "crm.0123", f"crm.{HEX}0", f"CRM.{HEX}", f"crm.{HEX.upper()}", f" crm.{HEX}",
             f"crm.{HEX}\n", f"crm.{HEX}/1", f"crm.{HEX[:-1]}%", "../../etc/passwd", f"<crm.{HEX}@example.com>",
             "crm.' OR 1=1 --", "x" * 10_000]


@pytest.fixture
def ws(tmp_path, cli) -> Workspace:
    """Three customers, each sent the first step at T0 (outbox transport)."""
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    return Workspace.load(cfg)


def _token(ws: Workspace, customer: str, step: int = 0) -> str:
    ((mid,),) = db_rows(ws.cfg.database, "SELECT message_id FROM sends WHERE customer_key = ? AND step = ?",
                        customer, step)
    return token_of(mid)


# ---------------------------------------------------------------- the token's shape, before any lookup


def test_the_tokens_we_write_have_the_shape_we_check(ws):
    tokens = [token_of(m) for (m,) in db_rows(ws.cfg.database, "SELECT message_id FROM sends")]
    assert len(tokens) == 3 and all(is_token(t) for t in tokens)
    assert not any(is_token(t) for t in MALFORMED)


@pytest.mark.parametrize("token", MALFORMED)
def test_a_malformed_token_is_unknown_without_opening_the_log(tmp_path, token):
    """Today's main opened (and so created) the log, under the workspace lock, for any text at all."""
    ws = Workspace.load(make_workspace(tmp_path / "ws", campaigns=CAMPAIGN))
    assert suppressions.unsubscribe_by_token(ws, token, T0).outcome is Outcome.UNKNOWN_TOKEN
    assert suppressions.resubscribe_by_token(ws, token, T0).outcome is UndoOutcome.UNKNOWN_TOKEN
    assert not ws.cfg.database.exists()
    assert not ws.cfg.database.parent.exists() or not list(ws.cfg.database.parent.iterdir())


def test_a_token_is_found_by_one_indexed_step_in_a_large_log(ws):
    """The lookup reads the Message-ID index, not the table: its cost does not grow with the log."""
    store = Store.open(ws.cfg.database)
    try:
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO sends (campaign, step, step_id, customer_key, status, message_id, kind) "
                "VALUES ('bulk', 0, '0', ?, 'sent', ?, 'campaign_step')",
                [(f"b{i}@example.com", f"<crm.{i:032x}@example.com>") for i in range(20_000)])
        token = _token(ws, "c1@example.com")
        raw = store.conn._c  # the sqlite3 connection: count the virtual machine's steps of the lookup
        steps = [0]

        def tick() -> int:
            steps[0] += 1
            return 0

        raw.set_progress_handler(tick, 100)
        try:
            found = store.send_by_token(token)
            ref = store.send_for_token(token)
        finally:
            raw.set_progress_handler(None, 0)
    finally:
        store.close()
    assert found is not None and (found.customer_key, found.campaign, found.step) == ("c1@example.com", "hello", 0)
    assert ref is not None and ref.customer_key == "c1@example.com"
    assert steps[0] < 20  # a scan of 20,000 rows takes thousands of steps of 100 instructions


# ---------------------------------------------------------------- undoing an unsubscribe link


def test_resubscribe_undoes_the_links_unsubscribe_once(ws):
    token = _token(ws, "c2@example.com")
    db = ws.cfg.database
    assert suppressions.unsubscribe_by_token(ws, token, T0 + timedelta(hours=1)).outcome is Outcome.UNSUBSCRIBED
    undone = suppressions.resubscribe_by_token(ws, token, T0 + timedelta(hours=1, minutes=1))
    assert (undone.outcome, undone.customer, undone.email, undone.campaign, undone.step) == (
        UndoOutcome.RESUBSCRIBED, "c2@example.com", "c2@example.com", "hello", 0)
    assert json.loads(json.dumps(undone.to_json())) == {"outcome": "resubscribed", "customer": "c2@example.com",
                                                        "email": "c2@example.com", "campaign": "hello", "step": 0}
    assert db_rows(db, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c2@example.com'") == [("ok",)]
    acts = db_rows(db, "SELECT customer_key, campaign, step, source, details FROM activities "
                       "WHERE kind = 'resubscribe'")
    assert [(k, c, s, src, json.loads(d)) for k, c, s, src, d in acts] == [
        ("c2@example.com", "hello", 0, "unsubscribe link", {"email": "c2@example.com", "token": token,
                                                             "send": "hello/0"})]
    # The timeline shows it, read back as its record.
    entries = reports.timeline(ws, "c2@example.com").entries
    (last,) = [e for e in entries if e.activity.kind is Kind.RESUBSCRIBE]
    assert last.activity.details == ResubscribeDetails("c2@example.com", token, "hello/0")
    # Idempotent: a second undo changes nothing.
    again = suppressions.resubscribe_by_token(ws, token, T0 + timedelta(hours=2))
    assert again.outcome is UndoOutcome.NOT_SUPPRESSED
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'resubscribe'") == [(1,)]
    # And the link unsubscribes again afterwards, as a first click would.
    assert suppressions.unsubscribe_by_token(ws, token, T0 + timedelta(hours=3)).outcome is Outcome.UNSUBSCRIBED


def test_resubscribe_sets_back_a_customer_not_keyed_by_address(tmp_path, cli):
    mapping = ('key = "cid"\n[fields]\ncid = { column = "ID", required = true }\n'
               'email = { column = "Email", type = "email", required = true }\nname = { column = "Name" }\n'
               '[writeback]\nemail_status = "Email status"\n')
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, mapping=mapping,
                         rows=[{"ID": "C-7", "Email": "Wang.Wu@Example.com", "Name": "Wang"}])
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    ws = Workspace.load(cfg)
    token = _token(ws, "C-7")
    suppressions.unsubscribe_by_token(ws, token, T0 + timedelta(hours=1))
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers") == [("unsubscribed",)]
    assert suppressions.resubscribe_by_token(ws, token, T0 + timedelta(hours=2)).outcome is UndoOutcome.RESUBSCRIBED
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers") == [("ok",)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM suppressions") == [(0,)]


@pytest.mark.parametrize(("reason", "status"), [("manual", "ok"), ("unsubscribed", "unsubscribed"),
                                                ("bounced", "bounced")])
def test_resubscribe_leaves_an_address_suppressed_another_way(ws, reason, status):
    """The admin's suppression, an emailed request (reason unsubscribed, another source), a bounce: all stay."""
    token = _token(ws, "c0@example.com")
    suppressions.suppress(ws, ["c0@example.com"], reason, T0 + timedelta(hours=1))
    undone = suppressions.resubscribe_by_token(ws, token, T0 + timedelta(hours=2))
    assert undone.outcome is UndoOutcome.NOT_THIS_LINK
    assert db_rows(ws.cfg.database, "SELECT email, reason FROM suppressions") == [("c0@example.com", reason)]
    assert db_rows(ws.cfg.database, "SELECT email_status FROM customers WHERE key = 'c0@example.com'") == [(status,)]
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'resubscribe'") == [(0,)]


def test_resubscribe_does_not_undo_another_sends_link(ws, cli):
    """Unsubscribed from the follow-up's link: the first email's link (forwarded, say) cannot undo it."""
    assert cli("run", "--once", "--config", str(ws.cfg.path), "--now", "2026-12-01T10:00").code == 0
    first, follow_up = _token(ws, "c1@example.com", 0), _token(ws, "c1@example.com", 1)
    assert suppressions.unsubscribe_by_token(ws, follow_up, T0 + timedelta(days=5)).outcome is Outcome.UNSUBSCRIBED
    assert suppressions.resubscribe_by_token(ws, first, T0 + timedelta(days=5)).outcome is UndoOutcome.NOT_THIS_LINK
    assert db_rows(ws.cfg.database, "SELECT email FROM suppressions") == [("c1@example.com",)]
    assert suppressions.resubscribe_by_token(ws, follow_up, T0 + timedelta(days=5)).outcome is \
        UndoOutcome.RESUBSCRIBED


def test_resubscribe_of_an_address_never_suppressed_changes_nothing(ws):
    token = _token(ws, "c0@example.com")
    assert suppressions.resubscribe_by_token(ws, token, T0).outcome is UndoOutcome.NOT_SUPPRESSED
    assert suppressions.resubscribe_by_token(ws, f"crm.{HEX}", T0).outcome is UndoOutcome.UNKNOWN_TOKEN
    assert db_rows(ws.cfg.database, "SELECT COUNT(*) FROM activities WHERE kind = 'resubscribe'") == [(0,)]
