"""The public endpoints (no login, no cookie): one-click unsubscribe and ``/healthz`` (issue #19).

``/u/{token}`` — RFC 8058 one-click unsubscribe:

- ``POST`` with the form body ``List-Unsubscribe=One-Click`` (urlencoded or
  multipart, RFC 8058 §3.2) unsubscribes at once through
  :func:`crm_automation.app.suppressions.unsubscribe_by_token` (the
  suppression, the email status and an ``unsubscribe`` activity, in one
  transaction) and answers 200 with a short page. Idempotent: a second POST
  changes nothing and answers 200 again. No cookie, no CSRF token: mail
  providers send neither, and the worst a forged cross-site POST can do is
  what the link's holder can do anyway.
- A ``POST`` *without* that body is refused (400) and changes nothing. Why:
  RFC 8058 makes the body the mark of a deliberate one-click request, and
  our own confirmation page's button posts the same body (a hidden field),
  so nothing legitimate lacks it; a stray POST from a link checker or a
  crawler does not unsubscribe anyone.
- ``GET`` shows the confirmation page (zh-CN or en by ``Accept-Language``)
  with one button that POSTs. A GET never unsubscribes: mail security
  scanners fetch every link within minutes of delivery (Mailtrain #1195;
  one project counted 489 of 497 unsubscribes within 2 minutes of sending).
- A token that names no send (mistyped, forged, from another workspace)
  gets a plain 404, for GET and POST alike.
- Every request under ``/u/`` counts against the client's address
  (:data:`~crm_automation.web.limits.UNSUBSCRIBE_PER_MINUTE` a minute,
  then 429), so tokens cannot be guessed at speed (they are 128 random
  bits anyway).

The undo (``POST /u/{token}/undo`` -> ``app.suppressions.resubscribe_by_token``),
``/c/{token}/{n}`` (clicks) and ``/o/{token}.gif`` (opens) come with the
tracking branch's use cases; see ``SEAM`` below.

``GET /healthz`` — :func:`crm_automation.app.liveness.liveness` as JSON:
200 when every scheduled stage ran within twice its interval, else 503.
No login; no customer data in it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from crm_automation.app import links, liveness, suppressions
from crm_automation.app.suppressions import Outcome
from crm_automation.errors import LockedError
from crm_automation.web.app import client_address, read, render, state, write

ONE_CLICK = ("List-Unsubscribe", "One-Click")  # RFC 8058 §3.1: the POST body's one field
MAX_BODY = 16 * 1024  # a one-click body is 26 bytes; anything much bigger is not one


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404)


def _too_many() -> Response:
    return PlainTextResponse("too many requests: wait a minute and try again", status_code=429,
                             headers={"Retry-After": "60"})


async def _one_click_body(request: Request) -> bool:
    """Whether the request's form is RFC 8058's ``List-Unsubscribe=One-Click`` (extra fields are ignored)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return False
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        return False
    form = await request.form(max_files=0, max_fields=20)
    return form.get(ONE_CLICK[0]) == ONE_CLICK[1]


async def unsubscribe_page(request: Request) -> Response:
    """GET /u/{token}: the confirmation page; changes nothing."""
    st = state(request)
    if not st.limits.public.hit(client_address(request)):
        return _too_many()
    token = request.path_params["token"]
    found = await read(request, links.link, st.ws, token)
    if not found.known:
        return _not_found()
    return render(request, "unsubscribe.html", {"state": "confirm", "token": token, "undo": False})


async def unsubscribe(request: Request) -> Response:
    """POST /u/{token}: one-click unsubscribe (RFC 8058), idempotent."""
    st = state(request)
    if not st.limits.public.hit(client_address(request)):
        return _too_many()
    token = request.path_params["token"]
    if not links.shaped(token):
        return _not_found()
    if not await _one_click_body(request):
        return PlainTextResponse("expected the form body List-Unsubscribe=One-Click (RFC 8058)", status_code=400)
    try:
        result = await write(request, suppressions.unsubscribe_by_token, st.ws, token, st.clock.now())
    except LockedError:
        # Until app writes go through beside a running worker (h/writers), a write can meet the worker's lock.
        return PlainTextResponse("busy: try again in a minute", status_code=503, headers={"Retry-After": "60"})
    if result.outcome is Outcome.UNKNOWN_TOKEN:
        return _not_found()
    view = {Outcome.UNSUBSCRIBED: "done", Outcome.ALREADY: "already", Outcome.NO_ADDRESS: "failed"}[result.outcome]
    return render(request, "unsubscribe.html", {"state": view, "token": token, "undo": False})


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when every scheduled stage ran within twice its interval, else 503 (JSON either way)."""
    st = state(request)
    result = await read(request, liveness.liveness, st.ws, st.clock.now())
    return JSONResponse(result.to_json(), status_code=200 if result.ok else 503)


# SEAM (issue #19): when app.suppressions.resubscribe_by_token and app.tracking.record_click / record_open are
# on main, add here: POST /u/{token}/undo, GET /c/{token}/{n}, GET /o/{token}.gif (same limit, same 404 rule).
ROUTES: list[BaseRoute] = [
    Route("/u/{token}", unsubscribe_page, methods=["GET"]),
    Route("/u/{token}", unsubscribe, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
]
