"""Which requests the one-click short way takes, and that it passes every other one on intact (web/oneclick.py).

The short way (:class:`crm_automation.web.oneclick.OneClick`) in front of a recording ASGI app that stands for the
Starlette app behind it, on a real workspace and log; requests as uvicorn hands them over (scope, receive, send).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_automation.tokens import token_of
from crm_automation.web import create_app
from crm_automation.web.app import WebState
from crm_automation.web.oneclick import OneClick
from tests.fixtures.core import db_rows, make_workspace
from tests.fixtures.web import TEST_SECRET

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
BODY = b"List-Unsubscribe=One-Click"
FORM = (b"content-type", b"application/x-www-form-urlencoded")


@pytest.fixture
def web(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[WebState, Path, dict[str, str]]]:
    monkeypatch.setenv("CRM_SERVE_SECRET", TEST_SECRET)
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    db = cfg.parent / "var" / "crm.sqlite"
    tokens = {k: token_of(m) for k, m in db_rows(db, "SELECT customer_key, message_id FROM sends")}
    state: WebState = create_app(cfg).state.web
    yield state, db, tokens
    state.kept.close()


class Behind:
    """The app behind the short way: records the requests it gets and every message it receives; answers 418."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        got = [await receive()]
        while got[-1]["type"] == "http.request" and got[-1].get("more_body", False):
            got.append(await receive())
        self.calls.append((scope["path"], got))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _request(app: OneClick, path: str, messages: list[dict[str, Any]], *, method: str = "POST",
             headers: list[tuple[bytes, bytes]] | None = None, root_path: str = "") -> tuple[int, bytes]:
    """One request through ``app`` as uvicorn hands it over; (status, body) of the answer."""
    queue = list(messages)
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "query_string": b"",
             "headers": headers if headers is not None else [FORM, (b"content-length", b"26")],
             "client": ("203.0.113.1", 40000)}

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _part(body: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def test_rfc_8058_posts_are_answered_without_the_app_behind(web):
    state, db, tokens = web
    behind = Behind()
    app = OneClick(behind, state)
    status, body = _request(app, f"/u/{tokens['c0@example.com']}", [_part(BODY)])
    assert (status, body) == (200, b"You are unsubscribed. We will not send you our marketing emails any more.")
    # the body in two pieces (a slow client), and a provider's retry
    status, body = _request(app, f"/u/{tokens['c0@example.com']}", [_part(b"List-Unsubscribe=", True),
                                                                     _part(b"One-Click")])
    assert status == 200 and body.startswith(b"You were already unsubscribed.")
    assert _request(app, "/u/crm." + "0" * 32, [_part(BODY)]) == (404, b"not found")
    assert behind.calls == []
    assert db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'unsubscribe'") == [("c0@example.com",)]
    assert state.limits.public.clients() == 1  # counted, once per request, against the client's address


@pytest.mark.parametrize(("why", "kwargs"), [
    ("a GET", {"method": "GET"}),
    ("multipart", {"headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"26")]}),
    ("no length", {"headers": [FORM, (b"transfer-encoding", b"chunked")]}),
    ("another length", {"headers": [FORM, (b"content-length", b"33")]}),
    ("no type", {"headers": [(b"content-length", b"26")]}),
    ("behind a root path", {"root_path": "/crm"}),
])
def test_other_requests_go_behind_untouched_and_uncounted(web, why, kwargs):
    state, db, tokens = web
    behind = Behind()
    parts = [_part(b"List-Unsubscribe=One-Click&page=1")]
    assert _request(OneClick(behind, state), f"/u/{tokens['c1@example.com']}", parts, **kwargs)[0] == 418, why
    assert behind.calls == [(f"/u/{tokens['c1@example.com']}", parts)]
    assert state.limits.public.clients() == 0
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(0,)]


@pytest.mark.parametrize("path", ["/u/not-a-token", "/u/crm." + "0" * 32 + "/undo", "/c/crm." + "0" * 32, "/x"])
def test_other_paths_go_behind(web, path):
    state, _, _ = web
    behind = Behind()
    assert _request(OneClick(behind, state), path, [_part(BODY)])[0] == 418
    assert behind.calls == [(path, [_part(BODY)])]
    assert state.limits.public.clients() == 0


@pytest.mark.parametrize("parts", [
    [_part(b"List-Unsubscribe=One+Click")],  # 26 bytes, another value
    [_part(b"List-Unsubscribe=", True), _part(b"One-Click", True), _part(b"&page=1")],  # longer than its length said
    [_part(b"List-Unsubscribe=", True), {"type": "http.disconnect"}],  # the client left mid-body
])
def test_a_body_read_and_not_ours_goes_behind_whole_and_in_order(web, parts):
    state, db, tokens = web
    behind = Behind()
    assert _request(OneClick(behind, state), f"/u/{tokens['c2@example.com']}", parts)[0] == 418
    assert behind.calls == [(f"/u/{tokens['c2@example.com']}", parts)]
    assert state.limits.public.clients() == 0
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'") == [(0,)]
