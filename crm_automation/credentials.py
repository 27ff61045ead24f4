"""Secrets for IMAP and SMTP: a password from the environment or an OAuth2 token from a command.

Gmail and Microsoft 365 are ending password logins, so ``oauth2_token_command``
runs a command the admin chooses (e.g. a token helper) and uses what it prints
as the XOAUTH2 access token. Neither value is ever logged or stored.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from crm_automation.errors import ConfigError, ServiceError


@dataclass(frozen=True, slots=True)
class Credentials:
    """A login: exactly one of ``password`` or ``token`` is set (both None: no login)."""

    username: str | None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


class ServerLogin(Protocol):
    """The login keys of a ``[mailbox]`` or ``[outbound]`` section (``config.MailboxSection``, ``OutboundSection``)."""

    username: str | None
    password_env: str | None
    oauth2_token_command: str | None


def token_from_command(section: str, command: str, timeout: float = 60.0) -> str:
    """Run ``oauth2_token_command`` and return the first line it prints."""
    try:
        proc = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise ServiceError(f"{section}.oauth2_token_command could not be run: {type(e).__name__}: {e}") from None
    token = proc.stdout.strip().splitlines()[0].strip() if proc.stdout.strip() else ""
    if proc.returncode != 0 or not token:
        raise ServiceError(
            f"{section}.oauth2_token_command exited with status {proc.returncode} and printed no token",
            hint="run the command by hand to see why; it must print an access token on standard output",
        )
    return token


def load_credentials(section: str, s: ServerLogin) -> Credentials:
    """Credentials for a ``[mailbox]`` or ``[outbound]`` server section."""
    from crm_automation.config import secret_from_env

    username = s.username
    if not username:
        return Credentials(None)
    cmd = s.oauth2_token_command
    if cmd:
        return Credentials(username, token=token_from_command(section, cmd))
    env = s.password_env
    if not env:
        raise ConfigError(f"{section}.password_env is required with username")
    return Credentials(username, password=secret_from_env(section, env))
