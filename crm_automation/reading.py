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
from typing import Any

from crm_automation.classify import classify
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
    """One message as read before the log is asked anything: parsed, classified and digested.

    Or, with ``error`` set, why it cannot be understood: it is then
    quarantined whole. :func:`read` makes it from the bytes alone, so it can
    be made in another process; :func:`decide` then matches it against the log.
    """

    msg: ParsedMessage | None
    cls: Classification | None
    digest: str = ""
    error: str | None = None


def read(raw: bytes, size: int | None, policy: ReadPolicy) -> Reading:
    """Parse, classify and digest one message. Pure, and never raises: what cannot be read says why."""
    limit = policy.max_bytes
    if size is not None and size > limit:
        return Reading(None, None, error=f"message: {size} bytes is over max_message_bytes = {limit}; its first "
                                         f"{limit} bytes are kept here, the whole message stays in the mailbox")
    try:
        msg = parse(raw, max_bytes=limit)
        cls = classify(msg, unsubscribe_addresses=policy.unsubscribe_addresses, is_ours=policy.ours.__contains__)
        return Reading(msg, cls, content_digest(msg))
    except MessageError as e:
        return Reading(None, None, error=str(e))
    except Exception as e:  # the per-item boundary (SPEC §9): an unforeseen failure quarantines this message only
        log.debug("parse failure", exc_info=True)
        return Reading(None, None, error=f"internal error while reading the message: {type(e).__name__}: {e}")


# A Reading crosses between processes as a tuple of plain values: unpickling frozen dataclasses
# cost this process 12 µs a message, a tenth of the work it handed over (issue #13).
_Wire = tuple[Any, ...]


def read_chunk(policy: ReadPolicy, items: list[tuple[bytes, int | None]]) -> list[_Wire]:
    """:func:`read` over ``(bytes, size)`` pairs, each result as plain values (what a helper process returns)."""
    out: list[_Wire] = []
    for raw, size in items:
        r = read(raw, size, policy)
        m, c = r.msg, r.cls
        if m is None or c is None:
            out.append((r.error,))
            continue
        out.append((None, m.message_id, m.from_addr, m.from_name, m.to_addrs, m.subject, m.date, m.in_reply_to,
                    m.references, m.headers, m.text, m.reply, c.kind.value, c.evidence, c.failures,
                    c.original_message_id, r.digest))
    return out


def reading_of(wire: _Wire, raw: bytes) -> Reading:
    """The :class:`Reading` a :func:`read_chunk` result stands for (``raw``: the message's bytes)."""
    if wire[0] is not None or len(wire) == 1:
        return Reading(None, None, error=wire[0])
    (_, mid, addr, name, to, subject, date, irt, refs, headers, text, reply, kind, evidence, failures, original,
     digest) = wire
    msg = ParsedMessage(mid, addr, name, to, subject, date, irt, refs, headers, text, reply, raw)
    return Reading(msg, Classification(Kind(kind), evidence, failures, original), digest)
