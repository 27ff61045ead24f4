"""The team part's door (issue #19 item 5): logins, CSRF, the rate limit on failed logins, pages behind the login.

Against a real uvicorn server (tests/fixtures/web.py) with a real HTTP client (httpx).
"""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import Route

from crm_automation.web.auth import hash_password, verify_password
from crm_automation.web.limits import FAILED_LOGINS_PER_MINUTE
from tests.fixtures.core import make_workspace

PASSWORD = "correct horse battery staple"
ADMIN_PASSWORD = "admin-password-from-env"


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("CRM_TEST_ADMIN", ADMIN_PASSWORD)
    users = f'users = {{ sales = "{hash_password(PASSWORD)}" }}'
    return make_workspace(tmp_path / "ws", extra_config=f'\n[serve]\nadmin_password_env = "CRM_TEST_ADMIN"\n{users}\n')


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def _login(client: httpx.Client, user: str, password: str, next_: str = "/") -> httpx.Response:
    token = _csrf(client.get("/login").text)
    return client.post("/login", data={"csrf": token, "user": user, "password": password, "next": next_})


def test_password_hash_round_trip_and_format():
    h = hash_password("s3cret password")
    assert re.fullmatch(r"scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", h)
    assert verify_password("s3cret password", h)
    assert not verify_password("s3cret passwore", h)
    assert not verify_password("s3cret password", "scrypt$garbage")
    assert hash_password("x" * 12) != hash_password("x" * 12)  # salted


def test_a_user_from_config_logs_in_and_out(config, web_server):
    srv = web_server(config)
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/").status_code == 303
        r = _login(c, "sales", PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "crm_session=" in cookie and "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        page = c.get("/")
        assert page.status_code == 200 and "sales" in page.text
        r = c.post("/logout", data={"csrf": _csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert c.get("/").status_code == 303


def test_the_admin_login_from_the_environment_and_next_stays_on_site(config, web_server):
    srv = web_server(config)
    with httpx.Client(base_url=srv.url) as c:
        r = _login(c, "admin", ADMIN_PASSWORD, next_="//evil.example/x")
        assert r.status_code == 303 and r.headers["location"] == "/"
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/?lang=en").headers["location"] == "/login?next=%2F%3Flang%3Den"
        r = _login(c, "admin", ADMIN_PASSWORD, next_="/?lang=en")
        assert r.headers["location"] == "/?lang=en"


def test_wrong_passwords_are_refused_then_rate_limited_per_client(config, web_server):
    srv = web_server(config)
    with httpx.Client(base_url=srv.url) as c:
        assert _login(c, "nobody", PASSWORD).status_code == 401
        for _ in range(FAILED_LOGINS_PER_MINUTE - 1):
            r = _login(c, "sales", "wrong password")
            assert r.status_code == 401
            assert "Wrong user name or password" in r.text
        r = _login(c, "sales", PASSWORD)  # right, but this address has used up its tries
        assert r.status_code == 429
        assert "Too many failed logins" in r.text
        assert c.get("/").status_code == 303  # not logged in


def test_a_post_without_its_csrf_token_is_refused(config, web_server):
    srv = web_server(config)
    with httpx.Client(base_url=srv.url) as c:
        c.get("/login")
        r = c.post("/login", data={"user": "sales", "password": PASSWORD, "next": "/"})
        assert r.status_code == 403
        r = c.post("/login", data={"csrf": "forged", "user": "sales", "password": PASSWORD, "next": "/"})
        assert r.status_code == 403
        assert _login(c, "sales", PASSWORD).status_code == 303
        assert c.post("/logout").status_code == 403
        assert c.post("/logout", data={"csrf": "forged"}).status_code == 403
        assert c.get("/").status_code == 200  # still logged in


def _team_routes(app) -> list[Route]:
    return [r for r in app.routes if isinstance(r, Route) and getattr(r.endpoint, "requires_login", False)]


def test_no_team_page_answers_without_a_login(config, web_server):
    """Every route but the login form, the public endpoints and static files requires a login."""
    srv = web_server(config)
    public = {"/login", "/logout"} | {r.path for r in srv.app.routes if isinstance(r, Route)
                                      and r.path.startswith(("/u/", "/c/", "/o/", "/healthz"))}
    routes = [r for r in srv.app.routes if isinstance(r, Route)]
    unguarded = [r.path for r in routes if r.path not in public and not getattr(r.endpoint, "requires_login", False)]
    assert unguarded == []
    team = _team_routes(srv.app)
    assert team, "the dashboard at least"
    with httpx.Client(base_url=srv.url) as c:
        for r in team:
            path = re.sub(r"\{[^}]+\}", "1", r.path)
            for method in sorted(r.methods or ()):
                if method == "HEAD":
                    continue
                resp = c.request(method, path)
                if method == "GET":
                    assert resp.status_code == 303, (method, path)
                    assert resp.headers["location"].startswith("/login?next=")
                else:
                    assert resp.status_code == 401, (method, path)
                assert "crm_session" not in resp.headers.get("set-cookie", "")


def test_pages_carry_the_security_headers(config, web_server):
    srv = web_server(config)
    r = httpx.get(f"{srv.url}/login")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    css = httpx.get(f"{srv.url}/static/app.css")
    assert css.status_code == 200 and "font" in css.text
