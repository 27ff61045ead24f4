"""The team pages (issue #19 items 6-9): dashboard, needs attention, customers, one customer, health.

Each endpoint calls ONE use case of :mod:`crm_automation.app` and renders
its frozen result — the same result ``report --json``, ``timeline`` and
``requeue`` print — so the pages and the CLI cannot disagree. The use cases
are synchronous and open the log per call, so they run in Starlette's
threadpool through :func:`~crm_automation.web.app.read` and, for the
writes (requeue, suppress), :func:`~crm_automation.web.app.write`, which
lets one write at a time go to the log.

Every route is wrapped in :func:`~crm_automation.web.auth.require_login`
(anonymous GETs go to the login page; POSTs also need the session's CSRF
token). A form's POST answers with a redirect back to its page (303, the
POST/redirect/GET pattern, so a reload does not post twice) and leaves a
one-line result in the session for that page to show once.

What a write cannot do right now (the log is locked by a running worker,
issue #19 "two writers") is a :class:`~crm_automation.errors.CrmError`: it
is shown as that one line, never as a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from crm_automation.app import customers, pipeline, quarantine, reports, sends, suppressions
from crm_automation.app.results import JsonValue
from crm_automation.errors import ConfigError, CrmError
from crm_automation.web import charts, i18n
from crm_automation.web.app import language, read, render, state, write
from crm_automation.web.auth import require_login

FLASH = "flash"  # session key: the last form's result, shown once by the page it redirects to
_PERCENT_KEYS = frozenset({"reply_rate"})  # funnel columns shown as a percentage (the value stays a fraction)


def _flash(request: Request, key: str, detail: str = "", *, ok: bool = True) -> None:
    request.session[FLASH] = {"key": key, "detail": detail, "ok": ok}


def _take_flash(request: Request) -> Mapping[str, Any] | None:
    found = request.session.pop(FLASH, None)
    return found if isinstance(found, dict) else None


def _local(tz: tzinfo) -> Callable[[datetime | None], str]:
    """A time as the team reads it: the workspace's timezone, to the minute (``timeline`` prints the same)."""

    def show(dt: datetime | None) -> str:
        return "" if dt is None else f"{dt.astimezone(tz):%Y-%m-%d %H:%M}"

    return show


def _label(t: i18n.Translator) -> Callable[[str, str], str]:
    """``label("stage_", job)``: the UI string for a value the log holds, or the value itself when it has none.

    A stage, kind or reason a newer worker writes (a digest job, a ``click``)
    then shows as its name instead of a missing-string key.
    """

    def label(prefix: str, value: str) -> str:
        return t(prefix + value) if prefix + value in i18n.EN else value

    return label


def _page(request: Request, template: str, context: Mapping[str, Any], *, status_code: int = 200) -> Response:
    ws = state(request).ws
    t = i18n.Translator(language(request))
    return render(request, template, {"when": _local(ws.cfg.timezone), "flash": _take_flash(request),
                                      "label": _label(t), **context}, status_code=status_code)


def customer_url(key: str) -> str:
    """Where one customer's page is (the key percent-encoded; ``@`` kept readable)."""
    return "/customers/" + quote(key, safe="@")


# ------------------------------------------------------------------------------------------------ dashboard
def _funnel_cell(key: str, value: JsonValue) -> str:
    if key in _PERCENT_KEYS and isinstance(value, int | float):
        return f"{value:.1%}"
    return "" if value is None else str(value)


def daily_charts(days: Sequence[Mapping[str, JsonValue]], t: Callable[[str], str]) -> list[Markup]:
    """The per-day charts from ``app.reports.daily(...).to_json()["days"]``: sent per day; the responses per day.

    One object per local day, oldest first (``date``, ``sent``, ``replied``,
    ``bounced``, ``unsubscribed``, ``clicked``). Days are labelled MM-DD.
    """

    def col(name: str) -> tuple[float, ...]:
        return tuple(float(v) if isinstance(v := d.get(name), int | float) else 0.0 for d in days)

    labels = [str(d.get("date", ""))[5:] for d in days]
    sent = charts.bar_chart(t("chart_sent_per_day"), labels, charts.Series(t("col_sent"), col("sent")))
    responses = charts.line_chart(t("chart_responses_per_day"), labels, [
        charts.Series(t("col_replied"), col("replied"), charts.PALETTE[1]),
        charts.Series(t("col_bounced"), col("bounced"), charts.PALETTE[2]),
        charts.Series(t("col_unsubscribed"), col("unsubscribed"), charts.PALETTE[3]),
        charts.Series(t("col_clicked"), col("clicked"), charts.PALETTE[4])])
    return [sent, responses]


@require_login
async def dashboard(request: Request) -> Response:
    """GET /: per campaign and step the numbers ``report`` shows, the reply rate, and the last 30 days' charts.

    One use case, :func:`crm_automation.app.reports.dashboard`: its funnel is
    ``report --json``'s ``campaigns`` (the table shows exactly these values),
    its days the charts' (local days of the workspace's time zone).
    """
    st = state(request)
    result = await read(request, reports.dashboard, st.ws, st.clock.now())
    rows = result.funnel.to_json()
    columns = list(rows[0]) if rows else []
    t = i18n.Translator(language(request))
    return _page(request, "dashboard.html", {
        "rows": rows, "columns": columns, "cell": _funnel_cell, "timezone": result.daily.timezone,
        "charts": daily_charts([d.to_json() for d in result.daily.days], t)})


# ------------------------------------------------------------------------------------------------ attention
@require_login
async def attention(request: Request) -> Response:
    """GET /attention: uncertain and failed sends (requeue), quarantined messages (download), recent replies."""
    st = state(request)
    result = await read(request, reports.attention, st.ws, st.clock.now())
    return _page(request, "attention.html", {"a": result, "customer_url": customer_url})


@require_login
async def requeue(request: Request) -> Response:
    """POST /attention/requeue (``id``): that send goes out again at the next send pass."""
    form = await request.form()
    raw = form.get("id")
    if not isinstance(raw, str) or not raw.strip().isdigit():
        _flash(request, "requeue_bad_id", str(raw or ""), ok=False)
        return RedirectResponse("/attention", status_code=303)
    try:
        result = await write(request, sends.requeue, state(request).ws, [int(raw)])
    except CrmError as e:
        _flash(request, "write_failed", str(e), ok=False)
    else:
        if result.count:
            _flash(request, "requeued", str(result.count))
        else:
            _flash(request, "requeue_nothing", "; ".join(result.problems), ok=False)
    return RedirectResponse("/attention", status_code=303)


@require_login
async def quarantined_eml(request: Request) -> Response:
    """GET /quarantine/{id}.eml: a quarantined message's bytes as received, as a download (message/rfc822)."""
    found = await read(request, quarantine.message, state(request).ws, int(request.path_params["qid"]))
    if found is None:
        return _page(request, "error.html", {"message_key": "not_found", "detail": ""}, status_code=404)
    return Response(found.raw, media_type="message/rfc822",
                    headers={"Content-Disposition": f'attachment; filename="{found.filename}"'})


# ------------------------------------------------------------------------------------------------ customers
@require_login
async def customer_search(request: Request) -> Response:
    """GET /customers?q=: customers whose name, company, address or any other value contains ``q``."""
    q = request.query_params.get("q", "")
    result = await read(request, customers.search, state(request).ws, q)
    return _page(request, "customers.html", {"result": result, "q": q, "customer_url": customer_url})


@require_login
async def customer(request: Request) -> Response:
    """GET /customers/{key}: the customer, their timeline as ``timeline`` prints it, suppress / unsuppress."""
    key = request.path_params["key"]
    try:
        profile = await read(request, customers.profile, state(request).ws, key)
    except ConfigError as e:
        return _page(request, "error.html", {"message_key": "customer_unknown", "detail": str(e)}, status_code=404)
    return _page(request, "customer.html", {"p": profile, "customer_url": customer_url})


def _back_to_customer(form: Mapping[str, Any]) -> str:
    key = form.get("key")
    return customer_url(key) if isinstance(key, str) and key else "/customers"


@require_login
async def suppress(request: Request) -> Response:
    """POST /customers/suppress (``email``, ``key``): the address goes on the list as ``manual``."""
    form = await request.form()
    email = form.get("email")
    st = state(request)
    try:
        by_user = functools.partial(suppressions.suppress, source=f"web:{request.session.get('user')}")
        result = await write(request, by_user, st.ws, [str(email or "")], "manual", st.clock.now())
    except CrmError as e:
        _flash(request, "write_failed", str(e), ok=False)
    else:
        if result.added:
            _flash(request, "suppressed", ", ".join(result.added))
        else:
            _flash(request, "suppress_nothing", "; ".join(result.rejected), ok=not result.rejected)
    return RedirectResponse(_back_to_customer(form), status_code=303)


@require_login
async def unsuppress(request: Request) -> Response:
    """POST /customers/unsuppress (``email``, ``key``): the address comes off the list (it may be mailed again)."""
    form = await request.form()
    email = form.get("email")
    try:
        result = await write(request, suppressions.unsuppress, state(request).ws, [str(email or "")])
    except CrmError as e:
        _flash(request, "write_failed", str(e), ok=False)
    else:
        _flash(request, "unsuppressed" if result.removed else "unsuppress_nothing", ", ".join(result.removed))
    return RedirectResponse(_back_to_customer(form), status_code=303)


# ------------------------------------------------------------------------------------------------ health
@require_login
async def health(request: Request) -> Response:
    """GET /health: each stage's last run, its result and problems, the queue, the quarantine."""
    st = state(request)
    result = await read(request, reports.health, st.ws, st.clock.now())
    return _page(request, "health.html", {"h": result})


# ------------------------------------------------------------------------------------------------ pipeline
@require_login
async def pipeline_page(request: Request) -> Response:
    """GET /pipeline?since=DATE: ``report pipeline --json``'s numbers, by stage and owner (issue #21)."""
    st = state(request)
    raw = request.query_params.get("since", "").strip()
    since = None
    if raw:
        try:
            since = datetime.fromisoformat(raw)
        except ValueError:
            return _page(request, "error.html", {"message_key": "pipeline_bad_since", "detail": raw},
                         status_code=400)
        since = since if since.tzinfo else since.replace(tzinfo=st.ws.cfg.timezone)  # as the CLI's --since
    try:
        result = await read(request, pipeline.pipeline, st.ws, st.clock.now(), since)
    except ConfigError as e:
        return _page(request, "error.html", {"message_key": "pipeline_bad_since", "detail": str(e)},
                     status_code=400)
    return _page(request, "pipeline.html", {"p": result.to_json(), "since": raw})


ROUTES = [
    Route("/", dashboard, methods=["GET"]),
    Route("/attention", attention, methods=["GET"]),
    Route("/attention/requeue", requeue, methods=["POST"]),
    Route("/quarantine/{qid:int}.eml", quarantined_eml, methods=["GET"]),
    Route("/customers", customer_search, methods=["GET"]),
    Route("/customers/suppress", suppress, methods=["POST"]),
    Route("/customers/unsuppress", unsuppress, methods=["POST"]),
    Route("/customers/{key:path}", customer, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/pipeline", pipeline_page, methods=["GET"]),
]
