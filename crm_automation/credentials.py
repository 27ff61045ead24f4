"""Secrets for IMAP and SMTP: a password from the environment or an OAuth2 token from a command.

Gmail and Microsoft 365 are ending password logins, so ``oauth2_token_command``
runs a command the admin chooses (e.g. a token helper) and uses what it prints
as the XOAUTH2 access token. Neither value is ever logged or stored.
"""

from __future__ import annotations

import os
import shlex
import shutil
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


def login_problems(section: str, s: ServerLogin) -> list[str]:
    """What would stop :func:`load_credentials` at connect time, found without connecting (``check``, issue #17).

    Before this, only ``run`` found out, when it logged in: a variable named
    by ``password_env`` that is unset or empty in this environment, or an
    ``oauth2_token_command`` whose program is not installed. Neither the
    password nor the token is read into a message; the command is not run.
    """
    if not s.username:
        return []
    cmd = s.oauth2_token_command
    if cmd:
        try:
            argv = shlex.split(cmd)
        except ValueError as e:
            return [f"{section}.oauth2_token_command cannot be split into a program and its arguments ({e}; "
                    f"expected a command line with balanced quotes)"]
        if not argv:
            return [f"{section}.oauth2_token_command is empty (expected a command that prints an access token)"]
        prog = argv[0]
        found = shutil.which(prog) if os.sep not in prog else (prog if os.access(prog, os.X_OK) else None)
        if found is None:
            where = "is not an executable file" if os.sep in prog else "is not found on PATH"
            return [f"{section}.oauth2_token_command: the program {prog!r} {where} (expected an installed program "
                    f"that prints an access token; cron and services often run with a shorter PATH: give the full "
                    f"path)"]
        return []
    name = s.password_env
    if not name:
        return [f"{section}.password_env is required with username"]
    value = os.environ.get(name)
    if value is None:
        return [f"{section}.password_env names ${name}, which is not set in this environment (expected the "
                f"password in it: export {name}=... where crm-automation runs; the value is never logged)"]
    if not value.strip():
        return [f"{section}.password_env names ${name}, which is set but empty (expected the password in it)"]
    return []
