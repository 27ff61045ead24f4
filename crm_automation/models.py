"""Plain values passed between the stages.

Frozen, slotted dataclasses: the pure steps (mapping, classify, match, plan)
take and return these and never touch I/O, so they are tested on literals.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class FieldType(enum.StrEnum):
    """The column types a mapping may declare (SPEC §4)."""

    TEXT = "text"
    EMAIL = "email"
    PHONE = "phone"
    DATE = "date"
    NUMBER = "number"
    CHOICE = "choice"
    BOOL = "bool"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One mapped field: sheet column ``column`` becomes ``customer.<name>``."""

    name: str
    column: str
    type: FieldType = FieldType.TEXT
    required: bool = False
    choices: tuple[str, ...] = ()
    region: str | None = None


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One data row as read: ``row`` is the 1-based sheet row number (the header is row 1).

    ``values`` maps header name to the raw cell value (str, int, float,
    bool, datetime/date, or None for an empty cell).
    """

    row: int
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SheetData:
    """A whole worksheet as read in one request.

    ``version`` is an opaque token (file mtime and size, or a revision) that
    write-back compares to find out whether someone saved the sheet since.
    """

    source: str
    headers: tuple[str, ...]
    rows: tuple[SheetRow, ...]
    version: str = ""


@dataclass(frozen=True, slots=True)
class Customer:
    """A validated row: ``data`` holds JSON-ready values keyed by field name."""

    key: str
    row: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RowError:
    """Why one sheet row was rejected: rendered as ``source row N, "col": value is ... (expected ...)``."""

    source: str
    row: int
    column: str | None
    value: Any
    reason: str

    def __str__(self) -> str:
        where = f"{self.source} row {self.row}"
        if self.column is None:
            return f"{where}: {self.reason}"
        if self.value is None or (isinstance(self.value, str) and not self.value.strip()):
            return f"{where}, \"{self.column}\" {self.reason}"
        return f"{where}, \"{self.column}\": {self.value!r} {self.reason}"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as fetched from a mailbox, with the cursor position it stands at.

    ``uid`` is the IMAP UID (or the Maildir equivalent); ``uidvalidity``
    the folder's UIDVALIDITY. ``ref`` is what the source needs to move the
    message to ``processed_folder`` afterwards.
    """

    folder: str
    uid: int
    uidvalidity: int
    raw: bytes
    ref: str = ""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """An inbound message decoded to text.

    ``text`` is the whole plain-text body (HTML converted when there is no
    text part); ``reply`` is what the sender newly wrote (quotes, reply
    headers and signature removed). Addresses are lower-cased.
    """

    message_id: str
    from_addr: str
    from_name: str
    to_addrs: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    headers: dict[str, str]
    text: str
    reply: str
    raw: bytes = field(repr=False, default=b"")


class Kind(enum.StrEnum):
    """Activity kinds (SPEC §8)."""

    EMAIL_IN = "email_in"
    EMAIL_OUT = "email_out"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    UNSUBSCRIBE = "unsubscribe"
    CUSTOMER_ADDED = "customer_added"
    FIELD_CHANGED = "field_changed"
    SEND_FAILED = "send_failed"
    CUSTOMER_REMOVED = "customer_removed"


@dataclass(frozen=True, slots=True)
class Classification:
    """What an inbound message is, and why (``evidence`` is shown in the timeline).

    For a bounce, ``recipients`` are the addresses that failed and
    ``permanent`` tells a hard bounce (5.x.x) from a soft one (4.x.x).
    """

    kind: Kind
    evidence: str
    recipients: tuple[str, ...] = ()
    permanent: bool = False
