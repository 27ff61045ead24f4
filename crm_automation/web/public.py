"""The public endpoints (no login, no cookie): one-click unsubscribe and ``/healthz`` (issue #19).

``/u/{token}`` — RFC 8058 one-click unsubscribe:

- ``POST`` with the form body ``List-Unsubscribe=One-Click`` (urlencoded or
  multipart, RFC 8058 §3.2) unsubscribes at once through
  :func:`crm_automation.app.suppressions.unsubscribe_by_tokens` (the
  suppression, the email status and an ``unsubscribe`` activity, in one
  transaction with the POSTs that queued meanwhile: group commit,
  :mod:`crm_automation.web.batching`) and answers 200 once that
  transaction has committed: with a line of text in the request's language
  (mail providers read only the status), or, for our confirmation page's
  own POST (marked ``page=1``), with the page and its undo button.
  Idempotent: a second POST
  changes nothing and answers 200 again. A provider's exact RFC 8058 POST
  is answered this way before the router (:mod:`crm_automation.web.oneclick`,
  issue #19 "Performance"), with the same bytes. No cookie, no CSRF token: mail
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

- After unsubscribing, the page offers an undo: ``POST /u/{token}/undo``
  (:func:`crm_automation.app.suppressions.resubscribe_by_token`), which
  undoes this link's unsubscribe only.

``/c/{token}/{n}`` (a tracked link: the first click logged, then a 302 to
the stored URL) and ``/o/{token}.gif`` (the first open logged; a 1x1 GIF)
call :mod:`crm_automation.app.tracking`; unknown ones are a plain 404, and
they share ``/u/``'s rate limit.

``GET /healthz`` — :func:`crm_automation.app.liveness.liveness` as JSON:
200 when every scheduled stage ran within twice its interval, else 503.
No login; no customer data in it.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from crm_automation.app import links, liveness, suppressions, tracking
from crm_automation.app.suppressions import Outcome, UndoOutcome
from crm_automation.app.tracking import TrackOutcome
from crm_automation.errors import LockedError
from crm_automation.tokens import is_token
from crm_automation.web.app import client_address, language, read, render, state, write
from crm_automation.web.i18n import Translator

ONE_CLICK = ("List-Unsubscribe", "One-Click")  # RFC 8058 §3.1: the POST body's one field
MAX_BODY = 16 * 1024  # a one-click body is 26 bytes; anything much bigger is not one


def not_found() -> Response:
    """404 for a token that names no send (or is not shaped as ours): plain, the same for GET and POST."""
    return PlainTextResponse("not found", status_code=404)


def too_many() -> Response:
    """429 with Retry-After: the client is past :data:`~crm_automation.web.limits.UNSUBSCRIBE_PER_MINUTE`."""
    return PlainTextResponse("too many requests: wait a minute and try again", status_code=429,
                             headers={"Retry-After": "60"})


def _admitted(request: Request) -> str | Response:
    """The request's token, or the answer it gets first: 429 past the client's rate, 404 for a malformed token.

    Every public endpoint starts here: the rate is counted before anything
    else, and a token that cannot be ours never reaches the log.
    """
    if not state(request).limits.public.hit(client_address(request)):
        return too_many()
    token: str = request.path_params["token"]
    return token if is_token(token) else not_found()


async def _one_click_form(request: Request) -> FormData | None:
    """The request's form when it is RFC 8058's ``List-Unsubscribe=One-Click`` (extra fields allowed), else None."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return None
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        return None
    form = await request.form(max_files=0, max_fields=20)
    return form if form.get(ONE_CLICK[0]) == ONE_CLICK[1] else None


async def unsubscribe_page(request: Request) -> Response:
    """GET /u/{token}: the confirmation page; changes nothing."""
    st = state(request)
    token = _admitted(request)
    if isinstance(token, Response):
        return token
    found = await read(request, links.link, st.ws, token)
    if not found.known:
        return not_found()
    return render(request, "unsubscribe.html", {"state": "confirm", "token": token, "undo": False})


async def unsubscribe(request: Request) -> Response:
    """POST /u/{token}: one-click unsubscribe (RFC 8058), idempotent."""
    st = state(request)
    token = _admitted(request)
    if isinstance(token, Response):
        return token
    form = await _one_click_form(request)
    if form is None:
        return PlainTextResponse("expected the form body List-Unsubscribe=One-Click (RFC 8058)", status_code=400)
    try:
        result = await st.unsubscribes.submit(token)  # group commit: with the POSTs that queued meanwhile
    except LockedError:  # the log stayed busy past the busy timeout (another program held it): providers retry
        return busy()
    if result.outcome is Outcome.UNKNOWN_TOKEN:
        return not_found()
    view = VIEWS[result.outcome]
    if form.get("page") != "1":  # a mail provider's POST (RFC 8058 §3.2): only the status is read
        return plain_answer(view, language(request))
    return render(request, "unsubscribe.html", {"state": view, "token": token, "undo": view != "failed"})


# What each outcome of a POST shows (the page's state; the plain answer's lines).
VIEWS = {Outcome.UNSUBSCRIBED: "done", Outcome.ALREADY: "already", Outcome.NO_ADDRESS: "failed"}

# What a bare one-click POST gets: a line of text in the request's language, not the page. Mail providers POST
# from their servers and read only the status; the page (with its undo button) is for our confirmation form,
# which marks its POST with ``page=1``. Rendering a page nobody sees cost a tenth of serve's CPU a POST in a
# burst, CPU the worker sending beside it needs (issue #19, benchmarks/bench_unsubscribe.py).
_PLAIN: dict[str, tuple[str, ...]] = {"done": ("unsub_done", "unsub_done_explain"),
                                      "already": ("unsub_already", "unsub_done_explain"),
                                      "failed": ("unsub_failed",)}


def plain_answer(view: str, lang: str) -> Response:
    """A mail provider's answer to a one-click POST: one line of text in ``lang`` (see :data:`_PLAIN`)."""
    t = Translator(lang)
    return PlainTextResponse(" ".join(t(key) for key in _PLAIN[view]))


def busy() -> Response:
    """503 with Retry-After: the log stayed busy past the busy timeout (another program held it); clients retry."""
    return PlainTextResponse("busy: try again in a minute", status_code=503, headers={"Retry-After": "60"})


async def undo(request: Request) -> Response:
    """POST /u/{token}/undo: the confirmation page's "I did not mean to" (resubscribe_by_token).

    Undoes only this link's own unsubscribe: an address suppressed another
    way (a bounce, an emailed 退订, the admin) stays suppressed and the page
    says to reply instead. No body needed: only our page's form posts here.
    """
    st = state(request)
    token = _admitted(request)
    if isinstance(token, Response):
        return token
    try:
        result = await write(request, suppressions.resubscribe_by_token, st.ws, token, st.clock.now())
    except LockedError:
        return busy()
    if result.outcome is UndoOutcome.UNKNOWN_TOKEN:
        return not_found()
    view = {UndoOutcome.RESUBSCRIBED: "resubscribed", UndoOutcome.NOT_SUPPRESSED: "resubscribed",
            UndoOutcome.NOT_THIS_LINK: "not_this_link", UndoOutcome.NO_ADDRESS: "failed"}[result.outcome]
    return render(request, "unsubscribe.html", {"state": view, "token": token, "undo": False})


async def click(request: Request) -> Response:
    """GET /c/{token}/{n}: log the first click on a tracked link (app.tracking.record_click), redirect (302)."""
    st = state(request)
    token = _admitted(request)
    if isinstance(token, Response):
        return token
    n = request.path_params["n"]
    try:
        result = await write(request, tracking.record_click, st.ws, token, n, st.clock.now())
    except LockedError:  # the log stayed busy past the busy timeout: the reader may try the link again
        return busy()
    if result.outcome is TrackOutcome.UNKNOWN or result.url is None:
        return not_found()
    return RedirectResponse(result.url, status_code=302)


# The smallest transparent GIF: 1x1, one colour, transparent (GIF89a, 43 bytes).
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


async def opened(request: Request) -> Response:
    """GET /o/{token}.gif: log the first open of a send (app.tracking.record_open); a 1x1 transparent GIF."""
    st = state(request)
    token = _admitted(request)
    if isinstance(token, Response):
        return token
    try:
        result = await write(request, tracking.record_open, st.ws, token, st.clock.now())
    except LockedError:  # the log stayed busy: the open goes unrecorded, the mail still shows (opens are a hint)
        return Response(PIXEL, media_type="image/gif")
    if result.outcome is TrackOutcome.UNKNOWN:
        return not_found()
    return Response(PIXEL, media_type="image/gif")


async def healthz(request: Request) -> Response:
    """GET /healthz: 200 when every scheduled stage ran within twice its interval, else 503 (JSON either way)."""
    st = state(request)
    result = await read(request, liveness.liveness, st.ws, st.clock.now())
    return JSONResponse(result.to_json(), status_code=200 if result.ok else 503)


ROUTES: list[BaseRoute] = [
    Route("/u/{token}", unsubscribe_page, methods=["GET"]),
    Route("/u/{token}", unsubscribe, methods=["POST"]),
    Route("/u/{token}/undo", undo, methods=["POST"]),
    Route("/c/{token}/{n:int}", click, methods=["GET"]),
    Route("/o/{token}.gif", opened, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]
