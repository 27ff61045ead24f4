"""``crm-automation serve``: the web app (issue #19) — one-click unsubscribe, and the team's pages.

- :func:`create_app`: the Starlette app for a workspace (reads the secrets
  from the environment; a missing one is a ConfigError before anything listens).
- :func:`bind`: the listening socket, with a clear ConfigError for a port in
  use or an address this machine does not have.
- :func:`make_server`: the uvicorn server as ``serve`` runs it (the tests'
  fixture runs the same one): proxy headers believed from
  ``[serve] trusted_proxies`` only, uvicorn's access log off (tokens are in
  URLs; :class:`~crm_automation.web.app.RequestLog` logs at ``-v`` without them).
- :func:`serve`: the three together, until Ctrl-C or SIGTERM.

The package sits beside :mod:`crm_automation.app` (layer 1): it calls the use
cases and renders their results, and never opens the store itself.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from crm_automation.errors import ConfigError
from crm_automation.workspace import Clock, Workspace

if TYPE_CHECKING:
    import uvicorn

__all__ = ["bind", "create_app", "make_server", "serve"]

log = logging.getLogger("crm_automation.web")
MIN_SECRET_LENGTH = 16
_HOW_TO_SET_KEY = (
    "set it to a long random value, e.g. `export {name}=$(python3 -c 'import secrets; "
    "print(secrets.token_urlsafe(32))')`, in the environment of `crm-automation serve` (the systemd "
    "unit's EnvironmentFile=)")


def _secret(cfg_path: Path, name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{cfg_path}: serve.secret_env: the environment variable {name} is not set or empty "
                          "(expected the secret that signs the team's login cookies)",
                          hint=_HOW_TO_SET_KEY.format(name=name))
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{cfg_path}: serve.secret_env: the environment variable {name} holds "
                          f"{len(value)} characters (expected at least {MIN_SECRET_LENGTH}, random)",
                          hint=_HOW_TO_SET_KEY.format(name=name))
    return value


def _admin_password(cfg_path: Path, name: str | None) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{cfg_path}: serve.admin_password_env: the environment variable {name} is not set or "
                          "empty (expected the password of the `admin` login)",
                          hint=f"set {name} in the environment of `crm-automation serve`, or remove "
                               "admin_password_env and use [serve] users")
    return value


def create_app(config_path: str | Path | None = None, clock: Clock | None = None) -> Starlette:
    """The app for the workspace at ``config_path`` (found as the CLI finds it when None).

    Raises ConfigError for a broken workspace or a missing secret, so
    ``serve`` fails before it listens, with a message and no traceback.
    """
    from starlette.middleware import Middleware

    from crm_automation.web import app, auth, oneclick, pages, public

    ws = Workspace.load(config_path)
    s = ws.cfg.serve
    secret = _secret(ws.cfg.path, s.secret_env)
    admin = _admin_password(ws.cfg.path, s.admin_password_env)
    if not s.users and admin is None:
        log.warning("%s: [serve] has no users and no admin_password_env: nobody can log in to the team pages "
                    "(the public unsubscribe links work)", ws.cfg.path)
    https = (s.public_url or "").startswith("https://")
    web = app.WebState(ws=ws, clock=clock or Clock(), env=app.template_env(), users=dict(s.users),
                       admin_password=admin, https=https)
    return app.build(web, secret, [*auth.ROUTES, *public.ROUTES, *pages.ROUTES],
                     front=[Middleware(oneclick.OneClick, web=web)])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; ConfigError (exit 2) when the port is taken or not ours."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"serve: cannot listen on {host!r}: {e.strerror} (expected an address of this machine, "
                          "e.g. 127.0.0.1)", hint="set [serve] host or --host") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"serve: port {port} on {host} is already in use (another `serve`, or another "
                              "program)", hint="stop that program, or choose another port with --port or "
                                               "[serve] port (and point the reverse proxy at it)") from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"serve: not allowed to listen on port {port}: ports below 1024 need root",
                              hint="use a port above 1024 (the default is 8080) behind the reverse proxy") from None
        raise ConfigError(f"serve: cannot listen on {host}:{port}: {e.strerror}",
                          hint="check [serve] host (an address of this machine) or use --host") from None
    sock.set_inheritable(True)
    return sock


def make_server(app: Starlette, *, trusted_proxies: list[str] | None = None) -> uvicorn.Server:
    """The uvicorn server ``serve`` runs, on sockets from :func:`bind`.

    ``proxy_headers``: the client address and scheme come from
    ``X-Forwarded-For`` / ``X-Forwarded-Proto`` only when the connection is
    from ``trusted_proxies`` (uvicorn's ``forwarded_allow_ips``); from anyone
    else the headers are ignored. Access log off, no ``Server`` header. The
    app's lifespan runs (:func:`~crm_automation.web.app.warmed`: ready before
    the first request); no WebSocket protocol (the app has no WebSocket, and
    loading one costs start-up time).
    """
    import uvicorn

    trusted = trusted_proxies if trusted_proxies is not None else ["127.0.0.1", "::1"]
    config = uvicorn.Config(app, proxy_headers=True, forwarded_allow_ips=trusted, access_log=False,
                            log_config=None, server_header=False, lifespan="on", ws="none",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(config_path: str | Path | None = None, *, host: str | None = None, port: int | None = None) -> None:
    """Run the app until Ctrl-C or SIGTERM: ``crm-automation serve``."""
    app = create_app(config_path)
    cfg = app.state.web.ws.cfg.serve
    host = host if host is not None else cfg.host
    port = port if port is not None else cfg.port
    sock = bind(host, port)
    port = sock.getsockname()[1]  # the one the kernel chose for --port 0
    server = make_server(app, trusted_proxies=list(cfg.trusted_proxies))
    shown = f"[{host}]" if ":" in host else host
    log.info("serving %s on http://%s:%d%s", app.state.web.ws.cfg.path, shown, port,
             f" (published at {cfg.public_url})" if cfg.public_url else "")
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again for the handler it found
    # installed; a quiet one here makes a stop by systemd or Ctrl-C exit 0, as a stopped `run` does.
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stopped.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.state.web.kept.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        log.info("serve stopped (%s)", signal.Signals(stopped[0]).name)
