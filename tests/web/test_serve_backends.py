"""``serve``'s one-click path on each backend (issue #19: "it works on whichever log backend the workspace uses").

The same workspace on a SQLite file and on a PostgreSQL database (issue #20): a real uvicorn, the kept write
connection opened before the first request, RFC 8058 POSTs recorded once, a retry answered without a write.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from crm_automation.store.repo import Store
from crm_automation.tokens import token_of
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def test_one_click_unsubscribes_once_on_each_backend(tmp_path: Path, cli, web_server, log_location: str):
    database = database_value(log_location)
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"'),
                   encoding="utf-8")
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    where = database if database.startswith("postgresql://") else cfg.parent / database
    store = Store.open(where)
    try:
        tokens = {k: token_of(m) for k, m in store.conn.execute("SELECT customer_key, message_id FROM sends")}
    finally:
        store.close()
    assert len(tokens) == 3
    srv = web_server(cfg)
    assert srv.app.state.web.kept.is_open  # warmed before the first request, on either engine
    first = httpx.post(f"{srv.url}/u/{tokens['c0@example.com']}", data=ONE_CLICK)
    again = httpx.post(f"{srv.url}/u/{tokens['c0@example.com']}", data=ONE_CLICK)  # a provider's retry
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.text.startswith("You are unsubscribed.") and again.text.startswith("You were already unsubscribed.")
    store = Store.open(where)
    try:
        assert [(e, s.reason.value) for e, s in store.suppressions().items()] == [("c0@example.com", "unsubscribed")]
        unsubscribes = store.conn.execute("SELECT customer_key FROM activities WHERE kind = 'unsubscribe'").fetchall()
        assert [tuple(r) for r in unsubscribes] == [("c0@example.com",)]
    finally:
        store.close()
