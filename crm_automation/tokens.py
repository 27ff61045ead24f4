"""The send token: what an unsubscribe link carries, and how an unsubscribe request gives it back (issue #17).

A send's token is the local part of its ``Message-ID`` (``crm.<32 hex>``,
:meth:`crm_automation.compose.Composer.message_id`): unique, unguessable,
already stored in ``sends.message_id``, and free of the customer's address.
``unsubscribe_url``'s ``{token}`` has always been this; the
``List-Unsubscribe`` mailto now carries it too, so an unsubscribe sent from
another account of the customer (a forwarding address, a phone's second
account) still names the customer it was meant for.

Why in the subject (``mailto:sales@example.com?subject=unsubscribe%20<token>``)
and not in a plus address (``sales+<token>@example.com``):

- The subject never costs the request itself. The address stays the one the
  admin configured, which is known to deliver. A plus address reaches us only
  when the mailbox accepts sub-addressing: Gmail and Outlook.com do, Exchange
  Online and Postfix (``recipient_delimiter``) only when configured to; for
  the hosted mailboxes our users run on
  (Tencent Exmail, Alibaba Mail, NetEase enterprise mail) we found no such
  promise. Where it is refused, the request bounces back to the customer,
  who believes they are unsubscribed, and we never hear of it.
- What the one-click buttons send, as far as public reports go (we could not
  test each provider): Gmail sends a message to the mailto address with the
  URI's ``subject`` (ESPs such as SendGrid put their own token there and
  rely on it); Outlook.com/Hotmail has been reported to drop the subject, and
  for Yahoo Mail and QQ Mail we found no statement either way. A request
  that arrives without the token still comes from the customer's address to
  ours, and is handled as before (by that address): the subject can only add
  to what we know. Desktop and phone clients (Outlook, Foxmail, Apple Mail,
  Thunderbird) open a message with the URI's fields, so the person sends
  ``unsubscribe <token>`` as written.
- RFC 6068 (mailto) defines ``subject``, and RFC 2369's own examples put
  the command there (``?subject=unsubscribe``).

Inbound, :func:`token_in_subject` finds the token wherever the subject holds
``unsubscribe <token>``; the fetch stage looks it up in ``sends`` (by the
``Message-ID`` prefix ``<token@``, so a From domain changed since the send
still finds it) and the token's customer is the one suppressed. A token
that names no send changes nothing: the request is handled by its sender's
address, as before.
"""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = ["is_request_subject", "is_token", "mailto_subject", "token_in_subject", "token_of"]

_KEYWORD = "unsubscribe"
# A token as we write them (``crm.`` and 32 hex digits), or another local part with a digit in it (so the
# words of "unsubscribe newsletters" are no token): letters, digits, dots, hyphens, underscores; 8 to 64
# characters (RFC 5321's local-part limit).
_SEND_ID = r"(?=[A-Za-z._-]*[0-9])[A-Za-z0-9][A-Za-z0-9._-]{7,63}(?![A-Za-z0-9._-])"
_WORD = r"(?:unsubscribe|退订)"
_TOKEN_IN_SUBJECT = re.compile(rf"{_WORD}\s*[:：]?\s*({_SEND_ID})", re.IGNORECASE)
_REQUEST_SUBJECT = re.compile(rf"\s*{_WORD}(?:\s*[:：]?\s*{_SEND_ID})?\s*", re.IGNORECASE)
# Exactly what :meth:`crm_automation.compose.Composer.message_id` writes: ``crm.`` and a UUID4's 32 hex digits.
_TOKEN = re.compile(r"crm\.[0-9a-f]{32}")


def token_of(message_id: str) -> str:
    """A send's token: the local part of its ``Message-ID`` (``<crm.abc@example.com>`` -> ``crm.abc``)."""
    return message_id.strip().strip("<>").partition("@")[0]


def is_token(text: str) -> bool:
    """Whether ``text`` has the shape of a token we write (``crm.`` + 32 hex digits), checked before any lookup.

    Why (issue #19): the web endpoints (``/u/``, ``/c/``, ``/o/``) take the
    token from a URL anyone can send; anything else (another length, upper
    case, spaces, ``%``, a second path segment) is answered "unknown" without
    opening the log. Inbound requests keep the looser :data:`_SEND_ID`,
    since a mail client may reflow a subject.
    """
    return _TOKEN.fullmatch(text) is not None


def mailto_subject(token: str) -> str:
    """The ``subject`` of the unsubscribe mailto, percent-encoded for the URI (RFC 6068)."""
    return quote(f"{_KEYWORD} {token}", safe="")


def token_in_subject(subject: str) -> str | None:
    """The token an unsubscribe request's subject carries (``unsubscribe crm.abc…``), or None."""
    m = _TOKEN_IN_SUBJECT.search(subject)
    return m.group(1) if m is not None else None


def is_request_subject(subject: str) -> bool:
    """Whether a subject is exactly our mailto's: ``unsubscribe`` (or ``退订``), with or without a token."""
    return _REQUEST_SUBJECT.fullmatch(subject) is not None
