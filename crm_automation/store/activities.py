"""Activities: everything that happened to a customer (SPEC §8), and the messages kept in quarantine.

Inbound activities are unique on (Message-ID, content digest), quarantined
messages on the raw message's digest: logging the same message twice is a
no-op, which is half of exactly-once (the other half is the mailbox cursor,
:mod:`crm_automation.store.inbound`). ``details`` is JSON in the log and the
record of its kind in every :class:`Activity` handed out
(:data:`crm_automation.models.ActivityDetails`: each shape documented there, issue #18).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crm_automation.models import ActivityDetails, FieldChangedDetails, Kind, Permanence, details_of
from crm_automation.store.connection import Connection, Driver, iso, parse_iso
from crm_automation.store.schema import INBOUND_KINDS_SQL, permanence_sql

_ACTIVITY_COLS = "id, customer_key, kind, occurred_at, subject, body, message_id, campaign, step, source, details"


@dataclass(frozen=True, slots=True)
class Activity:
    """One row of ``activities``, ``details`` decoded.

    ``details_json`` is the column's text as stored, kept only so the
    timeline's ``--json`` output shows it exactly as before (SQLite's
    ``json_object`` writes it without spaces, Python's encoder with them).
    """

    id: int
    customer_key: str | None
    kind: Kind
    occurred_at: datetime
    subject: str | None
    body: str | None
    message_id: str | None
    campaign: str | None
    step: int | None
    source: str | None
    details: ActivityDetails
    details_json: str | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, object]:
        """The timeline's JSON shape (``crm-automation timeline --json``)."""
        return {"id": self.id, "kind": self.kind.value, "occurred_at": iso(self.occurred_at),
                "subject": self.subject, "body": self.body, "message_id": self.message_id,
                "campaign": self.campaign, "step": self.step, "source": self.source, "details": self.details_json}


def _activity(aid: int, key: str | None, kind: str, at: str, subject: str | None, body: str | None,
              mid: str | None, campaign: str | None, step: int | None, source: str | None,
              details: str | None) -> Activity:
    k = Kind(kind)
    return Activity(aid, key, k, parse_iso(at) or datetime.now(UTC), subject, body, mid, campaign, step, source,
                    details_of(k, json.loads(details or "{}")), details)


# What a writer may pass as ``details``: the record of its kind, or (callers not yet moved to the records) the
# same JSON object as a mapping.
DetailsIn = ActivityDetails | Mapping[str, object] | None


def _details_dict(details: DetailsIn) -> Mapping[str, object]:
    if details is None:
        return {}
    if isinstance(details, Mapping):
        return details
    return details.to_dict()


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """An inbound activity matched to a customer, as the planner needs it.

    ``at`` is when it was logged (when the worker could first know of it).
    ``permanence`` is set for bounces only, decoded from ``details`` here so
    callers never parse JSON (:data:`PERMANENCE_SQL`).
    """

    customer_key: str
    kind: Kind
    at: datetime
    campaign: str | None
    permanence: Permanence | None


@dataclass(frozen=True, slots=True)
class QuarantinedContact:
    """A quarantined message from a known customer: it counts as their contact (issue #9)."""

    customer_key: str
    received_at: datetime
    error: str


def insert_activity(conn: Driver, *, kind: str, occurred_at: datetime, now: datetime,
                    customer_key: str | None = None, subject: str | None = None, body: str | None = None,
                    message_id: str | None = None, in_reply_to: str | None = None, campaign: str | None = None,
                    step: int | None = None, source: str | None = None, details: DetailsIn = None,
                    digest: str | None = None) -> int | None:
    """Insert one activity (no transaction: the caller's unit owns it); see :meth:`ActivityLog.add_activity`."""
    if digest is not None and message_id is not None and already_logged(
            logged_digests(conn, {message_id}).get(message_id, set()), digest):
        return None
    return inserted_id(conn, INSERT_ACTIVITY_SQL, activity_row(
        kind=kind, occurred_at=occurred_at, now=now, customer_key=customer_key, subject=subject, body=body,
        message_id=message_id, in_reply_to=in_reply_to, campaign=campaign, step=step, source=source,
        details=_details_dict(details), digest=digest))


def inserted_id(conn: Driver, insert_sql: str, row: tuple[object, ...]) -> int | None:
    """Run an ``INSERT ... ON CONFLICT DO NOTHING``; the new row's id, or None when it conflicted.

    ``RETURNING id`` (SQLite 3.35+, PostgreSQL), not sqlite3's ``lastrowid``,
    which psycopg does not have (issue #20); measured the same on the send
    loop (benchmarks/bench_store_sql.py).
    """
    got = conn.execute(insert_sql + " RETURNING id", row).fetchone()
    return None if got is None else int(got[0])


_INSERT_ACTIVITY = ("INSERT INTO activities (customer_key, kind, occurred_at, subject, body, message_id, "
                    "in_reply_to, campaign, step, source, details, logged_at, digest) VALUES ")
_ACTIVITY_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_ACTIVITY_SQL = _INSERT_ACTIVITY + _ACTIVITY_VALUES + " ON CONFLICT DO NOTHING"


def insert_activities(conn: Driver, rows: Sequence[tuple[object, ...]]) -> list[tuple[str, str, str | None]]:
    """Insert activities (:func:`activity_row` values); the (kind, Message-ID, digest) of each that went in.

    Why (issue #20): an inbound message is logged when *its* insert went in,
    not when a read before it found nothing: another worker may insert it
    meanwhile. ``RETURNING`` names the rows that went in by the columns of
    their unique indexes (schema 3's (Message-ID, digest) among inbound
    kinds, schema 9's Message-ID among ``reply_out``); the driver's
    :meth:`~crm_automation.store.connection.Driver.insert_many` sends them
    in a way no slower than the ``executemany`` it replaces.
    """
    return [(str(k), str(m), d) for k, m, d in conn.insert_many(
        _INSERT_ACTIVITY, _ACTIVITY_VALUES, " ON CONFLICT DO NOTHING RETURNING kind, message_id, digest", rows)]


def activity_row(*, kind: str, occurred_at: datetime, now: datetime, customer_key: str | None,
                 subject: str | None, body: str | None, message_id: str | None, in_reply_to: str | None,
                 campaign: str | None, step: int | None, source: str | None, details: Mapping[str, object],
                 digest: str | None) -> tuple[object, ...]:
    """The values of :data:`INSERT_ACTIVITY_SQL` for one activity (``details``: its record's ``to_dict()``)."""
    return (customer_key, kind, iso(occurred_at), subject, body, message_id, in_reply_to, campaign, step, source,
            _json(details), iso(now), digest)


def already_logged(digests: set[str | None], digest: str) -> bool:
    """Whether a message with ``digest`` is among those logged under its Message-ID (issue #9).

    A row from before digests were kept (None) matches any content, so an
    upgrade re-logs nothing; the same id with other content is another message.
    """
    return None in digests or digest in digests


# One encoder for every activity's details: json.dumps builds a new one per call when given options.
_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


def logged_digests(conn: Driver, message_ids: set[str]) -> dict[str, set[str | None]]:
    """The content digests already logged for each of these inbound Message-IDs (None: logged before digests).

    Read in groups of 500 from the partial index (literal kinds, so SQLite
    uses it: tests/unit/test_store.py checks no lookup grows with the log),
    so a batch of fetched mail costs a few queries instead of one per
    message (issue #13).
    """
    out: dict[str, set[str | None]] = {}
    ids = sorted(message_ids)
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        for mid, d in conn.execute(
                f"SELECT message_id, digest FROM activities WHERE message_id IN ({','.join('?' * len(part))}) "
                f"AND kind IN {INBOUND_KINDS_SQL}", part):
            out.setdefault(mid, set()).add(d)
    return out


def logged_replies(conn: Driver, message_ids: set[str]) -> set[str]:
    """Which of these Message-IDs are logged as ``reply_out`` (issue #21), by its unique partial index."""
    out: set[str] = set()
    ids = sorted(message_ids)
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        out.update(mid for (mid,) in conn.execute(
            f"SELECT message_id FROM activities WHERE message_id IN ({','.join('?' * len(part))}) "
            "AND kind = 'reply_out'", part))
    return out


def insert_quarantine(conn: Driver, *, source: str, raw: bytes, error: str, now: datetime,
                      from_addr: str | None = None, customer_key: str | None = None, size: int | None = None) -> bool:
    """Keep a message unless it is there already (no transaction: the caller's unit owns it)."""
    digest = hashlib.sha256(raw).hexdigest()
    cur = conn.execute(
        "INSERT INTO quarantine (source, received_at, error, raw, digest, from_addr, customer_key, "
        "size) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (source, iso(now), error, raw, digest, from_addr, customer_key, size if size is not None else len(raw)))
    return cur.rowcount > 0


def count_soft_bounces(conn: Driver, address: str, key: str | None, since: datetime) -> int:
    """Distinct messages to ``address`` that soft-bounced or were delayed since ``since`` and the last reply.

    Issue #11: a reply proves the address works and starts the count again.
    A message is the bounced one (``details.original_message_id``) when the
    report named it, else the bounce itself: a delay warning and the later
    failure of the same message count once. Called by ``apply_inbound``
    inside its transaction, after the new bounce was inserted.
    """
    j = conn.dialect.json_text
    if key is not None:
        last = conn.execute("SELECT MAX(COALESCE(logged_at, occurred_at)) FROM activities "
                            "WHERE kind = 'email_in' AND customer_key = ?", (key,)).fetchone()[0]
    else:
        last = conn.execute("SELECT MAX(COALESCE(logged_at, occurred_at)) FROM activities WHERE kind = "
                            f"'email_in' AND {j('details', 'from')} = ?", (address,)).fetchone()[0]
    start = max(iso(since), last or "")
    return int(conn.execute(
        f"SELECT COUNT(DISTINCT COALESCE({j('details', 'original_message_id')}, message_id)) "
        f"FROM activities WHERE kind = 'bounce' AND {j('details', 'recipient')} = ? "
        f"AND {j('details', 'permanence')} IN ('soft', 'delayed') "
        "AND COALESCE(logged_at, occurred_at) >= ? AND (? = '' OR COALESCE(logged_at, occurred_at) > ?)",
        (address, start, last or "", last or "")).fetchone()[0])


class ActivityLog(Connection):
    """The store's part that records activities and quarantined messages."""

    def add_activity(self, *, kind: str, occurred_at: datetime, now: datetime, customer_key: str | None = None,
                     subject: str | None = None, body: str | None = None, message_id: str | None = None,
                     in_reply_to: str | None = None, campaign: str | None = None, step: int | None = None,
                     source: str | None = None, details: DetailsIn = None,
                     digest: str | None = None) -> int | None:
        """Insert one activity; returns its id, or None for an inbound message already logged.

        An inbound message (``digest`` given) is "already logged" when its
        Message-ID was logged with the same content digest, or by a version
        before digests were kept. The same Message-ID with *different*
        content is a different message and is logged too (issue #9: some
        mailers reuse ids; dropping the second message lost it).
        """
        with self.transaction():
            return insert_activity(self.conn, kind=kind, occurred_at=occurred_at, now=now,
                                   customer_key=customer_key, subject=subject, body=body, message_id=message_id,
                                   in_reply_to=in_reply_to, campaign=campaign, step=step, source=source,
                                   details=details, digest=digest)

    def quarantine(self, *, source: str, raw: bytes, error: str, now: datetime, from_addr: str | None = None,
                   customer_key: str | None = None, size: int | None = None) -> bool:
        """Keep a message that could not be understood; False if it is already there.

        ``raw`` is the whole message, or its first ``max_message_bytes`` when
        it is larger (``size`` then says how large it was; the message itself
        stays in the mailbox). ``from_addr``/``customer_key``: whose it was,
        as far as its headers tell, so it counts as the customer's contact.
        """
        with self.transaction():
            return insert_quarantine(self.conn, source=source, raw=raw, error=error, now=now, from_addr=from_addr,
                                     customer_key=customer_key, size=size)

    def soft_bounce_count(self, address: str, key: str | None, since: datetime) -> int:
        """The soft-bounce score's count for ``address`` (see :func:`count_soft_bounces`).

        For a mailbox found full at RCPT (issue #17): the send pass logs that
        bounce and reads the count inside its own transaction, exactly as
        ``apply_inbound`` does for a bounce fetched from the mailbox.
        """
        return count_soft_bounces(self.conn, address, key, since)

    def quarantined_contacts(self) -> list[QuarantinedContact]:
        """Quarantined messages from known customers, oldest first."""
        return [QuarantinedContact(k, parse_iso(t) or datetime.now(UTC), e) for k, t, e in self.conn.execute(
            "SELECT customer_key, received_at, error FROM quarantine WHERE customer_key IS NOT NULL ORDER BY id")]

    def activity(self, activity_id: int) -> Activity | None:
        """One activity by id."""
        row = self.conn.execute(f"SELECT {_ACTIVITY_COLS} FROM activities WHERE id = ?", (activity_id,)).fetchone()
        return _activity(*row) if row else None

    def timeline(self, key: str) -> list[Activity]:
        """One customer's activities, oldest first."""
        return [_activity(*r) for r in self.conn.execute(
            f"SELECT {_ACTIVITY_COLS} FROM activities WHERE customer_key = ? ORDER BY occurred_at, id", (key,))]

    def inbound_history(self) -> list[InboundEvent]:
        """Inbound activities matched to a customer, each with its bounce permanence decoded."""
        return [InboundEvent(k, Kind(kind), parse_iso(t) or datetime.now(UTC), c, Permanence(p) if p else None)
                for k, kind, t, c, p in self.conn.execute(
                    f"SELECT a.customer_key, a.kind, COALESCE(a.logged_at, a.occurred_at), a.campaign, "
                    f"CASE WHEN a.kind = 'bounce' THEN {permanence_sql(self.dialect)} END FROM activities a "
                    f"WHERE a.customer_key IS NOT NULL AND a.kind IN {INBOUND_KINDS_SQL}")]

    def field_changes(self, field_name: str) -> list[tuple[str, object, datetime]]:
        """(customer, new value, when) for each change of one field: the planner's ``History.changes`` shape."""
        out: list[tuple[str, object, datetime]] = []
        for k, d, t in self.conn.execute(
                "SELECT customer_key, details, occurred_at FROM activities WHERE kind = 'field_changed' "
                f"AND {self.dialect.json_text('details', 'field')} = ? ORDER BY id", (field_name,)):
            out.append((k, FieldChangedDetails.parse(json.loads(d)).new, parse_iso(t) or datetime.now(UTC)))
        return out
