"""Reading one message: raw bytes -> parsed, classified and digested, or why it cannot be read.

Why a module of its own (issue #13): this is the pure, CPU-heavy part of the
fetch stage, and it runs in helper processes on the other cores
(:mod:`crm_automation.parallel`). It imports only what reading needs (the
parser, the classifier, the models), so a helper starts in a third of the
time the whole fetch stage's imports take; and a future stage that reads
mail elsewhere (a web app showing a quarantined message, a worker on
another machine) can reuse it without the log or the mailbox.

:mod:`crm_automation.inbound` decides what to record from a :class:`~crm_automation.models.Reading`
(defined in :mod:`crm_automation.models`: the store writes activities from it, issue #18).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from crm_automation.classify import classify, mass_mail
from crm_automation.errors import MessageError
from crm_automation.models import Classification, Kind, ParsedMessage, Reading
from crm_automation.parse import content_digest, parse

log = logging.getLogger("crm_automation")


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """What reading a message depends on: the size limit, our unsubscribe address, the customers' addresses.

    Picklable and small, because it is sent once to each helper process that
    reads mail on another core (:mod:`crm_automation.parallel`).
    """

    max_bytes: int
    unsubscribe_addresses: frozenset[str]
    ours: frozenset[str]  # the customers' addresses: a bounce names them (classify's ``is_ours``)


def make_reading(msg: ParsedMessage, classification: Classification) -> Reading:
    """The reading of a parsed and classified message (:class:`~crm_automation.models.Reading`)."""
    bulk = mass_mail(msg) if classification.kind is Kind.EMAIL_IN else ""
    return Reading(msg.message_id, msg.from_addr, msg.from_name, msg.to_addrs, msg.subject, msg.date,
                   msg.in_reply_to, msg.references, msg.reply, classification, content_digest(msg), bulk)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A message that cannot be understood, and why: it is quarantined whole."""

    error: str


def read(raw: bytes, size: int | None, policy: ReadPolicy) -> Reading | Unreadable:
    """Parse, classify and digest one message. Pure, and never raises: what cannot be read says why."""
    limit = policy.max_bytes
    if size is not None and size > limit:
        return Unreadable(f"message: {size} bytes is over max_message_bytes = {limit}; its first {limit} bytes "
                          "are kept here, the whole message stays in the mailbox")
    try:
        msg = parse(raw, max_bytes=limit)
        cls = classify(msg, unsubscribe_addresses=policy.unsubscribe_addresses, is_ours=policy.ours.__contains__)
        return make_reading(msg, cls)
    except MessageError as e:
        return Unreadable(str(e))
    except Exception as e:  # the per-item boundary (SPEC §9): an unforeseen failure quarantines this message only
        log.debug("parse failure", exc_info=True)
        return Unreadable(f"internal error while reading the message: {type(e).__name__}: {e}")


def read_chunk(policy: ReadPolicy, items: list[tuple[bytes, int | None]]) -> list[Reading | Unreadable]:
    """:func:`read` over ``(bytes, size)`` pairs: what a helper process returns.

    A :class:`~crm_automation.models.Reading` pickles as plain values
    (``Reading.__reduce__``), so handing it back costs what a tuple did.
    """
    return [read(raw, size, policy) for raw, size in items]
