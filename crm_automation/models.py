"""Plain values passed between the stages.

Frozen, slotted dataclasses: the pure steps (mapping, classify, match, plan)
take and return these and never touch I/O, so they are tested on literals.
All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, overload


class FieldType(enum.StrEnum):
    """The column types a mapping may declare (SPEC §4)."""

    TEXT = "text"
    EMAIL = "email"
    PHONE = "phone"
    DATE = "date"
    NUMBER = "number"
    CHOICE = "choice"
    BOOL = "bool"


class OnInvalid(enum.StrEnum):
    """What a cell that fails validation does to its row (``on_invalid``, issue #11).

    ``reject_row``: the row is reported and skipped (the key and required
    fields, where nothing else makes sense). ``blank``: the row is kept with
    that field empty (None) and the cell is reported, so a mistyped phone
    does not keep a new customer from being mailed.
    """

    REJECT_ROW = "reject_row"
    BLANK = "blank"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One mapped field: sheet column ``column`` becomes ``customer.<name>``.

    ``on_invalid`` defaults to rejecting the row here; ``load_mapping`` sets
    ``blank`` for every field that is neither the key nor required.
    """

    name: str
    column: str
    type: FieldType = FieldType.TEXT
    required: bool = False
    choices: tuple[str, ...] = ()
    region: str | None = None
    on_invalid: OnInvalid = OnInvalid.REJECT_ROW


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One data row as read: ``row`` is the 1-based sheet row number (the header is row 1).

    ``values`` maps header name to the raw cell value (str, int, float,
    bool, datetime/date, or None for an empty cell).
    """

    row: int
    values: dict[str, Any]


class SheetData:
    """A whole worksheet as read in one request, kept column by column.

    ``version`` is an opaque token (file mtime and size, or a revision) that
    write-back compares to find out whether someone saved the sheet since.

    Why columns: a first sync of 100,000 rows validates column by column,
    and building a dict per row only to take it apart again cost half a
    second (issue #3). ``rows`` is built on first use for callers that want
    one row at a time (import, checks).
    """

    __slots__ = ("_columns", "_rows", "headers", "row_numbers", "source", "version")

    def __init__(self, source: str, headers: tuple[str, ...], columns: dict[str, list[Any]],
                 row_numbers: list[int], version: str = "") -> None:
        self.source = source
        self.headers = headers
        self.version = version
        self.row_numbers = row_numbers  # 1-based sheet row of each data row (empty rows are left out)
        self._columns = columns
        self._rows: tuple[SheetRow, ...] | None = None

    def __len__(self) -> int:
        return len(self.row_numbers)

    def column(self, header: str) -> list[Any]:
        """The raw values under ``header``, one per data row (all None if the sheet has no such column)."""
        col = self._columns.get(header)
        return col if col is not None else [None] * len(self.row_numbers)

    @property
    def rows(self) -> tuple[SheetRow, ...]:
        """One :class:`SheetRow` per data row, built on first use."""
        if self._rows is None:
            names = self.headers
            if names:
                cols = [self.column(h) for h in names]
                self._rows = tuple(SheetRow(n, dict(zip(names, vals, strict=True)))
                                   for n, vals in zip(self.row_numbers, zip(*cols, strict=True), strict=True))
            else:
                self._rows = tuple(SheetRow(n, {}) for n in self.row_numbers)
        return self._rows


@dataclass(slots=True)
class Customer:
    """A validated row: ``data`` holds JSON-ready values keyed by field name.

    Not frozen, unlike its neighbours: a frozen dataclass's ``__init__`` goes
    through ``object.__setattr__``, which cost a quarter of a second for the
    100,000 customers of a first sync (issue #3). Treat it as read-only.
    """

    key: str
    row: int
    data: dict[str, Any]


class CustomerColumns(Sequence[Customer]):
    """Validated customers kept as columns; each :class:`Customer` is built when asked for.

    A first sync of 100,000 new rows hands them to the log column by column
    (``names``, ``keys``, ``rows``, ``columns``: values per field, in
    ``names`` order), without a dict per row (issue #3). ``fields`` is every
    field of the mapping: one missing from ``names`` (no such column in the
    sheet) reads as None.
    """

    __slots__ = ("columns", "fields", "keys", "names", "rows")

    def __init__(self, fields: tuple[str, ...], names: tuple[str, ...], keys: list[str], rows: list[int],
                 columns: list[list[Any]]) -> None:
        self.fields = fields
        self.names = names
        self.keys = keys
        self.rows = rows
        self.columns = columns

    def __len__(self) -> int:
        return len(self.keys)

    def _make(self, i: int) -> Customer:
        data = dict.fromkeys(self.fields)
        data.update(zip(self.names, (col[i] for col in self.columns), strict=True))
        return Customer(self.keys[i], self.rows[i], data)

    @overload
    def __getitem__(self, i: int) -> Customer: ...
    @overload
    def __getitem__(self, i: slice) -> list[Customer]: ...
    def __getitem__(self, i: int | slice) -> Customer | list[Customer]:
        if isinstance(i, slice):
            return [self._make(j) for j in range(*i.indices(len(self)))]
        return self._make(range(len(self))[i])

    def __iter__(self) -> Iterator[Customer]:
        return (self._make(i) for i in range(len(self)))


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
    message to ``processed_folder`` afterwards. ``seen_key`` is set by
    sources whose cursor is a set of names (Maildir): the worker records it
    in the transaction that logs the message. ``size`` is the whole
    message's size when ``raw`` holds only its start (above
    ``max_message_bytes``).
    """

    folder: str
    uid: int
    uidvalidity: int
    raw: bytes
    ref: str = ""
    seen_key: str | None = None
    size: int | None = None


class Correspondence(Protocol):
    """What matching a message to a customer and its effects read of it: the sender and the ids it answers.

    A :class:`ParsedMessage` has them, and so has the smaller reading the
    fetch stage passes between processes (:class:`crm_automation.reading.Reading`).
    """

    @property
    def from_addr(self) -> str:
        """The sender's address, lower-cased ("" when there is none)."""
        ...

    @property
    def in_reply_to(self) -> str | None:
        """The ``<id>`` of In-Reply-To, if any."""
        ...

    @property
    def references(self) -> tuple[str, ...]:
        """The ``<id>``s of References, oldest first."""
        ...


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


class SendStatus(enum.StrEnum):
    """A ``sends`` row's status (SPEC §8): queued -> sending -> sent, or failed/uncertain/skipped."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNCERTAIN = "uncertain"
    SKIPPED = "skipped"


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


class Permanence(enum.StrEnum):
    """What a bounce says happened to one recipient's copy (issue #11).

    ``hard``: lost for good (``Action: failed`` with a 5.x.x status, a 5xx
    refusal): the address is suppressed at once. ``soft``: this message is
    lost, but the cause may pass (``Action: failed`` with a 4.x.x status,
    e.g. 4.4.7 "delivery time expired"): it stops that campaign's sequence
    and counts towards the soft-bounce score. ``delayed``: the server is
    still trying (``Action: delayed``): nothing stops; it counts towards the
    score, once per message.
    """

    HARD = "hard"
    SOFT = "soft"
    DELAYED = "delayed"

    @property
    def lost(self) -> bool:
        """The message will never arrive (hard or soft)."""
        return self is not Permanence.DELAYED


@dataclass(frozen=True, slots=True)
class BounceFailure:
    """One failed recipient named by a bounce, with its own permanence and status (e.g. ``5.1.1``)."""

    address: str
    permanence: Permanence
    status: str = ""


@dataclass(frozen=True, slots=True)
class Classification:
    """What an inbound message is, and why (``evidence`` is shown in the timeline).

    For a bounce, ``failures`` names each failed recipient with its own
    permanence; ``recipients`` and ``permanent`` are derived from them (the
    addresses, and whether any failure is hard). ``original_message_id`` is
    the Message-ID of the message that bounced, when the report quotes it.
    """

    kind: Kind
    evidence: str
    failures: tuple[BounceFailure, ...] = ()
    original_message_id: str | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        """The failed recipients' addresses, in the bounce's order."""
        return tuple(f.address for f in self.failures)

    @property
    def permanent(self) -> bool:
        """Whether any recipient failed for good (a hard bounce)."""
        return any(f.permanence is Permanence.HARD for f in self.failures)


@dataclass(frozen=True, slots=True)
class StepState:
    """A step as the log last planned it: its template, its place, and what is still unclear about it.

    ``unresolved`` lists the keys of steps (already sent to someone) that
    disappeared in the edit that made this step appear: this step may be one
    of them renamed. ``retired``: the step left the campaign and nothing may
    be replacing it.
    """

    template: str
    position: int
    retired: bool = False
    unresolved: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What planning and composing need of a customer (the planner's rules, the templates' ``customer``)."""

    key: str
    email: str | None
    data: dict[str, Any]
    first_seen: datetime
    email_status: str
