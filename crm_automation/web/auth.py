"""Who may see the team pages (issue #19 item 5): logins, password hashes, CSRF, ``require_login``.

Logins come from ``[serve] users`` (login name -> password hash) and, when
``admin_password_env`` names an environment variable, one ``admin`` login
whose password is that variable's value (a ``users`` entry named ``admin``
wins over it).

Password hashes are ``scrypt$N$r$p$SALT$HASH`` (hashlib.scrypt, RFC 7914;
SALT and HASH base64 without padding, a 16-byte salt and a 32-byte hash;
N=2**15, r=8, p=1 as ``serve --hash-password`` writes them: about 50 ms and
32 MiB per try, the parameters OWASP's password storage sheet gives for
scrypt). The standard library's scrypt needs no new dependency.

CSRF: a random token in the (signed) session, sent back as the hidden field
``csrf`` of every form; :func:`require_login` checks it on every team POST
(403 without it). ``SameSite=Lax`` cookies already stop cross-site POSTs in
current browsers; the token covers older ones and same-site subdomains.

A failed login counts against the client's address
(:data:`~crm_automation.web.limits.FAILED_LOGINS_PER_MINUTE`); over the limit,
logins from that address are refused for the rest of the minute, right or
wrong, without trying the password.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from crm_automation.web.app import client_address, csrf_token, render, state

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
_MAXMEM = 64 * 1024 * 1024
ADMIN = "admin"
MIN_PASSWORD_LENGTH = 10  # `serve --hash-password` refuses shorter ones

Endpoint = Callable[[Request], Awaitable[Response]]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def hash_password(password: str) -> str:
    """A new hash of ``password`` in the format above (what ``serve --hash-password`` prints)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_MAXMEM, dklen=_HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash (constant-time compare; a malformed hash matches nothing)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_MAXMEM, dklen=len(want))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))  # an unknown user costs what a known one does


def check_login(request: Request, user: str, password: str) -> bool:
    """Whether ``user``/``password`` is a configured login."""
    st = state(request)
    stored = st.users.get(user)
    if stored is not None:
        return verify_password(password, stored)
    if user == ADMIN and st.admin_password is not None:
        return hmac.compare_digest(hashlib.sha256(password.encode()).digest(),
                                   hashlib.sha256(st.admin_password.encode()).digest())
    verify_password(password, _DUMMY_HASH)
    return False


async def check_csrf(request: Request) -> None:
    """Refuse (403) a POST whose form lacks the session's CSRF token."""
    form = await request.form()
    sent = form.get("csrf")
    want = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(want, str) or not hmac.compare_digest(sent, want):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")


def require_login(endpoint: Endpoint) -> Endpoint:
    """A team endpoint: anonymous GETs go to ``/login`` (303), other anonymous requests get 401; POSTs need CSRF.

    Every team route is wrapped in this; tests/web walks the app's routes
    and asks each without a login.
    """

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        if not isinstance(request.session.get("user"), str):
            if request.method in {"GET", "HEAD"}:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
            return PlainTextResponse("login required", status_code=401)
        if request.method == "POST":
            await check_csrf(request)
        return await endpoint(request)

    guarded.requires_login = True  # type: ignore[attr-defined]
    return guarded


def _safe_next(value: object) -> str:
    """Where to go after logging in: a path on this site only (never ``//host`` or ``https://``)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


async def login_page(request: Request) -> Response:
    """GET /login: the form (with the session's CSRF token)."""
    st = state(request)
    return render(request, "login.html", {"next": _safe_next(request.query_params.get("next")), "error": None,
                                          "configured": bool(st.users) or st.admin_password is not None})


async def login(request: Request) -> Response:
    """POST /login: check CSRF and the rate limit, then the password; on success a fresh session."""
    await check_csrf(request)
    st = state(request)
    form = await request.form()
    client = client_address(request)
    nxt = _safe_next(form.get("next"))
    configured = bool(st.users) or st.admin_password is not None
    if not st.limits.failed_logins.allows(client):
        return render(request, "login.html", {"next": nxt, "error": "login_throttled", "configured": configured},
                      status_code=429)
    user, password = form.get("user"), form.get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not check_login(request, user.strip(),
                                                                                      password):
        st.limits.failed_logins.hit(client)
        return render(request, "login.html", {"next": nxt, "error": "login_failed", "configured": configured},
                      status_code=401)
    request.session.clear()
    request.session["user"] = user.strip()
    csrf_token(request)  # a new token for the new session
    return RedirectResponse(nxt, status_code=303)


async def logout(request: Request) -> Response:
    """POST /logout (CSRF-checked, so another site cannot log the user out): the session is cleared."""
    await check_csrf(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


ROUTES = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
