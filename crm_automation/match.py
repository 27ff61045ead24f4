"""Inbound message -> customer (SPEC §9). Pure: values in, values out.

Order: a bounce belongs to the address that failed; otherwise the sender's
address (case-insensitive); otherwise a Message-ID the worker sent, named in
In-Reply-To or References (a colleague answering for the customer);
otherwise unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

from crm_automation.models import Classification, Correspondence, Kind


def match(msg: Correspondence, cls: Classification, by_email: Mapping[str, str],
          sent_ids: Mapping[str, str]) -> tuple[str | None, str]:
    """Return (customer key or None, how it was matched)."""
    if cls.kind is Kind.BOUNCE:
        for addr in cls.recipients:
            key = by_email.get(addr.lower())
            if key is not None:
                return key, f"failed recipient {addr}"
    key = by_email.get(msg.from_addr.lower()) if msg.from_addr else None
    if key is not None:
        return key, "sender address"
    for ref in (msg.in_reply_to, *reversed(msg.references)):
        if ref and ref in sent_ids:
            return sent_ids[ref], f"reply to {ref}"
    return None, "unknown sender"
