"""Reading one message: raw bytes -> parsed, classified and digested, or why it cannot be read.

Why a module of its own (issue #13): this is the pure, CPU-heavy part of the
fetch stage, and it runs in helper processes on the other cores
(:mod:`crm_automation.parallel`). It imports only what reading needs (the
parser, the classifier, the models), so a helper starts in a third of the
time the whole fetch stage's imports take; and a future stage that reads
mail elsewhere (a web app showing a quarantined message, a worker on
another machine) can reuse it without the log or the mailbox.

:mod:`crm_automation.inbound` decides what to record from a :class:`Reading`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crm_automation.classify import classify, mass_mail
from crm_automation.errors import MessageError
from crm_automation.models import Classification, Kind, ParsedMessage
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


@dataclass(frozen=True, slots=True)
class Reading:
    """What the log needs of one message once it is read: parsed, classified and digested.

    Who wrote, to whom, about what, when, what they newly wrote (``reply``),
    the ids it answers, what kind of message it is and its content digest.
    ``bulk`` says why a message is list or bulk mail (``List-Id``,
    ``Precedence: bulk`` ...; "" when it is not), which only its headers
    tell: such a sender never becomes a new row of the sheet (issue #17).
    The whole text and the other headers stay with the reader: nothing after
    reading needs them, and a reading crosses between processes
    (:mod:`crm_automation.parallel`). :func:`read` makes it from the bytes
    alone; :func:`crm_automation.inbound.decide` matches it against the log.
    """

    message_id: str
    from_addr: str
    from_name: str
    to_addrs: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    reply: str
    cls: Classification
    digest: str
    bulk: str = ""

    @classmethod
    def of(cls, msg: ParsedMessage, classification: Classification) -> Reading:
        """The reading of a parsed and classified message."""
        bulk = mass_mail(msg) if classification.kind is Kind.EMAIL_IN else ""
        return cls(msg.message_id, msg.from_addr, msg.from_name, msg.to_addrs, msg.subject, msg.date,
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
        return Reading.of(msg, cls)
    except MessageError as e:
        return Unreadable(str(e))
    except Exception as e:  # the per-item boundary (SPEC §9): an unforeseen failure quarantines this message only
        log.debug("parse failure", exc_info=True)
        return Unreadable(f"internal error while reading the message: {type(e).__name__}: {e}")


# A Reading crosses between processes as a tuple of plain values: unpickling frozen dataclasses
# cost this process 12 µs a message, a tenth of the work it handed over (issue #13).
_Wire = tuple[Any, ...]


def read_chunk(policy: ReadPolicy, items: list[tuple[bytes, int | None]]) -> list[_Wire]:
    """:func:`read` over ``(bytes, size)`` pairs, each result as plain values (what a helper process returns)."""
    out: list[_Wire] = []
    for raw, size in items:
        r = read(raw, size, policy)
        if isinstance(r, Unreadable):
            out.append((r.error,))
            continue
        c = r.cls
        out.append((None, r.message_id, r.from_addr, r.from_name, r.to_addrs, r.subject, r.date, r.in_reply_to,
                    r.references, r.reply, c.kind.value, c.evidence, c.failures, c.original_message_id, r.digest,
                    r.bulk))
    return out


def reading_of(wire: _Wire) -> Reading | Unreadable:
    """What a :func:`read_chunk` result stands for."""
    if len(wire) == 1:
        return Unreadable(wire[0])
    (_, mid, addr, name, to, subject, date, irt, refs, reply, kind, evidence, failures, original, digest, bulk) = wire
    return Reading(mid, addr, name, to, subject, date, irt, refs, reply,
                   Classification(Kind(kind), evidence, failures, original), digest, bulk)
