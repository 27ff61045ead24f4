"""Inbound message -> customer (SPEC §9). Pure: values in, values out.

Order: a bounce belongs to the address that failed; otherwise the sender's
address (case-insensitive); otherwise a Message-ID the worker sent, named in
In-Reply-To or References (a colleague answering for the customer);
otherwise unknown.

Addresses with an internationalized domain (RFC 6530-6532) are compared in
both of its spellings: the sheet keeps what the admin typed (``例子.中国``,
as ``email-validator`` normalises it), while a client without SMTPUTF8
writes the A-label (``xn--fsqu00a.xn--fiqs8s``) and an SMTPUTF8 one, or a
``message/global-delivery-status`` report, the U-label.
"""

from __future__ import annotations

from collections.abc import Mapping

import idna

from crm_automation.models import Classification, Correspondence, Kind

__all__ = ["address_forms", "lookup", "match"]


def address_forms(addr: str) -> tuple[str, ...]:
    """``addr`` lower-cased, then the same address with its domain in the other IDNA spelling, if any.

    ASCII domains without ``xn--`` labels (nearly every address) have one
    form and cost one check. A domain that IDNA refuses keeps its one form.
    """
    addr = addr.lower()
    local, at, domain = addr.rpartition("@")
    if not at or (domain.isascii() and "xn--" not in domain):
        return (addr,)
    try:
        other = (idna.encode(domain, uts46=True).decode("ascii") if not domain.isascii()
                 else idna.decode(domain).lower())
    except (idna.IDNAError, UnicodeError, ValueError):
        return (addr,)
    return (addr,) if other == domain else (addr, f"{local}@{other}")


def lookup(by_email: Mapping[str, str], addr: str) -> str | None:
    """The customer key for ``addr`` in ``by_email`` (address -> key), in either spelling of its domain."""
    if not addr:
        return None
    key = by_email.get(addr)  # the fetch loop's case: already lower-cased, ASCII
    if key is not None or (addr.isascii() and "xn--" not in addr and addr.islower()):
        return key
    for form in address_forms(addr):
        key = by_email.get(form)
        if key is not None:
            return key
    return None


def match(msg: Correspondence, cls: Classification, by_email: Mapping[str, str],
          sent_ids: Mapping[str, str]) -> tuple[str | None, str]:
    """Return (customer key or None, how it was matched)."""
    if cls.kind is Kind.BOUNCE:
        for addr in cls.recipients:
            key = lookup(by_email, addr)
            if key is not None:
                return key, f"failed recipient {addr}"
    key = lookup(by_email, msg.from_addr)
    if key is not None:
        return key, "sender address"
    for ref in (msg.in_reply_to, *reversed(msg.references)):
        if ref and ref in sent_ids:
            return sent_ids[ref], f"reply to {ref}"
    return None, "unknown sender"
