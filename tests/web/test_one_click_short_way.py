"""The one-click POST's short way (crm_automation/web/oneclick.py, issue #19 "Performance") answers as the router does.

A real ``serve`` on each backend (tests/fixtures/web.py, ``log_location``): the same requests, once with RFC 8058's
exact urlencoded body (the short way) and once as a multipart body (the router's ``public.unsubscribe``), compared
byte for byte (status, headers but the date, body); the log read afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from crm_automation.store.repo import Store
from crm_automation.tokens import token_of
from crm_automation.web.limits import UNSUBSCRIBE_PER_MINUTE
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
BODY = b"List-Unsubscribe=One-Click"
FORGED = "crm." + "0" * 32
ROWS = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
        for i in range(6)]


def _short(c: httpx.Client, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return c.post(path, content=BODY, headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})


def _router(c: httpx.Client, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return c.post(path, files={"List-Unsubscribe": (None, "One-Click")}, headers=headers)


def _bytes(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return r.status_code, [(k, v) for k, v in r.headers.multi_items() if k != "date"], r.content


@pytest.fixture
def workspace(tmp_path: Path, cli, log_location: str) -> tuple[Path, str | Path, dict[str, str]]:
    """Six customers sent one message each; c4's address broken in the log since. (config, log, tokens)."""
    database = database_value(log_location)
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, rows=ROWS)
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"'),
                   encoding="utf-8")
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    where = database if database.startswith("postgresql://") else cfg.parent / database
    store = Store.open(where)
    try:
        tokens = {k: token_of(m) for k, m in store.conn.execute("SELECT customer_key, message_id FROM sends")}
        (data,) = store.conn.execute("SELECT data FROM customers WHERE key = ?", ("c4@example.com",)).fetchone()
        broken = {k: ("not an address" if v == "c4@example.com" else v) for k, v in json.loads(data).items()}
        with store.transaction():
            store.conn.execute("UPDATE customers SET data = ? WHERE key = ?", (json.dumps(broken), "c4@example.com"))
    finally:
        store.close()
    assert len(tokens) == len(ROWS)
    return cfg, where, tokens


def _log(where: str | Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    store = Store.open(where)
    try:
        acts = store.conn.execute("SELECT customer_key, source FROM activities WHERE kind = 'unsubscribe' "
                                  "ORDER BY customer_key").fetchall()
        return [tuple(a) for a in acts], [(e, s.reason.value) for e, s in store.suppressions().items()]
    finally:
        store.close()


def test_the_short_way_answers_every_outcome_as_the_router_does(workspace, web_server):
    cfg, where, t = workspace
    srv = web_server(cfg)
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    with httpx.Client(base_url=srv.url) as c:
        pairs = [
            (_short(c, f"/u/{t['c0@example.com']}"), _router(c, f"/u/{t['c1@example.com']}")),  # unsubscribed
            (_short(c, f"/u/{t['c0@example.com']}"), _router(c, f"/u/{t['c1@example.com']}")),  # already
            (_short(c, f"/u/{t['c2@example.com']}", zh), _router(c, f"/u/{t['c3@example.com']}", zh)),  # in Chinese
            (_short(c, f"/u/{t['c2@example.com']}?lang=en", zh), _router(c, f"/u/{t['c3@example.com']}?lang=en", zh)),
            (_short(c, f"/u/{t['c4@example.com']}"), _router(c, f"/u/{t['c4@example.com']}")),  # no address
            (_short(c, f"/u/{FORGED}"), _router(c, f"/u/{FORGED}")),  # forged: 404
        ]
    statuses = [short.status_code for short, _ in pairs]
    assert statuses == [200, 200, 200, 200, 200, 404]
    for short, router in pairs:
        assert _bytes(short) == _bytes(router)
        assert "set-cookie" not in short.headers
        assert short.headers["cache-control"] == "no-store" and short.headers["referrer-policy"] == "no-referrer"
    assert pairs[0][0].text.startswith("You are unsubscribed.")
    assert pairs[1][0].text.startswith("You were already unsubscribed.")
    assert pairs[2][0].text.startswith("您已成功退订")
    assert pairs[3][0].text.startswith("You were already unsubscribed.")
    acts, sups = _log(where)  # one activity and one suppression per token; c4 (no address) and the forgery nothing
    assert acts == [(f"c{i}@example.com", "unsubscribe link") for i in range(4)]
    assert sups == [(f"c{i}@example.com", "unsubscribed") for i in range(4)]


def test_the_short_way_counts_against_the_same_rate_limit(workspace, web_server):
    cfg, where, t = workspace
    srv = web_server(cfg)
    client = {"X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=srv.url) as c:
        half = UNSUBSCRIBE_PER_MINUTE // 2
        codes = [_short(c, f"/u/{FORGED}", client).status_code for _ in range(half)]
        codes += [_router(c, f"/u/{FORGED}", client).status_code for _ in range(UNSUBSCRIBE_PER_MINUTE - half)]
        assert set(codes) == {404}
        short, router = _short(c, f"/u/{t['c0@example.com']}", client), _router(c, f"/u/{t['c0@example.com']}", client)
        other = _short(c, f"/u/{t['c5@example.com']}", {"X-Forwarded-For": "203.0.113.10"})  # another client
    assert short.status_code == 429 and short.headers["retry-after"] == "60"
    assert _bytes(short) == _bytes(router)
    assert other.status_code == 200
    assert _log(where) == ([("c5@example.com", "unsubscribe link")], [("c5@example.com", "unsubscribed")])
