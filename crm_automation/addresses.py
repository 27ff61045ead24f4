"""Internationalized addresses on the wire (RFC 6530-6532, issue #17 item 8). Pure.

Sync accepts ``alice@例子.中国`` and ``张三@example.cn`` (email-validator, as
the sheet holds them); this module says how each goes out:

* a non-ASCII *domain* is written as its A-labels (``xn--fsqu00a.xn--fiqs8s``,
  IDNA 2008 with the UTS #46 mapping, as email-validator itself normalizes
  domains) in the envelope and in the headers, so any server carries it and the
  message stays plain ASCII;
* a non-ASCII *local part* has no ASCII form (RFC 6530 §4: only its owner's
  server may interpret it). It goes out as UTF-8, which needs the server's
  ``SMTPUTF8`` extension (RFC 6531) for the envelope and lets the headers carry
  UTF-8 (RFC 6532). The transport decides whether it can; this module only
  says that it is needed (:attr:`WireAddress.needs_smtputf8`).

Converting here, once, keeps the template's header and the transport's
envelope the same address. ``idna`` is the library email-validator uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from crm_automation.errors import DataError


@dataclass(frozen=True, slots=True)
class WireAddress:
    """An address as it is written in SMTP and in headers: domain in A-labels, local part as given."""

    address: str
    needs_smtputf8: bool


@functools.lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """``例子.中国`` -> ``xn--fsqu00a.xn--fiqs8s``; an ASCII domain is returned unchanged.

    Raises:
        DataError: the domain cannot be written in A-labels (a space, an empty
            label, a code point IDNA 2008 forbids), naming the domain and why.
    """
    if domain.isascii():
        return domain
    import idna  # only for the rare internationalized domain: not at every start of every command

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise DataError(f"the domain {domain!r} is not a valid internationalized domain name ({e}); expected "
                        "a name such as 例子.中国 that converts to A-labels (RFC 5891)") from None


def wire_address(address: str) -> WireAddress:
    """The address as it goes on the wire: domain converted to A-labels, local part kept (RFC 6531 §3.2).

    Cheap for the usual ASCII address (one ``isascii`` call), so the send loop
    does not pay for the rare internationalized one.

    Raises:
        DataError: the domain is not a valid internationalized name.
    """
    if address.isascii():
        return WireAddress(address, False)
    local, at, domain = address.rpartition("@")
    if not at:
        return WireAddress(address, True)
    return WireAddress(f"{local}@{ascii_domain(domain)}", not local.isascii())
