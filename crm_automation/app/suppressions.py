"""The suppression list as people change it: ``suppress``, ``unsuppress``, the list, an unsubscribe link and its undo.

Writes go through while a worker runs (:func:`~crm_automation.app.access.writing`,
issue #19): each is one short transaction, and the send pass looks the
address up again at the moment it hands a message over, so a suppression
recorded mid-pass is honoured. The rule of
what a reason does to the customer's email status is
:mod:`crm_automation.suppression`'s, applied here, never restated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from crm_automation import suppression
from crm_automation.app.access import KeptWriter, reading, writing
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.effects import status_for
from crm_automation.errors import ConfigError
from crm_automation.fieldtypes import address_problem
from crm_automation.models import InboundDetails, Kind, ResubscribeDetails, SuppressionReason
from crm_automation.tokens import is_token

if TYPE_CHECKING:
    from crm_automation.store.repo import Store
    from crm_automation.store.sends import SentRef
    from crm_automation.workspace import Workspace

REASONS = suppression.REASONS
_UNSUBSCRIBED = SuppressionReason.UNSUBSCRIBED  # an unsubscribe link's reason: as an emailed request's


@dataclass(frozen=True, slots=True)
class Suppressed:
    """What ``suppress add`` did: addresses newly on the list, and the refused ones with why."""

    added: tuple[str, ...]
    rejected: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """``suppress add --json``."""
        return {"added": list(self.added), "rejected": list(self.rejected)}


@dataclass(frozen=True, slots=True)
class Unsuppressed:
    """What ``suppress remove`` did: the addresses taken off the list (they may be mailed again)."""

    removed: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """``suppress remove --json``."""
        return {"removed": list(self.removed)}


@dataclass(frozen=True, slots=True)
class SuppressedAddress:
    """One entry of the list: the address, why, since when and who said so."""

    email: str
    reason: str
    at: datetime | None
    source: str


@dataclass(frozen=True, slots=True)
class Suppressions:
    """The suppression list, oldest first: all of it, or one page (``total``: the whole list's length).

    A page (issue #19: the web page lists tens of thousands of bounced
    addresses on a big log) is ``limit`` entries from ``offset``; ``total``
    is None when the whole list was asked for.
    """

    items: tuple[SuppressedAddress, ...]
    total: int | None = None
    offset: int = 0

    def to_json(self) -> JsonObject:
        """``suppress list --json``; a page adds ``total`` and ``offset``."""
        out: JsonObject = {"suppressions": [{"email": i.email, "reason": i.reason, "at": utc_text(i.at),
                                             "source": i.source} for i in self.items]}
        if self.total is not None:
            out |= {"total": self.total, "offset": self.offset}
        return out


class Outcome(enum.StrEnum):
    """What an unsubscribe link did."""

    UNSUBSCRIBED = "unsubscribed"  # the address is suppressed now, the customer's status set, the click logged
    ALREADY = "already"  # the address was on the list already: nothing changed
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - not a secret: the token names no send (mistyped, or from another workspace)
    NO_ADDRESS = "no_address"  # the token's customer has no valid address in the log


class UndoOutcome(enum.StrEnum):
    """What undoing an unsubscribe link did (:func:`resubscribe_by_token`)."""

    RESUBSCRIBED = "resubscribed"  # the link's unsubscribe is undone: off the list, status back, logged
    NOT_SUPPRESSED = "not_suppressed"  # the address is not on the list (undone already, or never unsubscribed)
    NOT_THIS_LINK = "not_this_link"  # on the list for another reason or by another way: left as it is
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 - not a secret: malformed, or names no send
    NO_ADDRESS = "no_address"  # the token's customer has no valid address in the log


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The result of an unsubscribe link: the outcome, and whose send the token named."""

    token: str
    outcome: Outcome
    customer: str | None = None
    email: str | None = None
    campaign: str | None = None
    step: int | None = None

    def to_json(self) -> JsonObject:
        """The outcome and the send it concerned (no other customer data)."""
        return {"outcome": self.outcome.value, "customer": self.customer, "email": self.email,
                "campaign": self.campaign, "step": self.step}


@dataclass(frozen=True, slots=True)
class Resubscribed:
    """The result of undoing an unsubscribe link: the outcome, and whose send the token named."""

    token: str
    outcome: UndoOutcome
    customer: str | None = None
    email: str | None = None
    campaign: str | None = None
    step: int | None = None

    def to_json(self) -> JsonObject:
        """The outcome and the send it concerned (no other customer data)."""
        return {"outcome": self.outcome.value, "customer": self.customer, "email": self.email,
                "campaign": self.campaign, "step": self.step}


def suppress(ws: Workspace, emails: Sequence[str], reason: str, now: datetime, *, source: str = "cli") -> Suppressed:
    """Suppress the valid addresses; ``unsubscribed``/``bounced`` also set the matching customers' email status."""
    with writing(ws) as store:
        result = suppression.add(store, tuple(emails), reason, now, source)
    return Suppressed(tuple(result.added), tuple(result.rejected))


def unsuppress(ws: Workspace, emails: Sequence[str]) -> Unsuppressed:
    """Take addresses off the list; their customers' email status goes back to ``ok``."""
    with writing(ws) as store:
        return Unsuppressed(tuple(suppression.remove(store, tuple(emails))))


def suppressions(ws: Workspace, *, limit: int | None = None, offset: int = 0) -> Suppressions:
    """The suppression list, or ``limit`` entries of it from ``offset`` (read-only: works beside a running worker)."""
    if (limit is not None and limit < 1) or offset < 0:
        raise ConfigError(f"suppression list: limit {limit}, offset {offset} is not a page "
                          "(expected a limit of 1 or more and an offset of 0 or more)")
    with reading(ws) as store:
        if limit is None:
            return Suppressions(tuple(SuppressedAddress(e, s.reason, s.at, s.source)
                                      for e, s in store.suppressions().items()))
        page = store.suppressions_page(limit, offset)
        return Suppressions(tuple(SuppressedAddress(e, s.reason, s.at, s.source) for e, s in page),
                            store.suppression_count(), offset)


def _address(ws: Workspace, store: Store, ref: SentRef) -> str | None:
    """The token's customer's address as the log has it now (as an emailed request's effects use it)."""
    c = store.customer(ref.customer_key)
    field = ws.email_field
    value = c.data.get(field) if c is not None and field is not None else None
    if not isinstance(value, str) or address_problem(value) is not None:
        return None
    return value.strip().lower()


def _link_source(ref: SentRef) -> str:
    """The suppression's ``source`` an unsubscribe link writes: how its undo knows the entry is still its own."""
    return f"unsubscribe link {ref.campaign}/{ref.step}"


def unsubscribe_by_token(ws: Workspace, token: str, now: datetime) -> Unsubscribed:
    """Unsubscribe the customer a send's token names: the one-click link (RFC 8058) of ``unsubscribe_url``.

    The token is the send's (:mod:`crm_automation.tokens`): it names the
    customer the message was meant for, whoever clicks. What it does is
    what an emailed unsubscribe request carrying the token does (issue #17):
    the address is suppressed as ``unsubscribed``, the customer's email
    status set, and an ``unsubscribe`` activity logged against the send's
    campaign and step, which stops the sequence and counts in the funnel —
    all in one transaction. A second click changes nothing (``already``);
    a token that names no send changes nothing either (``unknown_token``),
    and one not shaped as our tokens are is answered so without opening the
    log (issue #19: the web endpoint takes it from any URL).
    """
    return unsubscribe_by_tokens(ws, (token,), now)[0]


def unsubscribe_by_tokens(ws: Workspace, tokens: Sequence[str], now: datetime, *,
                          kept: KeptWriter | None = None, wait: bool = True) -> list[Unsubscribed]:
    """:func:`unsubscribe_by_token` for several tokens in ONE transaction: one result per token, in order.

    Why (issue #19, "p99 < 50 ms for one-click POSTs from 200 clients while
    the worker sends"): ``serve`` records the POSTs that queued up while the
    previous write ran as one group (group commit), so a burst costs one
    ``BEGIN IMMEDIATE`` … ``COMMIT`` — one wait for the worker's write lock,
    one commit — instead of one per POST. Each token gets exactly what
    :func:`unsubscribe_by_token` would have given it had the tokens come one
    after another: a token repeated in the batch is ``unsubscribed`` once,
    then ``already``. Each token's writes sit in their own savepoint, so a
    token whose writes fail is rolled back alone; an error that ends the
    transaction (the log busy past the timeout, a full disk) leaves none of
    the batch written and is raised for all of it. ``kept``: a long-lived
    process's write connection (:class:`~crm_automation.app.access.KeptWriter`).

    Tokens whose answer a read gives — unknown, no address, the address
    already suppressed (a provider's retry, the second click) — are answered
    without taking the write lock at all: the worker's send loop waits for
    every write transaction, and half of a burst is retries. Only the others
    go into the transaction, where they are resolved again (what was read
    before it may have changed). ``wait=False`` (with ``kept``): a busy log
    raises :class:`~crm_automation.errors.LogBusyError` at once, nothing
    written; ``serve`` waits on its event loop and calls again.
    """
    results: list[Unsubscribed | None] = [None if is_token(t) else Unsubscribed(t, Outcome.UNKNOWN_TOKEN)
                                          for t in tokens]
    if all(r is not None for r in results):
        return [r for r in results if r is not None]
    with writing(ws, kept, wait=wait) as store:
        pending = []
        for i, token in enumerate(tokens):
            if results[i] is None:
                results[i] = _settled(ws, store, token)
                if results[i] is None:
                    pending.append(i)
        if pending:
            with store.transaction():
                for i in pending:
                    results[i] = _unsubscribe(ws, store, tokens[i], now)
    return [r for r in results if r is not None]


def _resolve(ws: Workspace, store: Store, token: str) -> Unsubscribed | tuple[SentRef, str]:
    """A token's send and address, or its answer when it has neither (unknown token, no address)."""
    ref = store.send_for_token(token)
    if ref is None:
        return Unsubscribed(token, Outcome.UNKNOWN_TOKEN)
    email = _address(ws, store, ref)
    if email is None:
        return Unsubscribed(token, Outcome.NO_ADDRESS, ref.customer_key, None, ref.campaign, ref.step)
    return ref, email


def _settled(ws: Workspace, store: Store, token: str) -> Unsubscribed | None:
    """The token's answer when reading the log gives it (nothing to write), else None."""
    found = _resolve(ws, store, token)
    if isinstance(found, Unsubscribed):
        return found
    ref, email = found
    if store.suppression(email) is None:
        return None
    return Unsubscribed(token, Outcome.ALREADY, ref.customer_key, email, ref.campaign, ref.step)


def _unsubscribe(ws: Workspace, store: Store, token: str, now: datetime) -> Unsubscribed:
    """One token's unsubscribe inside the caller's transaction (the rules of :func:`unsubscribe_by_token`)."""
    found = _resolve(ws, store, token)
    if isinstance(found, Unsubscribed):
        return found
    ref, email = found
    details = InboundDetails(email, (), "unsubscribe link", "token", token=token, token_customer=ref.customer_key,
                             token_send=f"{ref.campaign}/{ref.step}", sender_customer=ref.customer_key)
    if not store.record_unsubscribe(email, _link_source(ref), now, customer_key=ref.customer_key,
                                    campaign=ref.campaign, step=ref.step, status=status_for(_UNSUBSCRIBED),
                                    details=details):
        return Unsubscribed(token, Outcome.ALREADY, ref.customer_key, email, ref.campaign, ref.step)
    return Unsubscribed(token, Outcome.UNSUBSCRIBED, ref.customer_key, email, ref.campaign, ref.step)


def resubscribe_by_token(ws: Workspace, token: str, now: datetime) -> Resubscribed:
    """Undo the unsubscribe a send's link made: the "undo" of ``serve``'s confirmation page (issue #19).

    Only that unsubscribe: the address comes off the list only while its
    entry is still the one this link's campaign and step wrote (reason
    ``unsubscribed``, source ``unsubscribe link CAMPAIGN/STEP``), checked
    and removed in one statement. An address suppressed another way — a
    bounce, an emailed 退订, the admin's ``suppress add``, another send's
    link — stays suppressed (``not_this_link``): a link someone forwarded
    never resubscribes a customer who asked to stop by other means. The
    customer's email status goes back as ``suppress remove`` puts it
    (:func:`crm_automation.suppression.withdraw`), and a ``resubscribe``
    activity on the timeline says when and through which send; all in one
    transaction. A second undo changes nothing (``not_suppressed``).

    The ``unsubscribe`` activity stays in the log: the funnel counted it,
    and the campaign's sequence (``stop_on`` unsubscribe) stays stopped;
    other campaigns mail the customer again.
    """
    if not is_token(token):
        return Resubscribed(token, UndoOutcome.UNKNOWN_TOKEN)
    with writing(ws) as store:
        ref = store.send_for_token(token)
        if ref is None:
            return Resubscribed(token, UndoOutcome.UNKNOWN_TOKEN)
        email = _address(ws, store, ref)
        if email is None:
            return Resubscribed(token, UndoOutcome.NO_ADDRESS, ref.customer_key, None, ref.campaign, ref.step)
        with store.transaction():
            if not suppression.withdraw(store, email, _UNSUBSCRIBED, _link_source(ref), ref.customer_key):
                outcome = (UndoOutcome.NOT_SUPPRESSED if store.suppression(email) is None
                           else UndoOutcome.NOT_THIS_LINK)
                return Resubscribed(token, outcome, ref.customer_key, email, ref.campaign, ref.step)
            store.add_activity(kind=Kind.RESUBSCRIBE.value, occurred_at=now, now=now, customer_key=ref.customer_key,
                               campaign=ref.campaign, step=ref.step, source="unsubscribe link",
                               details=ResubscribeDetails(email, token, f"{ref.campaign}/{ref.step}"))
    return Resubscribed(token, UndoOutcome.RESUBSCRIBED, ref.customer_key, email, ref.campaign, ref.step)
