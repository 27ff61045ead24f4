"""The team pages (issue #19 items 6-9). Placeholder: the dashboard route only, behind a login.

Replaced by the team-pages branch (dashboard, attention, customers, health);
every route here is wrapped in :func:`~crm_automation.web.auth.require_login`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crm_automation.web.app import render
from crm_automation.web.auth import require_login


@require_login
async def dashboard(request: Request) -> Response:
    """GET /: the dashboard (placeholder)."""
    return render(request, "dashboard.html")


ROUTES = [Route("/", dashboard, methods=["GET"])]
