"""The team's own mail, read from the Sent folder: which messages to log as ``reply_out``, and whose (issue #21).

A salesperson answers a customer from their own mail program; the copy in
the mailbox's Sent folder is how the worker learns that the customer's mail
was answered (its ``In-Reply-To``/``References`` name it, RFC 5322 §3.6.4)
and that we were in contact. Pure: the message is read, the log's answers
are handed in as lookups, and a :class:`~crm_automation.models.Decision` comes
out, which the store applies with the folder's cursor in one transaction
(exactly once, as inbound mail).

What is logged:

* a message to a customer (``To``/``Cc`` holds a customer's address), or
  one answering mail in the log (a customer's, or an enquiry from someone
  not in the sheet yet): a ``reply_out`` activity with the customer, the
  subject, what was newly written, and the Message-IDs it answers;
* not the worker's own mail (its Message-ID is a send of ours: a campaign
  step is already an ``email_out``, an owner notification or digest is not
  contact), and not mail to anyone else (colleagues, suppliers): the Sent
  folder is the team's, and the log keeps only what concerns customers;
* a message that cannot be read is passed over (only the cursor moves):
  it is ours, nothing to quarantine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from crm_automation.match import lookup
from crm_automation.models import (
    ActivityRecord,
    Classification,
    Decision,
    Kind,
    ParsedMessage,
    RawMessage,
    Reading,
    ReplyOutDetails,
)

SENT_DIGEST = "sent"  # every reply_out's digest: a Message-ID is logged once as ours, whatever its content
_EVIDENCE = "in the Sent folder"

# Message-IDs -> the customer (None: an unknown sender) of the inbound mail the log holds under them
InboundLookup = Callable[[list[str]], Mapping[str, str | None]]
# Message-IDs -> those that are the worker's own sends (any kind)
OwnLookup = Callable[[list[str]], Mapping[str, object]]


def answers_of(msg: ParsedMessage) -> tuple[str, ...]:
    """The Message-IDs a message answers: ``In-Reply-To`` first, then ``References`` newest first, once each."""
    out: list[str] = []
    for mid in (msg.in_reply_to, *reversed(msg.references)):
        if mid and mid not in out:
            out.append(mid)
    return tuple(out)


def decide_sent(raw: RawMessage, msg: ParsedMessage | None, src: str, now: datetime, by_email: dict[str, str],
                inbound: InboundLookup, own: OwnLookup) -> Decision:
    """What to record for one message of the Sent folder (see the module's rules); ``msg`` None: unreadable."""
    pos = (raw.folder, raw.uidvalidity, raw.uid, raw.seen_key)
    if msg is None or not msg.message_id or own([msg.message_id]):
        return Decision(*pos, label="not_logged")
    answers = answers_of(msg)
    answered = inbound(list(answers)) if answers else {}
    key = next((k for a in msg.to_addrs if (k := lookup(by_email, a)) is not None), None)
    how = "recipient"
    if key is None:
        key = next((k for a in answers if (k := answered.get(a)) is not None), None)
        how = "answered message"
    if key is None and not answered:
        return Decision(*pos, label="not_logged")  # to someone who is not a customer, about nothing logged
    reading = Reading(msg.message_id, msg.from_addr, msg.from_name, msg.to_addrs, msg.subject, msg.date,
                      msg.in_reply_to, msg.references, msg.reply,
                      Classification(Kind.REPLY_OUT, f"{_EVIDENCE}; customer by {how}"), SENT_DIGEST)
    record = ActivityRecord(kind=Kind.REPLY_OUT, customer_key=key, message=reading, occurred_at=msg.date or now,
                            source=src, digest=SENT_DIGEST,
                            details=ReplyOutDetails(tuple(msg.to_addrs), answers, raw.folder, raw.uid))
    return Decision(*pos, activities=(record,), label=Kind.REPLY_OUT.value)
