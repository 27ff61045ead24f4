"""Undo after a one-click unsubscribe, tracked clicks and opens, over HTTP against a real serve (issue #19)."""

from __future__ import annotations

import httpx
import pytest

from crm_automation.tokens import token_of
from tests.fixtures.core import db_rows, make_workspace

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
PUBLIC = "https://crm.example.com"
TEXT = "Subject: Hello {{ customer.name }}\n\nOffer: https://example.com/offer?a=1&b=2\n"
HTML = '<html><body><p><a href="https://example.com/offer?a=1&amp;b=2">offer</a></p></body></html>'


@pytest.fixture
def sent(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", templates={"hello.txt": TEXT, "hello.html": HTML},
                         campaigns='[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\n'
                                   'include_existing = true\ntrack_clicks = true\ntrack_opens = true\n',
                         extra_config=f'\n[serve]\npublic_url = "{PUBLIC}"\n')
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    tokens = {k: token_of(m) for k, m in db_rows(db, "SELECT customer_key, message_id FROM sends")}
    return cfg, db, tokens


def _count(db, kind: str) -> int:
    return db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = ?", kind)[0][0]


def test_the_page_after_unsubscribing_offers_an_undo_that_resubscribes(sent, web_server):
    cfg, db, tokens = sent
    srv = web_server(cfg)
    token = tokens["c0@example.com"]
    page = httpx.post(f"{srv.url}/u/{token}", data={**ONE_CLICK, "page": "1"})  # as the confirmation page posts
    assert f'action="/u/{token}/undo?lang=en"' in page.text
    assert db_rows(db, "SELECT email FROM suppressions") == [("c0@example.com",)]
    r = httpx.post(f"{srv.url}/u/{token}/undo")
    assert r.status_code == 200 and "You are subscribed again" in r.text
    assert db_rows(db, "SELECT email FROM suppressions") == []
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c0@example.com'") == [("ok",)]
    assert _count(db, "resubscribe") == 1
    assert httpx.post(f"{srv.url}/u/{token}/undo").status_code == 200  # again: nothing changes
    assert _count(db, "resubscribe") == 1
    assert "set-cookie" not in r.headers


def test_undo_leaves_an_address_suppressed_another_way(sent, web_server, cli):
    cfg, db, tokens = sent
    assert cli("suppress", "add", "c1@example.com", "--reason", "unsubscribed", "--config", str(cfg)).code == 0
    srv = web_server(cfg)
    r = httpx.post(f"{srv.url}/u/{tokens['c1@example.com']}/undo")
    assert r.status_code == 200 and "unsubscribed another way" in r.text
    assert db_rows(db, "SELECT email FROM suppressions") == [("c1@example.com",)]
    assert httpx.post(f"{srv.url}/u/crm.00000000000000000000000000000000/undo").status_code == 404


def test_a_tracked_click_redirects_and_is_logged_once(sent, web_server):
    cfg, db, tokens = sent
    srv = web_server(cfg)
    n = 0  # the template's one link (tracking numbers them from 0)
    url = f"{srv.url}/c/{tokens['c2@example.com']}/{n}"
    for _ in range(2):
        r = httpx.get(url)
        assert r.status_code == 302 and r.headers["location"] == "https://example.com/offer?a=1&b=2"
        assert "set-cookie" not in r.headers
    assert _count(db, "click") == 1
    assert httpx.get(f"{srv.url}/c/{tokens['c2@example.com']}/99").status_code == 404
    assert httpx.get(f"{srv.url}/c/crm.00000000000000000000000000000000/0").status_code == 404
    assert httpx.get(f"{srv.url}/c/{tokens['c2@example.com']}/x").status_code == 404
    assert _count(db, "click") == 1


def test_an_open_pixel_is_a_gif_and_logged_once(sent, web_server):
    cfg, db, tokens = sent
    srv = web_server(cfg)
    for _ in range(2):
        r = httpx.get(f"{srv.url}/o/{tokens['c0@example.com']}.gif")
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        assert r.content.startswith(b"GIF89a") and len(r.content) == 43
    assert _count(db, "open") == 1
    assert httpx.get(f"{srv.url}/o/crm.00000000000000000000000000000000.gif").status_code == 404
    assert _count(db, "open") == 1


def test_a_log_busy_past_the_timeout_answers_503_to_a_click_and_still_shows_the_pixel(sent, web_server, monkeypatch):
    """Another program holding the log's write lock makes a tracked link answer 503 (try again), never 500, and
    an open pixel still loads (the open goes unrecorded): a reader's mail must not look broken."""
    import sqlite3
    import threading

    from crm_automation.store import connection

    cfg, db, tokens = sent
    monkeypatch.setattr(connection, "BUSY_TIMEOUT", 0.3)
    srv = web_server(cfg)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(10)
        con.execute("ROLLBACK")
        con.close()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert held.wait(5)
    try:
        r = httpx.get(f"{srv.url}/c/{tokens['c2@example.com']}/0", timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "60"
        r = httpx.get(f"{srv.url}/o/{tokens['c0@example.com']}.gif", timeout=10)
        assert r.status_code == 200 and r.content.startswith(b"GIF89a")
    finally:
        release.set()
        t.join(10)
    assert _count(db, "click") == 0 and _count(db, "open") == 0
    assert httpx.get(f"{srv.url}/c/{tokens['c2@example.com']}/0").status_code == 302  # free again: recorded
    assert _count(db, "click") == 1
