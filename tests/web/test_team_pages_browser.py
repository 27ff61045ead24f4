"""The team pages in a real browser (issue #19 items 6-10): Chromium + Selenium against a real ``serve``.

One server for the module (tests/fixtures/web.py's ``start_web_server``) over
one log built by the product's own stages, in child processes exactly as an
admin runs them, mailing through a real SMTP server (aiosmtpd,
tests/fixtures/smtpd.py) whose failure injection makes the problems the
attention page is for: ``run --once`` (sync, fetch, send, write-back) where
Bob's connection dies after his message's content (``uncertain``) and Dave's
address is refused with a 5xx (``failed``); a second ``send`` (one email per
customer per cycle, so the second campaign goes then); a customer's reply
and an unreadable message dropped into the Maildir and ``fetch``-ed.

Tests that write touch only their own customer (Bob: requeue; Erin:
suppress) and every comparison reads the log at that moment, so the tests
pass in any order. ``CRM_SCREENSHOTS=docs/screenshots`` saves the README's
pictures (tests/fixtures/browser.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from crm_automation.web import i18n
from tests.fixtures.browser import require_browser, shoot
from tests.fixtures.core import make_workspace, run_subprocess
from tests.fixtures.smtpd import start_server
from tests.fixtures.web import TEST_SECRET, start_web_server

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "browser-test-admin-password"
XSS = "<script>alert(1)</script>"
MAPPING = """key = "email"
[fields]
email   = { column = "Email", type = "email", required = true }
name    = { column = "Name", required = true }
company = { column = "Company" }
stage   = { column = "Stage" }
[writeback]
last_sent = "Last sent"
last_reply = "Last reply"
email_status = "Email status"
"""
ROWS = [
    {"Email": "li.lei@example.cn", "Name": "李雷", "Company": "华南贸易有限公司", "Stage": "lead"},
    {"Email": "bob@example.com", "Name": "Bob Smith", "Company": "Acme Tools", "Stage": "lead"},
    {"Email": "xss@example.com", "Name": XSS, "Company": "Evil <b>Corp</b>", "Stage": "lead"},
    {"Email": "carol@example.com", "Name": "Carol Chen", "Company": "Blue Sky", "Stage": "won"},
    {"Email": "dave@example.com", "Name": "Dave Wu", "Company": "Dave & Sons", "Stage": "won"},
    {"Email": "erin@example.com", "Name": "Erin Zhao", "Company": "Zhao Design", "Stage": "lead"},
]
CAMPAIGNS = """[[campaign]]
id = "welcome"
template = "welcome"
trigger = "new"
include_existing = true

[[campaign]]
id = "newsletter"
template = "newsletter"
trigger = "new"
include_existing = true
where = { stage = "won" }
"""
TEMPLATES = {
    "welcome.txt": "Subject: Welcome, {{ customer.name }}\n\nHello {{ customer.name }},\nwelcome aboard.\n",
    "newsletter.txt": "Subject: News for {{ customer.company }}\n\nHello {{ customer.name }},\nour news.\n",
}
REPLY_TEXT = "Yes, please send me the quote for 200 units."
GARBAGE = b"\x00\x01 this is not an email\r\n\xff\xfe"


def _cli(cfg: Path, *args: str) -> dict | str:
    r = run_subprocess(*args, "--config", str(cfg))
    assert r.code in (0, 1), f"{args}: exit {r.code}\n{r.err}"
    return json.loads(r.out) if "--json" in args else r.out


def _rows(db: Path, sql: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _build_log(root: Path, smtp) -> Path:
    """The workspace and its log, made by the product's own stages (see the module docstring)."""
    smtp.handler.drop_in_data = {1}  # Bob's (sends go out by key): content sent, the connection dies
    smtp.handler.reject = {"dave@example.com": "550 5.1.1 <dave@example.com>: mailbox unavailable"}
    outbound = (f'transport = "smtp"\nhost = "{smtp.host}"\nport = {smtp.port}\nsecurity = "none"\n'
                "timeout = 10")
    cfg = make_workspace(root, rows=ROWS, mapping=MAPPING, campaigns=CAMPAIGNS, templates=TEMPLATES,
                         outbound=outbound,
                         extra_config='unsubscribe_url = "https://crm.example.com/u/{token}"\n\n'
                                      '[serve]\nadmin_password_env = "CRM_TEST_ADMIN_PASSWORD"\n')
    _cli(cfg, "run", "--once")
    smtp.handler.drop_in_data = set()
    _cli(cfg, "send")  # the newsletter: one email per customer per cycle, so it goes in the second
    db = root / "var" / "crm.sqlite"
    (li_mid,) = _rows(db, "SELECT message_id FROM sends WHERE customer_key = 'li.lei@example.cn' "
                          "AND campaign = 'welcome'")[0]
    reply = (f"From: =?utf-8?b?5p2O6Zu3?= <li.lei@example.cn>\r\nTo: sales@example.com\r\n"
             f"Subject: Re: Welcome\r\nMessage-ID: <reply-1@example.cn>\r\nIn-Reply-To: {li_mid}\r\n"
             f"Date: {datetime.now(UTC):%a, %d %b %Y %H:%M:%S +0000}\r\nContent-Type: text/plain; charset=utf-8\r\n"
             f"\r\n{REPLY_TEXT}\r\n\r\nOn Monday, Sales wrote:\r\n> Hello 李雷,\r\n> welcome aboard.\r\n")
    # The log's times are whole seconds and the funnel counts a reply logged after the send (strictly): a
    # reply fetched within the send's second would not count, so the fetch waits for the next second.
    time.sleep(1.1)
    (root / "inbox" / "new" / "1700000001.M1P1.test").write_bytes(reply.encode())
    (root / "inbox" / "new" / "1700000002.M2P1.test").write_bytes(GARBAGE)
    _cli(cfg, "fetch")
    statuses = dict(_rows(db, "SELECT customer_key, status FROM sends WHERE campaign = 'welcome'"))
    assert statuses["bob@example.com"] == "uncertain" and statuses["dave@example.com"] == "failed", statuses
    return cfg


@dataclass
class Site:
    cfg: Path
    server: object
    smtp: object

    def __iter__(self):  # cfg, server = site
        return iter((self.cfg, self.server))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(config path, server) for the module: the log built once, one uvicorn serving it."""
    require_browser()
    smtp = start_server()
    try:
        cfg = _build_log(tmp_path_factory.mktemp("team-pages") / "ws", smtp)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CRM_SERVE_SECRET", TEST_SECRET)
            mp.setenv("CRM_TEST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            server = start_web_server(cfg)
            try:
                yield Site(cfg, server, smtp)
            finally:
                server.stop()
    finally:
        smtp.stop()


def _wait(browser, condition, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _login(browser, url: str, *, then: str = "/") -> None:
    from selenium.webdriver.common.by import By

    browser.get(url + then)
    _wait(browser, lambda d: "/login" in d.current_url)
    browser.find_element(By.NAME, "user").send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button[type=submit]").click()
    _wait(browser, lambda d: "/login" not in d.current_url)
    assert d_path(browser) == then


def d_path(browser) -> str:
    m = re.match(r"https?://[^/]+(/[^?#]*)", browser.current_url)
    return m.group(1) if m else ""


def _click(browser, css: str) -> None:
    """Click and wait for the next page (a form POST answered by a redirect)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    # The page must be whole before its button is taken: a form POST answered by a redirect swaps the document
    # twice, and an element found mid-swap belongs to neither ("Node ... does not belong to the document").
    _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, css).click()
    _wait(browser, ec.staleness_of(old))
    _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete")


def _funnel_on_page(browser) -> list[dict]:
    from selenium.webdriver.common.by import By

    out = []
    for tr in browser.find_elements(By.CSS_SELECTOR, "#funnel tbody tr"):
        row = {}
        for td in tr.find_elements(By.TAG_NAME, "td"):
            key, value = td.get_attribute("data-key"), json.loads(td.get_attribute("data-value"))
            shown = f"{value:.1%}" if key == "reply_rate" else str(value)
            assert td.text == shown, (key, td.text, value)  # what a person reads is the value compared
            row[key] = value
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------ dashboard
def test_the_dashboard_shows_what_report_json_prints(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    browser.get(server.url + "/")
    assert "/login" in browser.current_url  # no page of customer data without a login
    _login(browser, server.url)
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.EN["dashboard_title"]
    on_page = _funnel_on_page(browser)
    report = _cli(cfg, "report", "--json")
    assert on_page == report["campaigns"]
    assert {(r["campaign"], r["step"]) for r in on_page} == {("welcome", 0), ("newsletter", 0)}
    welcome = next(r for r in on_page if r["campaign"] == "welcome")
    assert welcome["replied"] == 1 and welcome["failed"] == 1  # Li Lei's reply; the 550 for Dave
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) >= 2
    assert all(c.size["width"] > 200 and c.size["height"] > 50 for c in charts)  # drawn, not collapsed
    shoot(browser, "dashboard-en")


def test_the_dashboard_in_chinese_through_the_switch(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    _login(browser, server.url)
    browser.find_element(By.CSS_SELECTOR, "header a.lang").click()
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1").text == i18n.ZH["dashboard_title"])
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#funnel thead th")]
    assert i18n.ZH["col_sent"] in heads and i18n.ZH["col_reply_rate"] in heads
    assert _funnel_on_page(browser) == _cli(cfg, "report", "--json")["campaigns"]
    shoot(browser, "dashboard-zh-CN")
    browser.get(server.url + "/health")  # the choice is remembered on the next page
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.ZH["nav_health"]


# ------------------------------------------------------------------------------------------------ attention
def test_requeue_an_uncertain_send_and_it_goes_at_the_next_pass(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    db = cfg.parent / "var" / "crm.sqlite"
    (bob_id,) = _rows(db, "SELECT id FROM sends WHERE customer_key = 'bob@example.com' AND status = 'uncertain'")[0]
    received_before = len(site.smtp.messages)
    _login(browser, server.url, then="/attention")
    row = browser.find_element(By.ID, f"send-{bob_id}")
    assert row.get_attribute("data-status") == "uncertain" and "bob@example.com" in row.text
    failed = browser.find_elements(By.CSS_SELECTOR, "#sends tr[data-status='failed']")
    assert any("550 5.1.1" in r.text for r in failed)
    shoot(browser, "attention")
    _click(browser, f"#send-{bob_id} button.requeue")
    assert i18n.EN["flash_requeued"] in browser.find_element(By.ID, "flash").text
    assert browser.find_elements(By.ID, f"send-{bob_id}") == []
    assert _rows(db, "SELECT status FROM sends WHERE id = ?", bob_id) == [("queued",)]
    _cli(cfg, "send")  # the next pass
    assert _rows(db, "SELECT status FROM sends WHERE id = ?", bob_id) == [("sent",)]
    got = site.smtp.messages[received_before:]
    assert [m.rcpt_tos for m in got] == [["bob@example.com"]]  # it went, once, to the SMTP server
    (mid,) = _rows(db, "SELECT message_id FROM sends WHERE id = ?", bob_id)[0]
    assert got[0].message_id == mid


def test_a_requeue_without_the_forms_token_is_refused(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    db = cfg.parent / "var" / "crm.sqlite"
    before = _rows(db, "SELECT id, status FROM sends ORDER BY id")
    _login(browser, server.url, then="/attention")
    cookie = browser.get_cookie("crm_session")
    (fid,) = _rows(db, "SELECT id FROM sends WHERE status = 'failed'")[0]
    with httpx.Client(base_url=server.url, cookies={"crm_session": cookie["value"]}) as c:
        r = c.post("/attention/requeue", data={"id": str(fid)})
    assert r.status_code == 403
    assert _rows(db, "SELECT id, status FROM sends ORDER BY id") == before
    assert browser.find_elements(By.ID, f"send-{fid}")


def test_a_quarantined_message_downloads_whole_and_only_after_login(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    with httpx.Client(base_url=server.url) as anonymous:
        r = anonymous.get("/quarantine/1.eml")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    _login(browser, server.url, then="/attention")
    (link,) = browser.find_elements(By.CSS_SELECTOR, "#quarantine a.download")
    href = link.get_attribute("href")
    assert re.fullmatch(re.escape(server.url) + r"/quarantine/\d+\.eml", href)
    cookie = browser.get_cookie("crm_session")
    with httpx.Client(cookies={"crm_session": cookie["value"]}) as c:
        r = c.get(href)
        missing = c.get(server.url + "/quarantine/99999.eml")
    assert r.status_code == 200 and r.content == GARBAGE
    assert r.headers["content-type"] == "message/rfc822"
    assert "attachment" in r.headers["content-disposition"]
    assert missing.status_code == 404


def test_a_recent_reply_shows_what_was_newly_written_and_leads_to_the_timeline(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    _login(browser, server.url, then="/attention")
    (reply,) = browser.find_elements(By.CSS_SELECTOR, "#replies article.reply")
    body = reply.find_element(By.CSS_SELECTOR, "pre.body").text
    assert body.strip() == REPLY_TEXT  # the quoted history is not shown as the customer's words
    reply.find_element(By.CSS_SELECTOR, "a.customer").click()
    _wait(browser, lambda d: d_path(d).startswith("/customers/"))
    assert browser.find_element(By.ID, "customer-name").text == "李雷"
    items = browser.find_elements(By.CSS_SELECTOR, "#timeline li")
    printed = _cli(cfg, "timeline", "li.lei@example.cn", "--json")
    assert [li.get_attribute("data-kind") for li in items] == [a["kind"] for a in printed["activities"]]
    assert REPLY_TEXT in items[-1].text
    human = _cli(cfg, "timeline", "li.lei@example.cn")  # as `timeline` prints it: time, kind, headline
    lines = [ln for ln in human.splitlines() if ln.strip() and not ln.lstrip().startswith("|")]
    assert len(lines) == len(items)
    for li, line in zip(items, lines, strict=True):
        when, kind, headline = line[:16], line[18:33].strip(), line[34:].strip()
        assert li.find_element(By.CSS_SELECTOR, ".when").text == when
        assert li.get_attribute("data-kind") == kind
        assert li.find_element(By.CSS_SELECTOR, ".headline").text == headline
    shoot(browser, "timeline")


# ------------------------------------------------------------------------------------------------ customers
@pytest.mark.parametrize(("query", "found"), [("李", ["li.lei@example.cn"]), ("acme", ["bob@example.com"]),
                                              ("carol@EXAMPLE", ["carol@example.com"]), ("nobody", [])])
def test_customer_search_by_name_company_or_address(site, browser, query, found):
    from selenium.webdriver.common.by import By

    _cfg, server = site
    _login(browser, server.url, then="/customers")
    box = browser.find_element(By.NAME, "q")
    box.send_keys(query)
    _click(browser, "form.search button")
    rows = browser.find_elements(By.CSS_SELECTOR, "#customers tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == found
    if not found:
        assert browser.find_element(By.ID, "no-customers").is_displayed()


def test_the_customer_list_screenshot(site, browser):
    from selenium.webdriver.common.by import By

    _cfg, server = site
    _login(browser, server.url, then="/customers")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#customers tbody tr")) == len(ROWS)
    shoot(browser, "customers")


def test_suppress_and_unsuppress_from_the_customer_page(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    db = cfg.parent / "var" / "crm.sqlite"
    _login(browser, server.url, then="/customers/erin@example.com")
    assert browser.find_element(By.ID, "suppression").text == i18n.EN["not_suppressed"]
    _click(browser, "#suppress")
    assert i18n.EN["flash_suppressed"] in browser.find_element(By.ID, "flash").text
    assert _rows(db, "SELECT reason, source FROM suppressions WHERE email = 'erin@example.com'") == [
        ("manual", "web:admin")]
    assert i18n.EN["reason_manual"] in browser.find_element(By.ID, "suppression").text
    _click(browser, "#unsuppress")
    assert i18n.EN["flash_unsuppressed"] in browser.find_element(By.ID, "flash").text
    assert _rows(db, "SELECT * FROM suppressions WHERE email = 'erin@example.com'") == []
    assert browser.find_elements(By.ID, "suppress")


def test_an_unknown_customer_is_a_404_page(site, browser):
    from selenium.webdriver.common.by import By

    _cfg, server = site
    _login(browser, server.url, then="/customers")
    browser.get(server.url + "/customers/nobody@example.com")
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.EN["customer_unknown"]


def test_a_script_in_a_sheet_value_shows_as_text(site, browser):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    _cfg, server = site
    _login(browser, server.url, then="/customers")
    browser.get(server.url + "/customers?q=xss")
    (row,) = browser.find_elements(By.CSS_SELECTOR, "#customers tbody tr")
    assert row.find_element(By.TAG_NAME, "a").text == XSS
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "Evil <b>Corp</b>"
    row.find_element(By.TAG_NAME, "a").click()
    _wait(browser, lambda d: d_path(d).startswith("/customers/xss"))
    assert browser.find_element(By.ID, "customer-name").text == XSS
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main b") == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - no alert opened
    assert browser.execute_script("return document.title").startswith(XSS)


# ------------------------------------------------------------------------------------------------ health
def test_health_shows_each_stage_and_the_queue(site, browser):
    from selenium.webdriver.common.by import By

    cfg, server = site
    _login(browser, server.url, then="/health")
    health = _cli(cfg, "report", "--json")["health"]
    stages = {tr.get_attribute("id").removeprefix("stage-"): tr for tr in
              browser.find_elements(By.CSS_SELECTOR, "#stages tbody tr")}
    assert set(stages) == set(health["stages"]) >= {"sync", "fetch", "send", "writeback"}
    for job, tr in stages.items():
        want = health["stages"][job]
        assert tr.get_attribute("data-ok") == ("running" if want["ok"] is None else "ok" if want["ok"] else "failed")
    queue = {td.get_attribute("data-key"): int(td.text) for td in browser.find_elements(By.CSS_SELECTOR, "#queue td")}
    q = health["queue"]
    assert queue == {"due": q["due"], "waiting": q["waiting"], "sending": q["sending"], "uncertain": q["uncertain"],
                     "failed": q["failed"], "quarantined": health["quarantined"]}
    shoot(browser, "health")


def test_every_team_page_asks_for_a_login_first(site, browser):
    _cfg, server = site
    for path in ("/", "/attention", "/customers?q=li", "/customers/li.lei@example.cn", "/health"):
        browser.get(server.url + path)
        _wait(browser, lambda d: "/login" in d.current_url)
        assert "李雷" not in browser.page_source


# ------------------------------------------------------------------------------------------------ unsubscribe
def test_unsubscribe_through_the_confirmation_page(site, browser):
    """The link in the mail Carol received: a GET only asks; the button unsubscribes, logged as a mailed 退订 is;
    the page's undo subscribes her again."""
    from selenium.webdriver.common.by import By

    cfg, server = site
    db = cfg.parent / "var" / "crm.sqlite"
    (mail,) = [m for m in site.smtp.messages if m.rcpt_tos == ["carol@example.com"]][:1]
    header = str(mail.message["List-Unsubscribe"])
    m = re.search(r"<https://crm\.example\.com(/u/[^>]+)>", header)
    assert m, header
    browser.get(server.url + m.group(1))
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.EN["unsub_question"]
    assert _rows(db, "SELECT * FROM suppressions WHERE email = 'carol@example.com'") == []  # a GET changes nothing
    shoot(browser, "unsubscribe-confirm")
    _click(browser, "form[action^='/u/'] button[type=submit]")
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.EN["unsub_done"]
    assert _rows(db, "SELECT reason FROM suppressions WHERE email = 'carol@example.com'") == [("unsubscribed",)]
    assert _rows(db, "SELECT email_status FROM customers WHERE key = 'carol@example.com'") == [("unsubscribed",)]
    assert _rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe' "
                     "AND customer_key = 'carol@example.com'") == [(1,)]
    assert browser.get_cookies() == []  # the public pages set no cookie
    shoot(browser, "unsubscribe-done")
    _click(browser, "form[action*='/undo'] button[type=submit]")  # "I did not mean to"
    assert browser.find_element(By.TAG_NAME, "h1").text == i18n.EN["unsub_resubscribed"]
    assert _rows(db, "SELECT * FROM suppressions WHERE email = 'carol@example.com'") == []
    assert _rows(db, "SELECT email_status FROM customers WHERE key = 'carol@example.com'") == [("ok",)]
