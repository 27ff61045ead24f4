"""The mailbox-source seam: Maildir and IMAP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from crm_automation.models import Cursor, RawMessage

__all__ = ["Cursor", "MailboxSource"]  # Cursor lives in models (the store records it, issue #18)


class MailboxSource(Protocol):
    """A mailbox to read. Nothing is ever deleted from it and nothing is marked read."""

    name: str
    # True when the cursor is the set of names already logged (``Cursor.seen``, ``RawMessage.seen_key``)
    # rather than a UID: the worker then loads and records those names.
    tracks_names: bool

    def folders(self) -> list[str]:
        """The folders to read, as configured."""
        ...

    def uidvalidity(self, folder: str) -> int:
        """The folder's current UIDVALIDITY (select it if needed)."""
        ...

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int = 500) -> Iterator[RawMessage]:
        """Yield messages after ``cursor`` in UID order.

        When ``cursor.uidvalidity`` differs from the folder's, every message is
        yielded again (the caller deduplicates by Message-ID).
        """
        ...

    def mark_processed(self, messages: list[RawMessage]) -> None:
        """Move logged messages to ``processed_folder`` (a no-op when none is set)."""
        ...

    def find_message_ids(self, folder: str, message_ids: list[str]) -> set[str]:
        """Which of these Message-IDs are in ``folder`` (crash recovery looks in the Sent folder).

        A missing folder finds nothing; ids compare without their angle brackets' case.
        """
        ...

    def sent_folder(self) -> str | None:
        r"""The folder holding the team's sent mail, or None when there is none to read (issue #21).

        ``[outbound] sent_folder`` when set (and present); else, on IMAP, the
        folder the server marks ``\Sent`` (RFC 6154), or one by a usual name.
        """
        ...

    def close(self) -> None:
        """Log out / release the source."""
        ...
