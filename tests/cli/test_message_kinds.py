"""Issue #18 item 2: message kinds. An owner notification is known by its kind, not by a campaign's name.

Logs written before schema 5 recorded an owner notification as a send of
the pseudo-campaign ``owner-notify`` with the activity's id as its step.
After the upgrade such a row must still be recognised: a queued one is
forwarded once, a sent one never again. The old log is made faithfully:
the log of a real fetch, turned back into schema 4 (its row rewritten the
old way, the ``kind`` column dropped, the migration unrecorded).
"""

from __future__ import annotations

import email
import sqlite3

import pytest

from tests.cli.test_worker_behaviour import REPLY
from tests.fixtures.core import db_rows, make_workspace


def as_schema_4(db, *, status: str) -> int:
    """Rewrite the log as a worker from before schema 5 left it; returns the forwarded activity's id."""
    conn = sqlite3.connect(db)
    try:
        (aid,) = conn.execute("SELECT id FROM activities WHERE kind = 'email_in'").fetchone()
        conn.execute("UPDATE sends SET campaign = 'owner-notify', step = ?, step_id = ?, status = ?",
                     (aid, str(aid), status))
        # what schema 6 (planning by question) added goes too
        for index in ("idx_sends_customer", "idx_sends_queued", "idx_sends_sending", "idx_sends_uncertain",
                      "idx_sends_sent", "idx_sends_legacy"):
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.execute("DROP TABLE IF EXISTS plan_due")
        for table in ("send_links", "send_opens"):  # and schema 7's (issue #19, tracking)
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("ALTER TABLE campaigns DROP COLUMN planned_as")
        conn.execute("DELETE FROM meta WHERE key LIKE 'plan_%'")
        # and schema 12's (issue #20: the workers, who holds a send); this helper predates it
        conn.execute("DROP TABLE IF EXISTS workers")
        conn.execute("DROP INDEX IF EXISTS idx_sends_holder")
        conn.execute("ALTER TABLE sends DROP COLUMN holder")
        conn.execute("ALTER TABLE sends DROP COLUMN account")
        conn.execute("ALTER TABLE sends DROP COLUMN kind")
        conn.execute("DELETE FROM _migrations WHERE name >= '0005'")
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    finally:
        conn.close()
    return aid


def outbox(ws) -> list[email.message.Message]:
    return [email.message_from_bytes(p.read_bytes()) for p in sorted((ws / "var" / "outbox").glob("*.eml"))]


@pytest.mark.parametrize("status", ["queued", "sent"])
def test_an_owner_notification_from_before_the_upgrade_is_forwarded_at_most_once(tmp_path, cli, status):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, extra_config="notify_owner = true\n")
    (ws / "inbox" / "new" / "1.a").write_bytes(REPLY)
    assert cli("sync", "--config", str(cfg)).code == 0
    assert cli("fetch", "--config", str(cfg)).code == 0  # logs the reply and queues its notification
    db = ws / "var" / "crm.sqlite"
    aid = as_schema_4(db, status=status)
    (ws / "inbox" / "new" / "2.b").write_bytes(REPLY)  # the same message delivered again
    for _ in range(2):
        assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert db_rows(db, "SELECT campaign, step_id, kind, status FROM sends") == [
        ("owner-notify", str(aid), "owner_notification", "sent")]
    sent = outbox(ws)
    assert len(sent) == (1 if status == "queued" else 0)
    if sent:
        assert sent[0]["To"] == "owner@example.com"
        assert sent[0]["In-Reply-To"] == "<dup-1@example.com>"
        assert "Yes please." in sent[0].get_payload(decode=True).decode()


def test_a_campaign_named_like_the_old_pseudo_campaign_is_a_campaign(tmp_path, cli):
    """The kind, not the name, says what a send is: a campaign with id ``owner-notify`` mails its customers."""
    campaigns = ('[[campaign]]\nid = "owner-notify"\ntemplate = "hello"\ntrigger = "new"\n'
                 'include_existing = true\n')
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=campaigns)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT DISTINCT campaign, status FROM sends") == [
        ("owner-notify", "sent")]
    sent = outbox(ws)
    assert sent and all(m["Subject"].startswith("Hello ") for m in sent)  # the campaign's email, no notification
