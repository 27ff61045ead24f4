"""Inbound message -> customer (SPEC §9). Pure: values in, values out.

Order: a bounce belongs to the address that failed; an unsubscribe request
carrying a send's token belongs to the customer that send went to (issue
#17: it may come from another of their accounts); otherwise the sender's
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
    import idna  # only for the rare internationalized domain: not at every start, nor in the helpers' start-up

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
          sent_ids: Mapping[str, str], token: tuple[str, str] | None = None) -> tuple[str | None, str]:
    """Return (customer key or None, how it was matched).

    ``token``: (the token an unsubscribe request carries, the customer of
    the send it names), when it names one. It wins over the sender's
    address: the token says which customer the request is about (issue
    #17); the caller records the sender too.
    """
    if cls.kind is Kind.BOUNCE:
        for addr in cls.recipients:
            key = lookup(by_email, addr)
            if key is not None:
                return key, f"failed recipient {addr}"
    if token is not None and cls.kind is Kind.UNSUBSCRIBE:
        return token[1], f"unsubscribe token {token[0]}"
    key = lookup(by_email, msg.from_addr)
    if key is not None:
        return key, "sender address"
    for ref in (msg.in_reply_to, *reversed(msg.references)):
        if ref and ref in sent_ids:
            return sent_ids[ref], f"reply to {ref}"
    return None, "unknown sender"
