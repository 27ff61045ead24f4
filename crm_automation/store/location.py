"""Where the activity log is: a SQLite file's path, or a PostgreSQL server's URL (issue #20).

One place decides which a ``[workspace] database`` value is, and how a URL
is shown in a message: never with its password (libpq accepts one as
``user:password@`` and as ``?password=``; SPEC §3: secrets never in output).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRESQL_SCHEMES = ("postgresql", "postgres")  # what libpq accepts (PostgreSQL docs, 34.1.1)
_SECRETS = ("password", "sslpassword")  # libpq's connection parameters that carry a secret (34.1.2)


def scheme(value: str) -> str | None:
    """The URL scheme of ``value`` in lower case, or None when it is a path."""
    m = _URL.match(value)
    return m.group(1).lower() if m else None


def is_postgresql(value: str) -> bool:
    """Whether ``value`` names a PostgreSQL database rather than a SQLite file."""
    return scheme(value) in POSTGRESQL_SCHEMES


def has_password(url: str) -> bool:
    """Whether the URL carries a password (``user:pw@`` or a ``password``/``sslpassword`` parameter)."""
    parts = urlsplit(url)
    return parts.password is not None or any(p.partition("=")[0].lower() in _SECRETS for p in parts.query.split("&"))


def shown(url: str) -> str:
    """The URL as messages show it: any password as ``***``; a URL without one unchanged."""
    if not has_password(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        who, _, where = netloc.rpartition("@")
        netloc = f"{who.split(':', 1)[0]}:***@{where}"
    query = "&".join(f"{p.partition('=')[0]}=***" if p.partition("=")[0].lower() in _SECRETS else p
                     for p in parts.query.split("&") if p)
    return urlunsplit(parts._replace(netloc=netloc, query=query))
