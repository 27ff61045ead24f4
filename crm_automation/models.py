"""Plain values passed between the stages, and down to the store.

Frozen, slotted dataclasses: the pure steps (mapping, classify, match, plan)
take and return these and never touch I/O, so they are tested on literals.
All datetimes are timezone-aware UTC. Besides the sheet's rows and the
mail's messages, this is where the log's own vocabulary is defined, because
the store may import nothing above this module (issue #18): the statuses,
reasons and triggers as str enums (stored as the same text), one record per
shape of an activity's ``details`` (:data:`ActivityDetails`, documented on
each record), the one read message (:class:`Reading`) and the decision the
fetch stage hands the store for each message (:class:`Decision`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    values: dict[str, object]


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

    def __init__(self, source: str, headers: tuple[str, ...], columns: dict[str, list[object]],
                 row_numbers: list[int], version: str = "") -> None:
        self.source = source
        self.headers = headers
        self.version = version
        self.row_numbers = row_numbers  # 1-based sheet row of each data row (empty rows are left out)
        self._columns = columns
        self._rows: tuple[SheetRow, ...] | None = None

    def __len__(self) -> int:
        return len(self.row_numbers)

    def column(self, header: str) -> list[object]:
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
    data: dict[str, object]


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
                 columns: list[list[object]]) -> None:
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
    value: object
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


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a folder was read up to: UIDVALIDITY plus the last UID logged.

    Here rather than in ``mailbox/`` because the log stores it and hands it
    back (issue #18: the store imports nothing above it).
    """

    uidvalidity: int
    last_uid: int
    seen: frozenset[str] = frozenset()  # sources that track names (Maildir): the names already logged


class Correspondence(Protocol):
    """What matching a message to a customer and its effects read of it: the sender and the ids it answers.

    A :class:`ParsedMessage` has them, and so has the smaller reading the
    fetch stage passes between processes (:class:`Reading`).
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
    # issue #19 (``serve``): an unsubscribe undone from its link's page, a tracked link followed, a message opened
    RESUBSCRIBE = "resubscribe"
    CLICK = "click"
    OPEN = "open"
    # issue #21: a message of ours found in the mailbox's Sent folder (a salesperson's own reply to a customer)
    REPLY_OUT = "reply_out"


class EmailStatus(enum.StrEnum):
    """A customer's ``email_status`` (SPEC §8, shown in the sheet's status column)."""

    OK = "ok"
    BOUNCED = "bounced"
    UNSUBSCRIBED = "unsubscribed"


class SuppressionReason(enum.StrEnum):
    """Why an address is on the suppression list (SPEC §8 ``suppressions.reason``).

    ``soft_bounces``: the soft-bounce score was reached (issue #11). Which
    email status each reason sets is a rule of the pure core
    (:func:`crm_automation.effects.status_for`), not of the store.
    """

    MANUAL = "manual"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    SOFT_BOUNCES = "soft_bounces"


class Trigger(enum.StrEnum):
    """What starts a campaign (SPEC §5): new customers, a field changed to a value, or a time."""

    NEW = "new"
    CHANGE = "change"
    AT = "at"


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
    email_status: EmailStatus


@dataclass(frozen=True, slots=True)
class Effect:
    """Suppress ``email`` for ``reason`` and, when ``status`` is set, set the customer's email status.

    Decided by the pure core (:mod:`crm_automation.effects`); the store
    applies it. ``source`` is what the suppression list records as its
    cause (the activity, the score); it is not part of what the effect *is*.
    """

    email: str
    reason: SuppressionReason
    status: EmailStatus | None
    source: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------------------------------
# One message read from a mailbox, in at most two shapes (issue #18): the whole ParsedMessage above (parser and
# classifier), and the Reading below (everything after them: matching, deciding, the log).


def _reading(message_id: str, from_addr: str, from_name: str, to_addrs: tuple[str, ...], subject: str,
             date: datetime | None, in_reply_to: str | None, references: tuple[str, ...], reply: str, kind: str,
             evidence: str, failures: tuple[BounceFailure, ...], original: str | None, digest: str,
             bulk: str) -> Reading:
    """Rebuild a :class:`Reading` from the plain values :meth:`Reading.__reduce__` pickles."""
    return Reading(message_id, from_addr, from_name, to_addrs, subject, date, in_reply_to, references, reply,
                   Classification(Kind(kind), evidence, failures, original), digest, bulk)


@dataclass(frozen=True, slots=True)
class Reading:
    """What the log needs of one message once it is read: parsed, classified and digested.

    Who wrote, to whom, about what, when, what they newly wrote (``reply``),
    the ids it answers, what kind of message it is and its content digest.
    ``bulk`` says why a message is list or bulk mail (``List-Id``,
    ``Precedence: bulk`` ...; "" when it is not), which only its headers
    tell: such a sender never becomes a new row of the sheet (issue #17).
    The whole text and the other headers stay with the :class:`ParsedMessage`:
    nothing after reading needs them. The fetch stage matches a reading
    against the log and the store writes its activities from it
    (:class:`ActivityRecord`): there is no third shape.
    """

    message_id: str
    from_addr: str
    from_name: str
    to_addrs: tuple[str, ...]
    subject: str
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    reply: str
    cls: Classification
    digest: str
    bulk: str = ""

    def __reduce__(self) -> tuple[Callable[..., Reading], tuple[object, ...]]:
        """Pickle as plain values: readings cross from helper processes (:mod:`crm_automation.parallel`).

        Why (issue #13): unpickling frozen dataclasses field by field cost the
        fetch loop 12 µs a message, a tenth of the work it handed over; one
        call with plain values costs what building the reading costs.
        """
        c = self.cls
        return _reading, (self.message_id, self.from_addr, self.from_name, self.to_addrs, self.subject, self.date,
                          self.in_reply_to, self.references, self.reply, c.kind.value, c.evidence, c.failures,
                          c.original_message_id, self.digest, self.bulk)


# ---------------------------------------------------------------------------------------------------------------
# An activity's ``details`` (SPEC §8: JSON), one record per shape. The log's JSON is written from these and read back
# through them (:func:`details_of`); key order and spacing are exactly what earlier versions wrote, so old logs
# read back and new rows are byte-identical to before. Rows written before a key existed read it as its default.


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _strs(v: object) -> tuple[str, ...]:
    return tuple(str(x) for x in v) if isinstance(v, list | tuple) else ()


_PERMANENCES = frozenset(p.value for p in Permanence)


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass(slots=True)
class InboundDetails:
    """``email_in``, ``auto_reply``, ``unsubscribe`` (and a bounce that names no recipient).

    Not frozen, unlike its neighbours (treat it as read-only): one is made for
    every fetched message, and a frozen dataclass's ``__init__`` (through
    ``object.__setattr__``) cost the fetch loop a microsecond a message.

    JSON: ``{"from", "to", "evidence", "matched_by", "recipients",
    "permanent", "uid"}``; an unsubscribe carrying a token (issue #17) adds
    ``"token"`` and then either ``"token_customer", "token_send",
    "sender_customer"`` (+ ``"note"`` when the sender is another customer)
    or ``"token_unknown": true``. ``matched_by`` is rewritten when a later
    sync links the message to a new customer.
    """

    from_addr: str
    to: tuple[str, ...]
    evidence: str
    matched_by: str | None
    recipients: tuple[str, ...] = ()
    permanent: bool = False
    uid: int | None = None
    token: str | None = None
    token_customer: str | None = None
    token_send: str | None = None
    sender_customer: str | None = None
    note: str | None = None
    token_unknown: bool = False

    def to_dict(self) -> dict[str, object]:
        """The JSON object, keys in the order the log has always had them."""
        out: dict[str, object] = {"from": self.from_addr, "to": list(self.to), "evidence": self.evidence,
                                  "matched_by": self.matched_by, "recipients": list(self.recipients),
                                  "permanent": self.permanent, "uid": self.uid}
        if self.token is not None:
            out["token"] = self.token
            if self.token_customer is not None:
                out.update(token_customer=self.token_customer, token_send=self.token_send,
                           sender_customer=self.sender_customer)
                if self.note is not None:
                    out["note"] = self.note
            elif self.token_unknown:
                out["token_unknown"] = True
        return out

    @classmethod
    def parse(cls, d: dict[str, object]) -> InboundDetails:
        """Read back (see the module's note on defaults)."""
        return cls(_str(d.get("from")) or "", _strs(d.get("to")), _str(d.get("evidence")) or "",
                   _str(d.get("matched_by")), _strs(d.get("recipients")), bool(d.get("permanent")),
                   _int(d.get("uid")), _str(d.get("token")), _str(d.get("token_customer")),
                   _str(d.get("token_send")), _str(d.get("sender_customer")), _str(d.get("note")),
                   bool(d.get("token_unknown")))


@dataclass(slots=True)
class BounceDetails:
    """``bounce``: one failed recipient of a delivery report (issue #11), or one refused at RCPT (issue #17).

    JSON, fetched: ``{"from", "to", "evidence", "matched_by", "recipient",
    "permanence", "status", "permanent", "recipients",
    "original_message_id", "uid"}``. Rows from before issue #11 have no
    ``recipient``/``permanence``/``status``/``original_message_id``
    (``permanent`` true then means hard, false a delay); a bounce the send
    pass logged at RCPT has no ``from``/``to``/``matched_by``/``uid``.
    Not frozen, for the reason :class:`InboundDetails` gives.
    """

    from_addr: str | None
    to: tuple[str, ...]
    evidence: str
    matched_by: str | None
    recipient: str | None
    permanence: Permanence | None
    status: str | None
    permanent: bool
    recipients: tuple[str, ...]
    original_message_id: str | None
    uid: int | None

    def to_dict(self) -> dict[str, object]:
        """The JSON object of a fetched bounce, keys in the order the log has always had them."""
        return {"from": self.from_addr, "to": list(self.to), "evidence": self.evidence,
                "matched_by": self.matched_by, "recipient": self.recipient,
                "permanence": self.permanence.value if self.permanence is not None else None,
                "status": self.status, "permanent": self.permanent, "recipients": list(self.recipients),
                "original_message_id": self.original_message_id, "uid": self.uid}

    @classmethod
    def parse(cls, d: dict[str, object]) -> BounceDetails:
        """Read back (see the module's note on defaults)."""
        p = _str(d.get("permanence"))
        return cls(_str(d.get("from")), _strs(d.get("to")), _str(d.get("evidence")) or "", _str(d.get("matched_by")),
                   _str(d.get("recipient")), Permanence(p) if p in _PERMANENCES else None,
                   _str(d.get("status")), bool(d.get("permanent")), _strs(d.get("recipients")),
                   _str(d.get("original_message_id")), _int(d.get("uid")))

    @property
    def addresses(self) -> tuple[str, ...]:
        """The failed recipient, or for rows from before issue #11 every recipient the report named."""
        return (self.recipient,) if self.recipient else self.recipients


@dataclass(frozen=True, slots=True)
class FieldChangedDetails:
    """``field_changed``: JSON ``{"field", "old", "new", "row"}`` (the values as the mapping made them)."""

    field: str
    old: object
    new: object
    row: int | None

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"field": self.field, "old": self.old, "new": self.new, "row": self.row}

    @classmethod
    def parse(cls, d: dict[str, object]) -> FieldChangedDetails:
        """Read back."""
        return cls(_str(d.get("field")) or "", d.get("old"), d.get("new"), _int(d.get("row")))


@dataclass(frozen=True, slots=True)
class CustomerAddedDetails:
    """``customer_added``: JSON ``{"row"}``, plus ``"returned": true`` for a row back in the sheet."""

    row: int | None
    returned: bool = False

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"row": self.row, "returned": True} if self.returned else {"row": self.row}

    @classmethod
    def parse(cls, d: dict[str, object]) -> CustomerAddedDetails:
        """Read back."""
        return cls(_int(d.get("row")), bool(d.get("returned")))


REMOVED_NOTE = "row no longer in the sheet; history kept"


@dataclass(frozen=True, slots=True)
class CustomerRemovedDetails:
    """``customer_removed``: JSON ``{"note"}``."""

    note: str = REMOVED_NOTE

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"note": self.note}

    @classmethod
    def parse(cls, d: dict[str, object]) -> CustomerRemovedDetails:
        """Read back."""
        return cls(_str(d.get("note")) or "")


@dataclass(frozen=True, slots=True)
class SendFailedDetails:
    """``send_failed``: JSON ``{"error"}``, the server's answer or why the message could not be built."""

    error: str

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"error": self.error}

    @classmethod
    def parse(cls, d: dict[str, object]) -> SendFailedDetails:
        """Read back."""
        return cls(_str(d.get("error")) or "")


@dataclass(frozen=True, slots=True)
class NoDetails:
    """``email_out``: JSON ``{}`` (what was sent is in the activity's own columns)."""

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {}


@dataclass(frozen=True, slots=True)
class ResubscribeDetails:
    """``resubscribe`` (issue #19): JSON ``{"email", "token", "send"}``.

    An unsubscribe made through a send's link, undone from the same link's
    page: the address taken off the list, the token that did both, and the
    send it named (``campaign/step``).
    """

    email: str
    token: str
    send: str

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"email": self.email, "token": self.token, "send": self.send}

    @classmethod
    def parse(cls, d: dict[str, object]) -> ResubscribeDetails:
        """Read back."""
        return cls(_str(d.get("email")) or "", _str(d.get("token")) or "", _str(d.get("send")) or "")


@dataclass(frozen=True, slots=True)
class TrackedDetails:
    """``click`` and ``open`` (issue #19): JSON ``{"send_id", "n", "url"}`` (a click) or ``{"send_id"}`` (an open).

    ``send_id`` is the ``sends`` row the message was (the funnel counts
    distinct sends that were clicked); ``n`` the link's number in that
    message and ``url`` where it led, as recorded with the send when it was
    handed over (``send_links``), never re-rendered.
    """

    send_id: int
    n: int | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON object: an open has only ``send_id``."""
        if self.n is None:
            return {"send_id": self.send_id}
        return {"send_id": self.send_id, "n": self.n, "url": self.url}

    @classmethod
    def parse(cls, d: dict[str, object]) -> TrackedDetails:
        """Read back."""
        return cls(_int(d.get("send_id")) or 0, _int(d.get("n")), _str(d.get("url")))


@dataclass(frozen=True, slots=True)
class ReplyOutDetails:
    """``reply_out`` (issue #21): JSON ``{"to", "answers", "folder", "uid"}``.

    A message the team sent from its own mail program, read from the
    mailbox's Sent folder: ``to`` its recipients (lower case), ``answers``
    the Message-IDs its ``In-Reply-To`` and ``References`` name (RFC 5322
    §3.6.4), in that order, which is how a customer's mail is known to be
    answered; ``folder``/``uid`` where it was read. The activity's own
    ``message_id`` is the message's, unique among ``reply_out`` rows, so a
    message read twice is logged once.
    """

    to: tuple[str, ...]
    answers: tuple[str, ...]
    folder: str | None = None
    uid: int | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON object."""
        return {"to": list(self.to), "answers": list(self.answers), "folder": self.folder, "uid": self.uid}

    @classmethod
    def parse(cls, d: dict[str, object]) -> ReplyOutDetails:
        """Read back."""
        return cls(_strs(d.get("to")), _strs(d.get("answers")), _str(d.get("folder")), _int(d.get("uid")))


ActivityDetails = (InboundDetails | BounceDetails | FieldChangedDetails | CustomerAddedDetails
                   | CustomerRemovedDetails | SendFailedDetails | ResubscribeDetails | TrackedDetails
                   | ReplyOutDetails | NoDetails)


def details_of(kind: Kind, d: dict[str, object]) -> ActivityDetails:
    """An activity's ``details`` JSON (decoded) as the record of its kind."""
    if kind is Kind.BOUNCE:
        return BounceDetails.parse(d) if "recipient" in d or "permanence" in d else InboundDetails.parse(d)
    if kind in (Kind.EMAIL_IN, Kind.AUTO_REPLY, Kind.UNSUBSCRIBE):
        return InboundDetails.parse(d)
    if kind is Kind.FIELD_CHANGED:
        return FieldChangedDetails.parse(d)
    if kind is Kind.CUSTOMER_ADDED:
        return CustomerAddedDetails.parse(d)
    if kind is Kind.CUSTOMER_REMOVED:
        return CustomerRemovedDetails.parse(d)
    if kind is Kind.SEND_FAILED:
        return SendFailedDetails.parse(d)
    if kind is Kind.RESUBSCRIBE:
        return ResubscribeDetails.parse(d)
    if kind in (Kind.CLICK, Kind.OPEN):
        return TrackedDetails.parse(d)
    if kind is Kind.REPLY_OUT:
        return ReplyOutDetails.parse(d)
    return NoDetails()


# ---------------------------------------------------------------------------------------------------------------
# What the fetch stage decides for one message and the store applies in one transaction with the cursor.


@dataclass(frozen=True, slots=True)
class ScoredBounce:
    """A soft bounce or delay to score (issue #11): the store counts, the pure rule decides.

    Why a rule and not a value: the count must be read inside the
    transaction that records the bounce (it includes the earlier messages of
    the same batch, and stops at the customer's last reply), so the store
    counts the address's soft bounces within ``window`` and applies what
    ``rule(count)`` returns (:func:`crm_automation.effects.soft_bounce_score`).
    """

    address: str
    window: timedelta
    rule: Callable[[int], Sequence[Effect]]


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One inbound activity to log, with what it causes when it is new (not already logged).

    ``message`` is the reading the activity is one of (a bounce naming three
    recipients is three activities); ``occurred_at`` its date (or when it
    was read, when it has none); ``source`` the mailbox and folder.
    """

    kind: Kind
    customer_key: str | None
    message: Reading
    occurred_at: datetime
    source: str
    details: InboundDetails | BounceDetails | ReplyOutDetails
    digest: str
    campaign: str | None = None
    step: int | None = None
    # (effect, the customer whose email_status it sets): applied only when the activity is new
    effects: tuple[tuple[Effect, str | None], ...] = ()
    scored: ScoredBounce | None = None
    # (owner's address, the note's Message-ID), when ``notify_owner`` asks for a note to the owner
    notify_owner: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    """A message that could not be understood: kept (whole up to the limit), with whose it was."""

    source: str
    raw: bytes
    error: str
    from_addr: str | None
    customer_key: str | None
    size: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to record for one fetched message; the store applies all of it and the cursor in one transaction."""

    folder: str
    uidvalidity: int
    uid: int
    seen_key: str | None
    activities: tuple[ActivityRecord, ...] = ()
    quarantine: QuarantineRecord | None = None
    # what the fetch stage counts it as when it is new: a kind, "unknown" or "quarantined"
    label: str = "unknown"
    new_sender: tuple[str, str] | None = None  # (address, name) of an unknown sender of a normal message
    # (address, why) of an unknown sender who is nobody to add to the sheet: ours, an owner, a list, a robot
    not_new_sender: tuple[str, str] | None = None
