"""The outbound-transport seam: ``outbox`` (.eml files) and ``smtp``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Transport(Protocol):
    """Hands finished messages to their carrier.

    ``send`` raises :class:`~crm_automation.errors.TransientSendError` for a
    4xx answer (retry later), :class:`~crm_automation.errors.PermanentSendError`
    for a 5xx answer (mark failed), both carrying
    :class:`~crm_automation.errors.About` (one recipient, or our account,
    sender or connection: issue #17),
    :class:`~crm_automation.errors.QuotaExceededError` for a sending quota
    (wait), and :class:`~crm_automation.errors.ServiceError` when the server
    cannot be reached at all (stop the stage). Addresses may be
    internationalized (``alice@例子.中国``, ``张三@example.cn``); a carrier that
    cannot take one fails that message alone.
    """

    name: str

    def open(self) -> None:
        """Connect and log in once for a batch."""
        ...

    def send(self, message: bytes, *, sender: str, recipients: list[str], message_id: str,
             meanwhile: Callable[[], None] | None = None, claim: Callable[[], bool] | None = None) -> bool:
        """Hand one message over; True once the carrier took it, False when ``claim`` called it off.

        ``claim``: the caller's last word before anything of the message is
        delivered, called exactly once per message that gets that far, never
        after any of its content went out; False calls the send off (nothing
        is handed over; an SMTP transaction is reset). The send pass commits
        the message's ``sending`` mark in it, so the mark still precedes the
        content, while the SMTP server answers ``MAIL FROM`` (issue #18: a
        commit costs no wall time then). An error it raises propagates as it
        is, and nothing is handed over.

        ``meanwhile``: work for the caller to do while the carrier decides
        about this message (composing the next one), called at most once,
        after the message went out and before its verdict is read; it must not
        raise. A carrier that waits for nothing (the outbox) does not call it.
        """
        ...

    def close(self) -> None:
        """Quit the connection."""
        ...

    def handed_over(self, message_ids: list[str]) -> set[str] | None:
        """Which of these messages the carrier holds, or None when it cannot tell (crash recovery).

        The outbox can: a message was handed over when its ``.eml`` was
        renamed into place. An SMTP server cannot be asked; recovery then
        looks in the mailbox's Sent folder when ``sent_folder`` is set.
        """
        ...
