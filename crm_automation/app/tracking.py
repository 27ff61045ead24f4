"""A tracked link followed, a message opened (issue #19): what ``serve``'s ``/c/`` and ``/o/`` endpoints call.

Campaigns with ``track_clicks`` have their links rewritten to
``{public_url}/c/{token}/{n}`` and their original URLs recorded with the
send (:mod:`crm_automation.tracking`); ``track_opens`` adds
``{public_url}/o/{token}.gif``. Here a request is resolved back to its
send, the first click on each link (and the first open of each send) is
logged as a ``click`` (``open``) activity with
:class:`~crm_automation.models.TrackedDetails` (``send_id``, ``n``,
``url``), and a click's answer is the stored URL to redirect to, every
time. "Once" is decided by one statement of the store, not by reading
first, so two requests at the same instant log one activity.

Clicks and opens change nothing else: no suppression, no status, no
stopped sequence. Opens are unreliable (mail clients prefetch images; Apple
Mail Privacy Protection opens everything) and are counted, never acted on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_automation.app.access import writing
from crm_automation.app.results import JsonObject
from crm_automation.models import Kind, TrackedDetails
from crm_automation.tokens import is_token
from crm_automation.tracking import trackable

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace

MAX_LINKS = 10_000  # a link number beyond this is no link of ours (checked before any lookup)


class TrackOutcome(enum.StrEnum):
    """What a tracked request did."""

    RECORDED = "recorded"  # the first click on this link of this send (first open of this send): logged
    ALREADY = "already"  # seen before: nothing logged again (a click still redirects)
    UNKNOWN = "unknown"  # malformed or unknown token, or no such link of that send: answer 404


@dataclass(frozen=True, slots=True)
class Clicked:
    """A tracked link's request: the outcome and, unless unknown, the URL to redirect to."""

    token: str
    n: int
    outcome: TrackOutcome
    url: str | None = None
    customer: str | None = None
    campaign: str | None = None
    step: int | None = None

    def to_json(self) -> JsonObject:
        """The outcome, where to go, and the send it concerned."""
        return {"outcome": self.outcome.value, "n": self.n, "url": self.url, "customer": self.customer,
                "campaign": self.campaign, "step": self.step}


@dataclass(frozen=True, slots=True)
class Opened:
    """An open pixel's request: the outcome, and the send it concerned (the pixel is served whatever it says)."""

    token: str
    outcome: TrackOutcome
    customer: str | None = None
    campaign: str | None = None
    step: int | None = None

    def to_json(self) -> JsonObject:
        """The outcome and the send it concerned."""
        return {"outcome": self.outcome.value, "customer": self.customer, "campaign": self.campaign,
                "step": self.step}


def record_click(ws: Workspace, token: str, n: int, now: datetime) -> Clicked:
    """Resolve ``/c/{token}/{n}`` to the URL recorded with that send, logging the first click on it.

    ``unknown`` for a token not shaped as ours or naming no campaign send,
    and for a link number the send does not have (all before anything is
    written); the web answers those with a plain 404, never a redirect. A
    stored URL that is no longer :func:`~crm_automation.tracking.trackable`
    (a row edited by hand) is unknown too: only http(s) URLs without
    CR/LF or quotes ever reach a ``Location`` header.
    """
    if not is_token(token) or not 0 <= n < MAX_LINKS:
        return Clicked(token, n, TrackOutcome.UNKNOWN)
    with writing(ws) as store:
        send = store.send_by_token(token)
        url = store.tracked_link(send.send_id, n) if send is not None else None
        if send is None or url is None or not trackable(url):
            return Clicked(token, n, TrackOutcome.UNKNOWN)
        with store.transaction():
            first = store.mark_clicked(send.send_id, n, now)
            if first:
                store.add_activity(kind=Kind.CLICK.value, occurred_at=now, now=now, customer_key=send.customer_key,
                                   subject=url, campaign=send.campaign, step=send.step, source="tracked link",
                                   details=TrackedDetails(send.send_id, n, url))
    return Clicked(token, n, TrackOutcome.RECORDED if first else TrackOutcome.ALREADY, url, send.customer_key,
                   send.campaign, send.step)


def record_open(ws: Workspace, token: str, now: datetime) -> Opened:
    """Log the first open of the send ``/o/{token}.gif`` names; ``unknown`` for a token of no campaign send."""
    if not is_token(token):
        return Opened(token, TrackOutcome.UNKNOWN)
    with writing(ws) as store:
        send = store.send_by_token(token)
        if send is None:
            return Opened(token, TrackOutcome.UNKNOWN)
        with store.transaction():
            first = store.mark_opened(send.send_id, now)
            if first:
                store.add_activity(kind=Kind.OPEN.value, occurred_at=now, now=now, customer_key=send.customer_key,
                                   campaign=send.campaign, step=send.step, source="open pixel",
                                   details=TrackedDetails(send.send_id))
    return Opened(token, TrackOutcome.RECORDED if first else TrackOutcome.ALREADY, send.customer_key,
                  send.campaign, send.step)
