"""A burst of one-click POSTs (issue #19 "Performance"): group-committed, each answered for its own token.

A real ``serve`` (tests/fixtures/web.py), httpx from many threads at once, the log read with sqlite3 afterwards.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from crm_automation.tokens import token_of
from crm_automation.workspace import Clock
from tests.fixtures.core import db_rows, holding_the_log, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
CUSTOMERS = 25


class CountingClock(Clock):
    """The real clock, counting how often the app asked it: once per write of one-click unsubscribes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self._lock = threading.Lock()

    def now(self):
        with self._lock:
            self.calls += 1
        return super().now()


def test_a_burst_of_posts_is_answered_each_and_recorded_once_per_token(tmp_path, cli, web_server):
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
            for i in range(CUSTOMERS)]
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, rows=rows)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    tokens = {k: token_of(m) for k, m in db_rows(db, "SELECT customer_key, message_id FROM sends")}
    assert len(tokens) == CUSTOMERS
    clock = CountingClock()
    srv = web_server(cfg, clock)

    # Every token twice (a provider retrying), 50 POSTs at once, each from its own client address.
    posts = [(n, token) for n, token in enumerate([*tokens.values(), *tokens.values()])]
    arrived = threading.Barrier(len(posts) + 1, timeout=30)

    def post(n: int, token: str) -> tuple[str, int, str]:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            arrived.wait()
            r = c.post(f"/u/{token}", data=ONE_CLICK, headers={"X-Forwarded-For": f"10.0.{n // 200}.{n % 200 + 1}"})
        return token, r.status_code, r.text

    # The worker holds the log's write lock while the burst arrives: the POSTs queue up in serve.
    with holding_the_log(db) as release, ThreadPoolExecutor(len(posts)) as pool:
        futures = [pool.submit(post, n, token) for n, token in posts]
        arrived.wait()
        time.sleep(2.0)  # the POSTs reach serve and wait there for the log
        release.set()
        answers = [f.result(timeout=60) for f in futures]

    assert {status for _, status, _ in answers} == {200}
    for token in tokens.values():  # per token: one answer says done, the other says already
        texts = [text for t, _, text in answers if t == token]
        assert sum("You are unsubscribed" in x for x in texts) == 1, texts
        assert sum("already unsubscribed" in x for x in texts) == 1, texts
    assert db_rows(db, "SELECT customer_key, COUNT(*) FROM activities WHERE kind = 'unsubscribe' "
                       "GROUP BY customer_key ORDER BY customer_key") == sorted((k, 1) for k in tokens)
    assert db_rows(db, "SELECT email, reason FROM suppressions ORDER BY email") == sorted(
        (k, "unsubscribed") for k in tokens)
    assert db_rows(db, "SELECT COUNT(*) FROM customers WHERE email_status = 'unsubscribed'") == [(CUSTOMERS,)]
    # The POSTs that waited were written together (group commit): a handful of writes, not one per POST.
    assert clock.calls <= 5, clock.calls


def test_serve_is_ready_before_its_first_request_and_its_loop_never_waits_in_sqlite(tmp_path, cli, web_server):
    """The kept write connection is open when serve starts listening (its lifespan ran); while the worker holds
    the write lock, a one-click POST waits for it on the event loop, and other requests are answered meanwhile."""
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
            for i in range(2)]
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, rows=rows)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    token = token_of(db_rows(db, "SELECT message_id FROM sends WHERE customer_key = 'c0@example.com'")[0][0])
    srv = web_server(cfg)
    assert srv.app.state.web.kept.is_open  # warmed before the first request

    with holding_the_log(db) as release, ThreadPoolExecutor(1) as pool:
        posted = pool.submit(lambda: httpx.post(f"{srv.url}/u/{token}", data=ONE_CLICK, timeout=60))
        time.sleep(0.5)
        assert not posted.done()  # waiting for the log
        started = time.monotonic()
        page = httpx.get(f"{srv.url}/u/{token}", timeout=10)  # another request, served meanwhile
        assert page.status_code == 200 and time.monotonic() - started < 2.0
        release.set()
        answer = posted.result(timeout=30)
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text
    assert db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'unsubscribe'") == [("c0@example.com",)]
