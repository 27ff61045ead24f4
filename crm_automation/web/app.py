"""The ASGI application (issue #19): middleware, static files, templates, and the render helper every page uses.

Why Starlette + uvicorn + Jinja2: a small, well-kept stack, and Jinja2 is a
dependency already. The app holds no state of its own beyond the rate-limit
counts: each endpoint calls one use case of :mod:`crm_automation.app` (sync
functions that open and close the log per call, so they run in Starlette's
threadpool) and renders its result.

Middleware, outermost first:

- :class:`RequestLog`: one line per request at DEBUG (``-v``), the path with
  the tokens of ``/u/``, ``/c/`` and ``/o/`` cut out and no client address:
  a token in a URL is a key to one customer's subscription.
- :class:`crm_automation.web.oneclick.OneClick`: a mail provider's RFC 8058
  POST answered here, before the middleware below and the router (issue #19,
  "Performance"), with the same bytes they would have given it.
- :class:`SecurityHeaders`: CSP without inline script or style, no framing,
  ``Referrer-Policy: no-referrer`` (tokens are in URLs), ``nosniff``, and
  ``Cache-Control: no-store`` on everything but ``/static``.
- :class:`Sessions`: Starlette's signed-cookie sessions (itsdangerous), except
  on the public paths: mail providers and scanners get no cookie there
  (RFC 8058 §3.2: the one-click POST carries none and needs none).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crm_automation.app import access, suppressions
from crm_automation.app.access import KeptWriter
from crm_automation.errors import LogBusyError
from crm_automation.web import i18n
from crm_automation.web.batching import GroupCommit
from crm_automation.web.limits import RateLimits
from crm_automation.workspace import Clock, Workspace

log = logging.getLogger("crm_automation.web")

PUBLIC_PREFIXES = ("/u/", "/c/", "/o/", "/healthz", "/static/")  # no session, no cookie, no login
SESSION_COOKIE = "crm_session"
SESSION_MAX_AGE = 12 * 3600  # a working day: a login lasts until the next morning at most
_R = TypeVar("_R")
_TOKEN_IN_PATH = re.compile(r"^/([uco])/[^/]+")


@dataclass
class WebState:
    """What every request needs: the workspace, the clock, the templates, the logins, the limits.

    ``users`` maps login names to password hashes (``[serve] users``);
    ``admin_password`` is the ``admin`` login's password read from
    ``admin_password_env`` at start (None: no such login). ``https`` is
    whether ``public_url`` is https, which makes cookies ``Secure``.
    """

    ws: Workspace
    clock: Clock
    env: jinja2.Environment
    users: Mapping[str, str]
    admin_password: str | None
    https: bool
    limits: RateLimits = field(default_factory=RateLimits)
    writes: asyncio.Lock = field(default_factory=asyncio.Lock)  # one app write at a time (see :func:`write`)
    unsubscribes: GroupCommit[str, suppressions.Unsubscribed] = field(init=False)  # one-click POSTs, group-committed
    kept: KeptWriter = field(init=False)  # the one-click POSTs' write connection, kept open (issue #19)

    def __post_init__(self) -> None:
        self.unsubscribes = GroupCommit(self._unsubscribe_batch)
        self.kept = KeptWriter(self.ws)

    async def _unsubscribe_batch(self, tokens: Sequence[str]) -> list[suppressions.Unsubscribed]:
        """One group of one-click unsubscribes: one transaction (issue #19; :mod:`crm_automation.web.batching`).

        Written here on the event loop, not in the threadpool: a batch is a
        millisecond or two of SQLite, and handing it to a thread and back cost
        more CPU than that (the thread's wake-up and the GIL passed back and
        forth: a quarter of ``serve``'s CPU in a burst, measured with
        benchmarks/bench_unsubscribe.py), CPU the worker sending beside it
        needs. The loop never sleeps in SQLite: when the worker holds the
        write lock the attempt fails at once, nothing written, and the loop
        awaits the next try (other requests go on meanwhile), for up to the
        busy timeout, then :class:`LockedError` as before.

        A PostgreSQL log (issue #20) is a server a network away: its round
        trips would hold up the loop, so there the batch goes to the
        threadpool as before, and the server's own lock wait applies.
        """
        now = self.clock.now()  # when the batch came to be written (the tries that find the log busy do not move it)
        if not access.on_this_machine(self.ws):
            return await written(self, lambda: suppressions.unsubscribe_by_tokens(self.ws, tokens, now,
                                                                                  kept=self.kept))
        timeout, poll = access.busy_wait()
        deadline = time.monotonic() + timeout
        async with self.writes:
            while True:
                try:
                    return suppressions.unsubscribe_by_tokens(self.ws, tokens, now, kept=self.kept, wait=False)
                except LogBusyError:
                    if time.monotonic() >= deadline:
                        raise access.busy(self.ws) from None
                    await asyncio.sleep(poll)


def state(request: Request) -> WebState:
    """The app's :class:`WebState`."""
    st: WebState = request.app.state.web
    return st


async def read(request: Request, fn: Callable[..., _R], /, *args: object) -> _R:
    """Run a reading use case (sync, opens the log read-only per call) in the threadpool."""
    return await run_in_threadpool(fn, *args)


async def write(request: Request, fn: Callable[..., _R], /, *args: object) -> _R:
    """Run a writing use case in the threadpool, one at a time in this process.

    Why one at a time: each use case opens its own connection and takes
    SQLite's write lock (``BEGIN IMMEDIATE``); when several of ours ask at
    once, all but one sleep in SQLite's busy handler, which backs off
    1, 2, 5 … 100 ms and serves nobody in order. Queued here on an asyncio
    lock instead (first come, first served, waiting in the event loop rather
    than holding one of the threadpool's 40 threads), only one of ours ever
    meets the worker's short transactions, and a burst of one-click POSTs
    takes one thread, not all of them (benchmarks/bench_unsubscribe.py).
    """
    return await written(state(request), fn, *args)


async def written(st: WebState, fn: Callable[..., _R], /, *args: object) -> _R:
    """:func:`write` for a caller without a request (the group commit of one-click unsubscribes)."""
    async with st.writes:
        return await run_in_threadpool(fn, *args)


def client_address(request: Request) -> str:
    """The client's address for rate limits (the proxy's ``X-Forwarded-For`` from a trusted proxy only)."""
    return request.client.host if request.client is not None else "unknown"


def is_public(path: str) -> bool:
    """Whether a path is served without a session (and so never sets a cookie)."""
    return path.startswith(PUBLIC_PREFIXES)


def language(request: Request) -> str:
    """The request's language (:func:`crm_automation.web.i18n.choose`); public pages ignore the cookie."""
    cookie = None if is_public(request.url.path) else request.cookies.get(i18n.COOKIE)
    return i18n.choose(request.query_params.get("lang"), cookie, request.headers.get("accept-language"))


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (checked by :func:`crm_automation.web.auth.check_csrf`)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def render(request: Request, template: str, context: Mapping[str, Any] | None = None, *,
           status_code: int = 200) -> HTMLResponse:
    """Render a page: the template sees ``t`` (UI strings), ``lang``, ``path``, and on team pages ``csrf``/``user``.

    A ``?lang=`` switch on a team page is remembered in a cookie; public
    pages take it for that request only (they set no cookie).
    """
    st = state(request)
    lang = language(request)
    public = is_public(request.url.path)
    ctx: dict[str, Any] = {"t": i18n.Translator(lang), "lang": lang, "path": request.url.path, "request": request,
                           "csrf": None, "user": None}
    if not public:
        ctx["csrf"] = csrf_token(request)
        ctx["user"] = request.session.get("user")
    ctx.update(context or {})
    response = HTMLResponse(st.env.get_template(template).render(ctx), status_code=status_code)
    switched = i18n.normalise(request.query_params.get("lang"))
    if switched is not None and not public:
        response.set_cookie(i18n.COOKIE, switched, max_age=365 * 86400, httponly=True, samesite="lax",
                            secure=st.https)
    return response


def template_env() -> jinja2.Environment:
    """The web templates, autoescaped (every one is HTML; sheet data like ``<script>`` shows as text).

    The public page is compiled here, before ``serve`` listens: compiled on
    the first one-click POST instead, it held up the burst queued behind it
    (issue #19, benchmarks/bench_unsubscribe.py).
    """
    env = jinja2.Environment(loader=jinja2.PackageLoader("crm_automation.web", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.get_template("unsubscribe.html")
    return env


class Sessions:
    """Starlette's SessionMiddleware on the team paths only; the public paths bypass it (no cookie, ever)."""

    def __init__(self, app: ASGIApp, secret: str, https: bool) -> None:
        self.app = app
        self.sessions = SessionMiddleware(app, secret_key=secret, session_cookie=SESSION_COOKIE,
                                          max_age=SESSION_MAX_AGE, same_site="lax", https_only=https)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route the request around or through the session middleware."""
        if scope["type"] == "http" and is_public(scope["path"]):
            await self.app(scope, receive, send)
        else:
            await self.sessions(scope, receive, send)


_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = ((b"content-security-policy", _CSP.encode()), (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff"))


def secured(headers: Iterable[tuple[bytes, bytes]], *, static: bool) -> list[tuple[bytes, bytes]]:
    """A response's headers with the ones every response carries (:class:`SecurityHeaders`; the one-click path too)."""
    out = [*headers, *_HEADERS]
    if not static and not any(k.lower() == b"cache-control" for k, _ in out):
        out.append((b"cache-control", b"no-store"))
    return out


class SecurityHeaders:
    """The headers every response carries (see the module docstring); a response's own Cache-Control wins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Add the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = secured(message.get("headers", []), static=static)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def scrubbed(path: str) -> str:
    """A path as the request log shows it: the token of ``/u/``, ``/c/``, ``/o/`` replaced by ``…``."""
    return _TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


class RequestLog:
    """One log line per request at DEBUG (``serve -v``): method, path without tokens, status, milliseconds.

    No client address and no query string (a ``next=`` or search may name a
    customer); uvicorn's own access log is off (:func:`crm_automation.web.make_server`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and log it."""
        if scope["type"] != "http" or not log.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.debug("%s %s %d %.1f ms", scope["method"], scrubbed(scope["path"]), status,
                      (time.perf_counter() - t0) * 1000)


@asynccontextmanager
async def warmed(app: Starlette) -> AsyncIterator[None]:
    """Before ``serve`` takes its first request: start the threadpool and open the kept write connection.

    Why (issue #19): both were paid by the first request otherwise — the
    threadpool's first use imports its backend and starts a thread (tens of
    milliseconds, more on a busy machine) — and a burst of one-click POSTs
    queued behind it (the p99 of benchmarks/bench_unsubscribe.py's first
    round). Run as the app's lifespan, which uvicorn completes before it
    accepts a connection.
    """
    web: WebState = app.state.web
    await run_in_threadpool(web.kept.warm)
    # Everything loaded so far (the app, its templates, the libraries) lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise walk all of it every so often in the middle of a
    # request (the CPython docs' advice for gc.freeze in a long-lived server).
    gc.freeze()
    yield


def build(web: WebState, secret: str, routes: Sequence[BaseRoute], front: Sequence[Middleware] = ()) -> Starlette:
    """The app: the routes of :mod:`~crm_automation.web.auth`, ``public`` and ``pages``, static files, middleware.

    ``front``: middleware that answers some requests itself, placed right after
    :class:`RequestLog` (before the security headers and sessions): the
    one-click POST's short way (:mod:`crm_automation.web.oneclick`).
    """
    static = Mount("/static", app=StaticFiles(packages=[("crm_automation.web", "static")]), name="static")
    app = Starlette(routes=[*routes, static], lifespan=warmed,
                    middleware=[Middleware(RequestLog), *front, Middleware(SecurityHeaders),
                                Middleware(Sessions, secret=secret, https=web.https)])
    app.state.web = web
    return app
