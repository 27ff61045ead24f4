"""What a link in a sent message names, read without changing anything (issue #19).

``serve``'s ``GET /u/{token}`` shows a confirmation page only for a token
that names one of our sends: an unknown or forged one gets a plain 404, and
the page never says whose send it is (a forwarded link must not show the
customer's address to whoever holds it). A GET changes nothing: mail
scanners open every link in a message within minutes (Mailtrain #1195), so
only the page's POST unsubscribes (:func:`~crm_automation.app.suppressions.unsubscribe_by_token`).
"""

from __future__ import annotations

from dataclasses import dataclass

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject
from crm_automation.tokens import is_token
from crm_automation.workspace import Workspace


@dataclass(frozen=True, slots=True)
class Link:
    """Whether a token names one of our sends (and nothing about whose)."""

    token: str
    known: bool

    def to_json(self) -> JsonObject:
        """Only whether it is known."""
        return {"known": self.known}


def link(ws: Workspace, token: str) -> Link:
    """Look ``token`` up in the log, read-only (works beside a running worker)."""
    if not is_token(token):  # not shaped as ours: answered without opening the log
        return Link(token, known=False)
    with reading(ws) as store:
        return Link(token, known=store.send_for_token(token) is not None)
