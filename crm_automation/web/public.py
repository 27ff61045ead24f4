"""The public endpoints (no login, no cookie): one-click unsubscribe, clicks, opens, ``/healthz`` (issue #19)."""

from __future__ import annotations

from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
