"""What a link in a sent message names, read without changing anything (issue #19).

``serve``'s ``GET /u/{token}`` shows a confirmation page only for a token
that names one of our sends: an unknown or forged one gets a plain 404, and
the page never says whose send it is (a forwarded link must not show the
customer's address to whoever holds it). A GET changes nothing: mail
scanners open every link in a message within minutes (Mailtrain #1195), so
only the page's POST unsubscribes (:func:`~crm_automation.app.suppressions.unsubscribe_by_token`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject
from crm_automation.workspace import Workspace

# The shape of the tokens we write (``crm.`` and 32 hex digits, crm_automation.tokens) and of any local part
# an older version wrote: anything else is answered without opening the log.
_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{7,63}")


@dataclass(frozen=True, slots=True)
class Link:
    """Whether a token names one of our sends (and nothing about whose)."""

    token: str
    known: bool

    def to_json(self) -> JsonObject:
        """Only whether it is known."""
        return {"known": self.known}


def shaped(token: str) -> bool:
    """Whether ``token`` could be one of ours at all (letters, digits, ``._-``; 8 to 64 characters)."""
    return _SHAPE.fullmatch(token) is not None


def link(ws: Workspace, token: str) -> Link:
    """Look ``token`` up in the log, read-only (works beside a running worker)."""
    if not shaped(token):
        return Link(token, known=False)
    with reading(ws) as store:
        return Link(token, known=store.send_for_token(token) is not None)
