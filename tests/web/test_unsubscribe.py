"""One-click unsubscribe over HTTP (issue #19 items 1-3), as a mail provider and a mail scanner would use it.

A real ``serve`` (tests/fixtures/web.py) and httpx; the log read with sqlite3 afterwards.
"""

from __future__ import annotations

import httpx
import pytest

from crm_automation.tokens import token_of
from crm_automation.web.limits import UNSUBSCRIBE_PER_MINUTE
from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = 'id = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def sent(tmp_path, cli):
    """A workspace whose three customers were each sent one message; returns (config, {customer: token})."""
    cfg = make_workspace(tmp_path / "ws", campaigns=f"[[campaign]]\n{CAMPAIGN}")
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    tokens = {k: token_of(m) for k, m in db_rows(db, "SELECT customer_key, message_id FROM sends")}
    assert len(tokens) == 3
    return cfg, tokens


def _log(cfg):
    db = cfg.parent / "var" / "crm.sqlite"
    return (db_rows(db, "SELECT customer_key, campaign, step, source FROM activities WHERE kind = 'unsubscribe'"),
            db_rows(db, "SELECT email, reason FROM suppressions"),
            db_rows(db, "SELECT key, email_status FROM customers ORDER BY key"))


def test_one_click_post_unsubscribes_once_without_a_cookie(sent, web_server):
    cfg, tokens = sent
    srv = web_server(cfg)
    token = tokens["c1@example.com"]
    with httpx.Client(base_url=srv.url) as c:  # a mail provider: no cookie, no CSRF token
        r = c.post(f"/u/{token}", data=ONE_CLICK)
        assert r.status_code == 200
        assert "set-cookie" not in r.headers
        assert "You are unsubscribed" in r.text
        acts, sups, customers = _log(cfg)
        assert acts == [("c1@example.com", "hello", 0, "unsubscribe link")]
        assert sups == [("c1@example.com", "unsubscribed")]
        assert ("c1@example.com", "unsubscribed") in customers
        r = c.post(f"/u/{token}", data=ONE_CLICK)  # again: idempotent
        assert r.status_code == 200 and "already unsubscribed" in r.text
        assert not c.cookies
    assert _log(cfg)[:2] == (acts, sups)


def test_multipart_one_click_body_works_too(sent, web_server):
    """RFC 8058 §3.1 allows the body as multipart/form-data as well."""
    cfg, tokens = sent
    srv = web_server(cfg)
    r = httpx.post(f"{srv.url}/u/{tokens['c0@example.com']}", files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200
    assert _log(cfg)[1] == [("c0@example.com", "unsubscribed")]


def test_a_get_never_unsubscribes_and_shows_a_form_that_posts_the_one_click_body(sent, web_server):
    cfg, tokens = sent
    srv = web_server(cfg)
    token = tokens["c2@example.com"]
    before = _log(cfg)
    for _ in range(3):  # a mail scanner following the link
        r = httpx.get(f"{srv.url}/u/{token}")
        assert r.status_code == 200
        assert "set-cookie" not in r.headers
    assert _log(cfg) == before
    assert f'action="/u/{token}?lang=en"' in r.text and 'method="post"' in r.text
    assert 'name="List-Unsubscribe" value="One-Click"' in r.text
    assert "<script" not in r.text
    # the page's form, submitted as a browser would
    r = httpx.post(f"{srv.url}/u/{token}?lang=en", data=ONE_CLICK)
    assert r.status_code == 200
    assert _log(cfg)[1] == [("c2@example.com", "unsubscribed")]


def test_the_page_speaks_chinese_to_a_chinese_browser(sent, web_server):
    cfg, tokens = sent
    srv = web_server(cfg)
    url = f"{srv.url}/u/{tokens['c0@example.com']}"
    zh = httpx.get(url, headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert "<html lang=\"zh-CN\">" in zh.text and "不再接收这些邮件" in zh.text and "Stop receiving" not in zh.text
    en = httpx.get(url, headers={"Accept-Language": "en-US,en;q=0.9,zh;q=0.5"})
    assert '<html lang="en">' in en.text and "Stop receiving these emails?" in en.text
    switched = httpx.get(f"{url}?lang=zh-CN", headers={"Accept-Language": "en"})
    assert "退订" in switched.text and "set-cookie" not in switched.headers  # public: no cookie
    done = httpx.post(f"{url}?lang=zh-CN", data=ONE_CLICK)
    assert "您已成功退订" in done.text


def test_a_post_without_the_one_click_body_changes_nothing(sent, web_server):
    cfg, tokens = sent
    srv = web_server(cfg)
    url = f"{srv.url}/u/{tokens['c0@example.com']}"
    before = _log(cfg)
    assert httpx.post(url).status_code == 400
    assert httpx.post(url, data={"List-Unsubscribe": "Yes"}).status_code == 400
    assert httpx.post(url, content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "text/plain"}).status_code == 400
    assert _log(cfg) == before


@pytest.mark.parametrize("token", ["crm.00000000000000000000000000000000", "not-a-token-at-all", "x", "a" * 200,
                                   "crm.%2e%2e%2fetc"])
def test_an_unknown_or_forged_token_is_a_plain_404(sent, web_server, token):
    cfg, _ = sent
    srv = web_server(cfg)
    before = _log(cfg)
    r = httpx.get(f"{srv.url}/u/{token}")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
    assert httpx.post(f"{srv.url}/u/{token}", data=ONE_CLICK).status_code == 404
    assert _log(cfg) == before


def test_unsubscribe_requests_are_rate_limited_per_client(sent, web_server):
    cfg, tokens = sent
    srv = web_server(cfg)
    url = f"{srv.url}/u/crm.00000000000000000000000000000000"
    with httpx.Client() as c:
        codes = [c.get(url).status_code for _ in range(UNSUBSCRIBE_PER_MINUTE)]
        assert set(codes) == {404}
        r = c.post(f"{srv.url}/u/{tokens['c1@example.com']}", data=ONE_CLICK)
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
    assert _log(cfg)[1] == []  # the limited POST did nothing
    assert httpx.get(f"{srv.url}/healthz").status_code in {200, 503}  # other endpoints are not limited


def test_the_client_address_comes_from_a_trusted_proxy_only(sent, web_server):
    """X-Forwarded-For from loopback (trusted by default) picks the client's bucket; others cannot spoof it."""
    cfg, tokens = sent
    srv = web_server(cfg)
    url = f"{srv.url}/u/crm.00000000000000000000000000000000"
    for _ in range(UNSUBSCRIBE_PER_MINUTE):
        assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 404
    assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 404  # another client


def test_an_untrusted_peer_cannot_choose_its_bucket(tmp_path, cli, web_server):
    cfg = make_workspace(tmp_path / "ws", extra_config='\n[serve]\ntrusted_proxies = ["192.0.2.1"]\n')
    srv = web_server(cfg)
    url = f"{srv.url}/u/crm.00000000000000000000000000000000"
    for i in range(UNSUBSCRIBE_PER_MINUTE):
        assert httpx.get(url, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code == 404
    assert httpx.get(url, headers={"X-Forwarded-For": "203.0.113.200"}).status_code == 429


def test_a_providers_post_gets_a_line_of_text_and_the_pages_own_post_gets_the_page(sent, web_server):
    """RFC 8058 POSTs come from the provider's servers, which read the status only: no page is rendered for them.
    The confirmation page's button posts ``page=1`` and gets the page with its undo button."""
    cfg, tokens = sent
    srv = web_server(cfg)
    bare = httpx.post(f"{srv.url}/u/{tokens['c0@example.com']}", data=ONE_CLICK,
                      headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert bare.status_code == 200 and bare.headers["content-type"].startswith("text/plain")
    assert bare.text == "您已成功退订。 我们不会再给您发送营销邮件。" and "<" not in bare.text
    again = httpx.post(f"{srv.url}/u/{tokens['c0@example.com']}?lang=en", data=ONE_CLICK)
    assert again.text == "You were already unsubscribed. We will not send you our marketing emails any more."
    page = httpx.get(f"{srv.url}/u/{tokens['c1@example.com']}")
    assert 'name="page" value="1"' in page.text  # the button's form marks its POST
    posted = httpx.post(f"{srv.url}/u/{tokens['c1@example.com']}", data={**ONE_CLICK, "page": "1"})
    assert posted.headers["content-type"].startswith("text/html") and "/undo" in posted.text
    assert _log(cfg)[1] == [("c0@example.com", "unsubscribed"), ("c1@example.com", "unsubscribed")]
